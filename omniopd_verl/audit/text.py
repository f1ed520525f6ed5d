"""Text views of student tokens for the audit: prefixes, chunk texts, and trimming teacher text to C tokens.

Decoding a slice of tokens on its own can lose or change characters at the cut (SentencePiece drops
the leading space of a slice, byte-level BPE can split a multi-byte character), so chunk texts are
taken as differences of decoded prefixes: text(y[a:b]) = decode(y[:b])[len(decode(y[:a])):] whenever
decode(y[:a]) is a prefix of decode(y[:b]), else the slice is decoded on its own.
"""

from __future__ import annotations

from collections.abc import Sequence


class ResponseText:
    """Decoded prefixes of one response, memoised (each anchor needs decode(y[:t]) and decode(y[:t+C]))."""

    def __init__(self, tokenizer, response_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.ids = list(response_ids)
        self._prefix: dict[int, str] = {}

    def prefix(self, t: int) -> str:
        """decode(y[:t]) without special tokens: what the teacher continues (never the chunk itself)."""
        if t not in self._prefix:
            self._prefix[t] = (
                self.tokenizer.decode(self.ids[:t], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if t > 0
                else ""
            )
        return self._prefix[t]

    def span(self, start: int, end: int) -> str:
        """The text of y[start:end], consistent with `prefix` (see module docstring)."""
        head, whole = self.prefix(start), self.prefix(end)
        if whole.startswith(head):
            return whole[len(head) :]
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def segments(self, bounds: Sequence[int]) -> list[str]:
        """Texts between consecutive token offsets `bounds` (ascending, from 0 to len): for reports."""
        return [self.span(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def trim_to_student_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """Cut `text` to its first `max_tokens` tokens under the student's tokenizer, returning a prefix of
    `text` itself (character offsets where the tokenizer has them, so nothing is re-spelled).

    C is counted in student tokens (ALGORITHM.md step 3) and teachers with another tokenizer, or chat
    APIs that ignore max_tokens, may write more: similarity must compare like lengths.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text:
        return text
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # slow tokenizers have no offsets
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text
        return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]]
