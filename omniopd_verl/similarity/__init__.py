"""Similarity plugins phi(a, b) in [0, 1] (entry-point group `omniopd_verl.similarity`).

Built-ins: `embedding` (MiniLM cosine, the default), `ned` (normalised character Levenshtein),
`rouge_l` (word-level ROUGE-L F1). Each module imports its heavy library lazily.
"""

from omniopd_verl.similarity.base import Similarity

__all__ = ["Similarity"]
