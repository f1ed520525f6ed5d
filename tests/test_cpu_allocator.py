"""omniopd_verl/cpu_allocator.py: glibc malloc stops re-faulting memory between CPU decode calls.

Each case runs in a fresh interpreter (malloc settings are per process and cannot be undone): the
real SmolLM2-135M samples 8 prefixes x 4 continuations twice, and the second, warm call's minor page
faults are counted — with the defaults (OMNIOPD_MALLOC_TUNING=0) glibc hands the decode's temporaries
back to the OS and faults them in again; with the tuning it keeps them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

WARM_CALL_FAULTS = """
import resource, torch
from omniopd_verl.cpu_allocator import tune_malloc_for_cpu_inference
from omniopd_verl.generation import sample_continuations
from omniopd_verl.models import load_causal_lm

torch.set_num_threads(1)
model, tok = load_causal_lm({model!r})  # a CPU load applies the tuning unless it is turned off
prefixes = [list(range(100 + i, 250 + i)) for i in range(8)]
kw = dict(n=4, max_new_tokens=6, temperature=1.0, top_p=1.0, seeds=list(range(8)), pad_token_id=0)
sample_continuations(model, prefixes, **kw)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sample_continuations(model, prefixes, **kw)
print(tune_malloc_for_cpu_inference(), tune_malloc_for_cpu_inference(),
      resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def warm_call(model: str, tuning: str) -> tuple[str, str, int]:
    env = {**os.environ, "OMNIOPD_MALLOC_TUNING": tuning, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WARM_CALL_FAULTS.format(model=model)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, faults = out.stdout.split()[-3:]
    return first, second, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_malloc_keeps_the_decode_temporaries_and_off_means_the_defaults(smollm2_path):
    on_first, on_again, on_faults = warm_call(smollm2_path, "1")
    off_first, off_again, off_faults = warm_call(smollm2_path, "0")
    assert (on_first, on_again) == ("True", "True")  # applied, and asking again is harmless
    assert (off_first, off_again) == ("False", "False")
    assert off_faults > 1000, f"the defaults faulted only {off_faults} pages: this test no longer measures anything"
    assert on_faults < off_faults / 5, f"tuned {on_faults} vs default {off_faults} minor faults in the warm call"
