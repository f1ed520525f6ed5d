"""The `transformers` rollout backend for verl 0.9.1: `actor_rollout_ref.rollout.name=hf`.

Debug a recipe on a laptop or one GPU without vLLM, and run verl's real trainer in CI. Three pieces,
the same split as verl's vLLM backend:
- `HFRolloutReplica` (registered in verl's public RolloutReplicaRegistry): launches one server actor
  per replica on the node of its hybrid workers, on their device (CPU, or the worker's CUDA GPU);
- `HFRolloutServer` (a Ray actor): what verl's `LLMServerClient` calls, `generate(prompt_ids,
  sampling_params, request_id) -> TokenOutput`; concurrent requests are queued and run as one batch
  (up to `rollout.max_num_seqs`) by hf_generation.generate_batch; plus verl's control calls: sleep /
  wake_up (on CUDA: weights moved to the CPU and back), abort_all_requests / resume_generation (in-flight
  rows stop at the next token and return stop_reason='aborted'), clear/release/resume_kv_cache (no
  persistent KV cache: nothing to free);
- `HFServerAdapter` (verl's in-worker BaseRollout, registered in verl's private `_ROLLOUT_REGISTRY`,
  see verl_private.py): receives the actor's weights from verl's checkpoint engine ('naive' backend in
  the v1 trainer: `engine.get_per_tensor_param()`) and ships them to the server through Ray's object
  store; resume/release map to wake_up/sleep.

It is not vLLM: no paged attention, continuous batching, CUDA-IPC weight transfer or tensor
parallelism (tensor_model_parallel_size must be 1). A batch runs to completion before the next starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from omniopd_verl.core.seeds import stable_seed
from omniopd_verl.runtime.generation import eos_token_ids, pad_token_id
from omniopd_verl.verl_integration.cpu.hf_generation import GenerationRequest, generate_batch
from omniopd_verl.verl_integration.names import HF_ROLLOUT_NAME

logger = logging.getLogger("omniopd_verl.hf_rollout")
logger.setLevel(os.environ.get("OMNIOPD_LOGGING_LEVEL", "INFO"))

# how long the batcher waits for more concurrent requests before it starts a batch
BATCH_WINDOW_S = 0.005
# sampling keys verl's agent loops send that need no handling here
_IGNORED_SAMPLING_KEYS = {"repetition_penalty", "detokenize", "n", "skip_special_tokens", "include_stop_str_in_output"}


def server_name(replica_rank: int, kind: str = "", suffix: str = "") -> str:
    return f"{HF_ROLLOUT_NAME}_server{kind}_{replica_rank}_0{suffix}"


def _config_value(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default) if not hasattr(config, "get") else config.get(key, default)


class HFRolloutServer:
    """A transformers model behind verl's token-in/token-out server interface (see the module docstring)."""

    def __init__(self, config, model_config, replica_rank: int, cuda_visible_devices: str | None = None):
        if cuda_visible_devices:  # the hybrid worker's GPU, as verl's vLLM server does it
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.replica_rank = replica_rank
        self.device = torch.device("cuda:0" if cuda_visible_devices and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        path = _config_value(model_config, "local_path") or _config_value(model_config, "path")
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
            .to(self.device)
            .eval()
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.eos_token_ids = set(eos_token_ids(self.model, tokenizer))
        self.pad_token_id = pad_token_id(tokenizer)
        self.max_batch = max(1, int(_config_value(config, "max_num_seqs", 256) or 256))
        self.prompt_length = int(_config_value(config, "prompt_length"))
        self.response_length = int(_config_value(config, "response_length"))
        self.logprobs_mode = _config_value(config, "logprobs_mode", "processed_logprobs") or "processed_logprobs"
        self.global_steps = None
        self.weight_updates = 0
        self._pending: list[tuple[GenerationRequest, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._abort = False
        self._reject = False
        self._gpu_lock = asyncio.Lock()  # one batch, one weight update or one sleep at a time
        self._batcher: asyncio.Task | None = None
        logger.info("hf rollout server %d: %s on %s", replica_rank, path, self.device)

    # ------------------------------------------------------------------ generation
    def _request(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str) -> GenerationRequest:
        params = dict(sampling_params)
        budget = self.prompt_length + self.response_length - len(prompt_ids)
        max_tokens = params.pop("max_tokens", None) or params.pop("max_new_tokens", None) or self.response_length
        max_tokens = max(1, min(int(max_tokens), self.response_length, budget))
        logprobs = params.pop("logprobs", True)
        prompt_logprobs = params.pop("prompt_logprobs", None)
        request = GenerationRequest(
            prompt_ids=list(prompt_ids),
            max_tokens=max_tokens,
            temperature=float(params.pop("temperature", 1.0)),
            top_p=float(params.pop("top_p", 1.0)),
            top_k=int(params.pop("top_k", -1)),
            logprobs=logprobs is not None and logprobs is not False,
            prompt_logprobs=None if prompt_logprobs is None else int(prompt_logprobs),
            seed=int(params.pop("seed")) if params.get("seed") is not None else stable_seed("hf-rollout", request_id),
            stop_token_ids=tuple(params.pop("stop_token_ids", None) or ()),
            ignore_eos=bool(params.pop("ignore_eos", False)),
            logprobs_mode=self.logprobs_mode,
        )
        params.pop("seed", None)
        unknown = set(params) - _IGNORED_SAMPLING_KEYS
        if unknown:
            raise ValueError(
                f"sampling parameters {sorted(unknown)} are not supported by the hf rollout: allowed temperature, "
                "top_p, top_k, max_tokens, logprobs, prompt_logprobs, seed, stop_token_ids, ignore_eos"
            )
        return request

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise ValueError("the hf rollout is text-only: image/video/audio inputs are not supported")
        request = self._request(prompt_ids, sampling_params, request_id)
        if not self._resumed.is_set():
            if self._reject:
                return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", num_preempted=0)
            await self._resumed.wait()
        future = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        self._wakeup.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._batch_loop())
        result = await future
        extra: dict[str, Any] = {"global_steps": self.global_steps}
        if result.prompt_logprobs is not None:
            extra["prompt_ids"], extra["prompt_logprobs"] = result.prompt_ids, result.prompt_logprobs
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs,
            stop_reason=result.stop_reason,
            num_preempted=0,
            extra_fields=extra,
        )

    async def _batch_loop(self) -> None:
        while self._pending:
            await asyncio.sleep(BATCH_WINDOW_S)  # let concurrent requests join this batch
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            async with self._gpu_lock:
                try:
                    results = await asyncio.to_thread(
                        generate_batch,
                        self.model,
                        [req for req, _ in batch],
                        eos_token_ids=self.eos_token_ids,
                        pad_token_id=self.pad_token_id,
                        should_abort=lambda: self._abort,
                    )
                except Exception as exc:  # every waiting request learns the cause
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    # ------------------------------------------------------------------ weights
    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> dict:
        async with self._gpu_lock:
            device = next(self.model.parameters()).device
            state = {k: v.to(device) for k, v in state_dict.items()}
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            # tied embeddings (lm_head = embed_tokens) arrive once; anything else missing is a real mismatch
            tied = {
                k
                for k in missing
                if k.endswith("lm_head.weight") and getattr(self.model.config, "tie_word_embeddings", False)
            }
            missing = [k for k in missing if k not in tied]
            if missing or unexpected:
                raise ValueError(
                    f"hf rollout: weights from the actor do not match the rollout model: missing {missing[:5]}, "
                    f"unexpected {list(unexpected)[:5]}"
                )
            self.weight_updates += 1
            if global_steps is not None:
                self.global_steps = global_steps
        return {"tensors": len(state_dict), "weight_updates": self.weight_updates}

    def stats(self) -> dict[str, Any]:
        """Weight-update count and a parameter checksum (tests compare it with the actor's)."""
        checksum = float(sum(p.detach().double().sum() for p in self.model.parameters()))
        return {"weight_updates": self.weight_updates, "param_checksum": checksum}

    # ------------------------------------------------------------------ verl's control calls
    async def wake_up(self, tags: list[str] | None = None) -> None:
        if self.device.type == "cuda" and (tags is None or "weights" in tags):
            async with self._gpu_lock:
                self.model.to(self.device)

    async def sleep(self) -> None:
        if self.device.type == "cuda":  # free the GPU for the actor's update: weights wait on the CPU
            async with self._gpu_lock:
                self.model.to("cpu")
                torch.cuda.empty_cache()

    async def clear_kv_cache(self) -> None:
        return None  # the KV cache lives only for the duration of one batch

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wait_for_requests_to_drain(self) -> None:
        while self._pending or (self._batcher is not None and not self._batcher.done()):
            await asyncio.sleep(0.01)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Stop in-flight rows at the next token (stop_reason='aborted'); hold new requests until resume."""
        self._resumed.clear()
        self._reject = reject_request
        self._abort = True
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_result(_aborted())
        await self.wait_for_requests_to_drain()
        self._abort = False
        return {"aborted_count": len(pending), "request_ids": []}

    async def resume_generation(self) -> None:
        self._reject = False
        self._resumed.set()

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}  # batches are not split per request

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


def _aborted():
    from omniopd_verl.verl_integration.cpu.hf_generation import GenerationResult

    return GenerationResult(token_ids=[], log_probs=None, stop_reason="aborted")


class HFRolloutReplica(RolloutReplica):
    """One hf server per replica, on the node (and CUDA device) of the replica's hybrid workers."""

    async def launch_servers(self) -> None:
        if self.world_size != 1:
            raise ValueError(
                f"the hf rollout runs one process per replica: tensor/data/pipeline parallel size product is "
                f"{self.world_size}, allowed 1 (set actor_rollout_ref.rollout.tensor_model_parallel_size=1)"
            )
        from verl.utils.device import get_device_name

        node_id, cuda_visible = ray.get_runtime_context().get_node_id(), None
        if self.workers:
            node_id, cuda_visible = await self.workers[0].__ray_call__.remote(_worker_placement)
        if get_device_name() != "cuda":
            cuda_visible = None
        kind = "_teacher" if self.is_teacher_model else ("_reward" if self.is_reward_model else "")
        name = server_name(self.replica_rank, kind, self.name_suffix)
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=name,
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                    node_id=node_id, soft=False
                ),
                # as verl's vLLM server: Ray must not hide the worker's GPU from a 0-GPU actor
                runtime_env={"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
                if cuda_visible
                else None,
            )
            .remote(
                config=self.config,
                model_config=self.model_config,
                replica_rank=self.replica_rank,
                cuda_visible_devices=cuda_visible,
            )
        )
        await server.__ray_ready__.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


