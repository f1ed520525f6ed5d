"""omniopd_agent's is_validation(): verl's `trajectory['validate']` found from inside the agent loop, also
when Ray's tracing wrapper is the task's outermost coroutine (as in every Ray actor: a main_ppo run with
val_before_train audited its validation batches, 48 of 64 teacher calls, before this was found)."""

from __future__ import annotations

import asyncio

import pytest

from omniopd_verl.verl_integration.agent_loop import is_validation


class Worker:
    async def _run_agent_loop(self, sampling_params, trajectory, *, agent_name="x", **kwargs):
        # verl awaits the agent loop's run() from here; run() awaits the rollout, then asks
        await asyncio.sleep(0)
        return await self.agent_loop_run()

    async def agent_loop_run(self):
        await asyncio.sleep(0)
        return is_validation()


async def ray_tracing_wrapper(method, self, *_args, _ray_trace_ctx=None, **_kwargs):
    """The shape of ray.util.tracing.tracing_helper's `_resume_span`: only _args/_kwargs in its frame."""
    return await method(self, *_args, **_kwargs)


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("wrapped", [True, False])
def test_is_validation_reads_verls_trajectory_through_rays_wrapper(validate, wrapped):
    worker = Worker()
    trajectory = {"step": 1, "sample_index": 0, "rollout_n": 0, "validate": validate}

    async def main():
        if wrapped:
            coro = ray_tracing_wrapper(Worker._run_agent_loop, worker, {}, trajectory=trajectory, agent_name="x")
        else:
            coro = worker._run_agent_loop({}, trajectory, agent_name="x")
        return await asyncio.create_task(coro)  # verl's _run_prompt runs each session as its own task

    assert asyncio.run(main()) is validate


def test_is_validation_outside_verls_worker_is_false():
    async def main():
        return is_validation()

    assert asyncio.run(main()) is False
