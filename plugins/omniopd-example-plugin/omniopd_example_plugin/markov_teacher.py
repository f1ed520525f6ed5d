"""`markov` teacher: a deterministic bigram "model" of the prefix itself — the template for a teacher plugin.

A teacher plugin writes only the raw call. The teacher library that `registry.create_teacher` wraps
around every teacher gives this one, for free, exactly what the built-ins get: prompt rendering, the
token budget, the SQLite cache, accounting and cost, concurrency and rate limits, retries with backoff,
timeouts, the budget, exactly-N validation and micro-batching (docs/teachers.md).

Each sample continues the prefix's last word with a walk over the prefix's own word bigrams, drawn
from random.Random(seed): the same request always gets the same samples, different seeds differ.

Options (for trying the library out): `fail_first` (raise a transient error on the first k raw calls),
`missing_samples` (return that many samples fewer than asked), `cost_per_call` (USD reported per call).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from omniopd_verl.teachers import RawAnswer, RawRequest, RawSample, TeacherCapabilities, TransientTeacherError


class MarkovTeacher:
    # declared as data: one call returns n samples, continues raw text, costs what it reports
    capabilities = TeacherCapabilities(
        supports_n=True, supports_seed=True, raw_completion=True, reports_cost=True, max_tokens_factor=1.0
    )
    option_names = ("fail_first", "missing_samples", "cost_per_call")

    def __init__(self, config):
        options = config.options
        self.fail_first = int(options.get("fail_first", 0))
        self.missing = int(options.get("missing_samples", 0))
        self.cost_per_call = float(options.get("cost_per_call", 0.0))
        self.calls = 0

    def sample_raw(self, requests: Sequence[RawRequest]) -> list[RawAnswer]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise TransientTeacherError(f"scripted transient failure {self.calls} of {self.fail_first}")
        return [self._answer(r) for r in requests]

    def _answer(self, request: RawRequest) -> RawAnswer:
        words = request.prompt.split() or ["..."]
        successors = defaultdict(list)
        for a, b in zip(words[:-1], words[1:], strict=True):
            successors[a].append(b)
        samples = []
        for j in range(max(0, request.n - self.missing)):
            rng = random.Random(f"{request.seed}:{j}")
            word, out = words[-1], []
            for _ in range(request.teacher_max_tokens):
                word = rng.choice(successors.get(word) or words)
                out.append(word)
            samples.append(RawSample(" " + " ".join(out), "length"))
        return RawAnswer(
            samples,
            prompt_tokens=len(words),
            completion_tokens=sum(len(s.text.split()) for s in samples),
            cost_usd=self.cost_per_call,
        )
