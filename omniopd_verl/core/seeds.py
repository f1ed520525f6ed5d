"""Seed derivation: every reproducible random stream of the project gets its seed here.

Python's `hash()` is salted per process, so a seed must come from a fixed function of named parts:
- `stable_seed(*parts)`: a stream named by any parts (run seed, a purpose string, a uid, a step, a
  request id): the Auditor's scheduler and teacher calls, the local engine's rollout / eval / control
  streams, SeqKD's teacher calls, an `hf` rollout request sent without a seed.
- `derive_seed(seed, index)`: the per-prompt seeds of one batch seed (the sampling loop's requests).

Two functions, not one, because changing either one's values changes every recorded sample of the demo
and the experiment (docs/results.md); a new stream uses `stable_seed`.
"""

from __future__ import annotations

import hashlib

SEED_MODULUS = 2**63
"""torch.Generator seeds are taken modulo this (it accepts 64-bit values; 63 bits keep them non-negative)."""


def stable_seed(*parts: object) -> int:
    """A deterministic non-negative 31-bit seed from `parts` (sha256 of their text)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFF


def derive_seed(seed: int, index: int) -> int:
    """A per-request seed from a batch seed and the request's index (splitmix64: neighbours decorrelate)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % SEED_MODULUS