def _worker_placement(worker) -> tuple[str, str | None]:
    context = ray.get_runtime_context()
    gpus = context.get_accelerator_ids().get("GPU") or []
    return context.get_node_id(), (str(gpus[0]) if gpus else None)


class HFServerAdapter(BaseRollout):
    """In each hybrid actor/rollout worker: forwards verl's weight sync and sleep/wake to the server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank if replica_rank == -1 else replica_rank
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        await self._server_handle().wake_up.remote(tags=tags)

    async def release(self) -> None:
        await self._server_handle().sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self, weights, wire_format: str = "named_tensors", global_steps: int | None = None, **kwargs
    ) -> None:
        """Gather the (possibly sharded) tensors verl's engine yields and load them into the server."""
        if wire_format != "named_tensors":
            raise ValueError(f"hf rollout: wire_format={wire_format!r} is not supported: allowed 'named_tensors'")
        if kwargs.get("peft_config") is not None:
            raise ValueError("the hf rollout does not take LoRA adapters: set actor_rollout_ref.model.lora.merge=True")
        t0 = time.perf_counter()
        state = {}
        for name, tensor in weights:  # every rank iterates: full_tensor() may run collectives
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            state[name] = tensor.detach().to("cpu", copy=True)
        result = await self._server_handle().update_weights.remote(state, global_steps)
        logger.info("hf rollout: %d tensors synced in %.2f s (%s)", len(state), time.perf_counter() - t0, result)
