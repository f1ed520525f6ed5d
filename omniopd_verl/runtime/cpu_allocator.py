"""Stop glibc's malloc from handing memory back to the OS between CPU decode steps.

A CPU decode step of the local engine allocates and frees tens of MB of temporaries (the logits of
every sample row, attention's repeated keys and values). With glibc's defaults, freed memory at the
top of the heap is trimmed back to the OS (trim threshold 128 KB, raised only dynamically) and large
blocks are mmapped fresh, so every step page-faults and zeroes the same memory again. Measured on
SmolLM2-135M, 16 prefixes x 4 samples x 300-token prefixes, one thread: a decode step of the
shared-prefix path took 1.2-1.6 s with the defaults and 0.8 s with the settings below (the one-row-
per-sample path, whose big prefill had raised glibc's dynamic thresholds, took 0.8 s either way).
issue 12; benchmarks/bench_local_teacher.py shows the effect (run it with OMNIOPD_MALLOC_TUNING=0 for the defaults).

The cost: the process keeps freed memory (its RSS stays near its peak) and grows its heap 1 GiB at a
time (address space, not touched pages). Only Linux with glibc; elsewhere nothing happens.
OMNIOPD_MALLOC_TUNING=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # blocks below 32 MiB (glibc's maximum) come from the heap, not fresh mmaps
    M_TRIM_THRESHOLD: 16 << 30,  # never trim the heap's top back to the OS in practice
    M_TOP_PAD: 1 << 30,  # grow the heap in 1 GiB steps
}
ENV = "OMNIOPD_MALLOC_TUNING"

_state: bool | None = None


def tune_malloc_for_cpu_inference() -> bool:
    """Apply SETTINGS once per process; True when they are in effect (False: off, or not glibc)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        _state = False
        return _state
    try:
        libc = ctypes.CDLL("libc.so.6")
        _state = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
    except (OSError, AttributeError):  # musl or another libc: no mallopt
        _state = False
    return _state


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc malloc_trim(0)); True when it released some.

    For between phases that free a lot at once, e.g. after one training arm's models, optimizer and
    activations are dropped and before the next arm allocates its own: without it the freed heap stays
    resident (the tuning above never trims, and fragmentation defeats glibc's own top-of-heap trim), and
    the demo's second arm peaked ~1.6 GB higher than its first. Numerics are untouched."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
