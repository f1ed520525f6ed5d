"""A CPU platform for verl 0.9.1, registered as `cpu` and selected with `VERL_PLATFORM=cpu`.

verl has no CPU platform: without an accelerator it falls back to CUDA (`plugin/platform/
platform_manager.py`). What CPU mode is for: running verl's real trainer (rollout -> reward ->
log-probs -> advantage -> update -> weight sync) end to end on a laptop or in CI, to test a recipe,
a plugin or OmniOPD itself before a GPU run. It is not a way to train a real model.

Two details matter:
- `current_device()` returns the string "cpu": verl's FSDP engine does `.to(get_device_id())`, and an
  int would mean an accelerator index to torch;
- Ray: verl's ResourcePoolManager only counts "GPU" node resources, so CPU workers ask for a
  *logical* GPU (`ray_init.num_gpus=1` on a GPU-less host, see docs/verl.md).
"""

from __future__ import annotations

import contextlib
import types

import torch
from verl.plugin.platform.platform_base import PlatformBase


def _noop(*args, **kwargs) -> None:
    return None


class _Stream:
    """Stands in for a device stream: CPU work is synchronous."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class _Event(_Stream):
    def record(self, *args, **kwargs) -> None:
        pass

    def wait(self, *args, **kwargs) -> None:
        pass

    def query(self) -> bool:
        return True


# what verl calls on `get_torch_device()` (torch.cuda's shape): memory queries report 0, syncs are no-ops
CPU_DEVICE_MODULE = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: "cpu",
    set_device=_noop,
    synchronize=_noop,
    empty_cache=_noop,
    ipc_collect=_noop,
    memory_allocated=lambda *a, **k: 0,
    memory_reserved=lambda *a, **k: 0,
    max_memory_allocated=lambda *a, **k: 0,
    max_memory_reserved=lambda *a, **k: 0,
    reset_peak_memory_stats=_noop,
    mem_get_info=lambda *a, **k: (0, 0),
    set_per_process_memory_fraction=_noop,
    get_rng_state=lambda *a, **k: torch.get_rng_state(),
    set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    get_device_name=lambda *a, **k: "cpu",
    current_stream=lambda *a, **k: _Stream(),
    stream=lambda *a, **k: contextlib.nullcontext(),
    Stream=_Stream,
    Event=_Event,
)


class PlatformCPU(PlatformBase):
    """verl's PlatformBase for a machine with no accelerator (gloo, logical Ray GPUs)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self):
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # never auto-detected: CPU mode is chosen explicitly (VERL_PLATFORM=cpu), so a GPU host that
        # failed to see its GPUs does not silently train on CPU
        return False

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # logical: see the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None
