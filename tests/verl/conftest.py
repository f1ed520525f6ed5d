"""Fixtures for the verl integration tests: a stand-in for verl's student rollout server.

verl's rollout servers (vLLM, SGLang) need a GPU. `StandInStudentServer` keeps the interface the
agent loop sees (`LLMServerClient.generate(request_id, *, prompt_ids, sampling_params, ...) ->
TokenOutput`) and the vLLM server's semantics that OmniOPD relies on, with a real transformers model:
- `max_tokens` (default: rollout response length), `temperature`, `logprobs` (sampled tokens'
  log-probs of the raw model distribution, vLLM's default `raw_logprobs` mode), stop at EOS;
- `prompt_logprobs=k`: `extra_fields['prompt_ids'/'prompt_logprobs']` laid out exactly as
  `verl.workers.rollout.vllm_rollout.utils.extract_prompt_logprobs` does: one row per prompt token,
  row i = top-k (by rank) of the distribution predicting token i + 1, a dummy zero row last.
It also records every call so tests can compare with independently computed values.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import torch


class StandInStudentServer:
    def __init__(self, model_path: str, *, response_length: int, seed: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.response_length = response_length
        self.seed = seed
        self.calls: list[dict[str, Any]] = []

    @torch.no_grad()
    def logprobs_LV(self, ids: list[int]) -> torch.Tensor:
        """log-softmax of the model's logits at every position of `ids` (float32, [L, V])."""
        logits = self.model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        **kwargs: Any,
    ):
        from verl.workers.rollout.replica import TokenOutput

        params = dict(sampling_params)
        self.calls.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(params)})
        max_tokens = int(params.pop("max_tokens", self.response_length))
        want_logprobs = bool(params.pop("logprobs", False))
        k = params.pop("prompt_logprobs", None)
        temperature = float(params.get("temperature", 1.0))
        extra: dict[str, Any] = {}
        if k is not None:
            lp_LV = self.logprobs_LV(list(prompt_ids))
            values, ids = lp_LV[:-1].topk(max(int(k), 1), dim=-1)
            extra["prompt_logprobs"] = values.tolist() + [[0.0] * max(int(k), 1)]
            extra["prompt_ids"] = ids.tolist() + [[0] * max(int(k), 1)]
        digest = hashlib.sha256(f"{self.seed}:{request_id}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        ids, token_ids, log_probs = list(prompt_ids), [], []
        for _ in range(max_tokens):
            lp_V = self.logprobs_LV(ids)[-1]
            if temperature == 0:
                tok = int(lp_V.argmax())
            else:
                tok = int(torch.multinomial(torch.softmax(lp_V / temperature, -1), 1, generator=gen))
            token_ids.append(tok)
            log_probs.append(float(lp_V[tok]))
            ids.append(tok)
            if tok == self.tokenizer.eos_token_id:
                break
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if want_logprobs else None,
            stop_reason="completed",
            extra_fields=extra,
        )


@pytest.fixture
def stand_in_student_server():
    """Factory: `stand_in_student_server(model_path, response_length=...)`."""
    return StandInStudentServer
