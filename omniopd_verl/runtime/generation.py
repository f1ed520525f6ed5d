"""One Hugging Face sampling loop for the whole project: N samples per prefix from one prefill.

Every sampler goes through `sample_continuations`: the local engine's rollout, the `transformers`
teacher's raw call (and so the CPU teacher server behind it), eval's TransformersGenerator and verl's
`hf` rollout (`verl_integration/cpu/hf_generation.py` is an adapter from vLLM's request fields to this call).

What it does, per call:
  padding   prefixes are left-padded to one width; position ids come from the attention mask, so the
            padding shifts nothing.
  prefill   each REQUEST's prefix is run through the model once (batched over requests, `logits_to_keep=1`
            so no [B, P, V] logits exist); its KV cache is then copied n times along the batch
            (`DynamicCache.batch_select_indices`) and the n samples decode from the copies. This is
            vLLM's `n`-sampling: the prefill cost is paid per distinct prefix, not per sample.
            `share_prefix=False` prefills every sample's row separately (the old path; kept for the
            benchmark and the tests that pin the two paths to the same samples).
  decode    a plain loop over `model(input_ids=last_tokens, past_key_values=cache)`, one token per row
            per step, until every row has met an EOS or its own `max_new_tokens`.
  sampling  temperature, then top-k, then top-p (vLLM's order), then inverse-CDF sampling with uniforms from a torch.Generator
            owned by the request and seeded by its seed: at every step the request draws n uniforms,
            one per sample, whether or not a sample has finished. A request's samples are therefore a
            function of (weights, its prefix, its seed) only: not of the other requests in the batch,
            of the batch order or of the machine's global RNG (up to the last-bit float differences
            that a different batch shape can cause in the logits). Reruns are bit-identical.
            Temperature, top-k and top-p are one value for every request or one per request; when they are
            one value the arithmetic is the scalar one, so the local engine's samples do not depend on
            whether per-request parameters exist.
  stopping  a row stops at an id of `eos_token_ids`, at one of its request's `stop_token_ids`, at its
            `max_new_tokens`, or when `should_abort()` turns true (checked before every token; `aborted`).
  log-probs per sampled token when asked: 'processed' = of the distribution actually sampled from
            (after temperature, top-k, top-p: verl's default `logprobs_mode`) or 'raw' = the model's own
            log-softmax. `prompt_logprobs=k` gives vLLM's per-prompt-token rows from the prefill (`PromptLogprobs`).
  dtype     whatever the model has; logits are cast to float32 for sampling.
  bias      an optional [V] logit bias added before the temperature (a steered demonstration teacher).

The KV cache is created inside the call and dropped at its end: nothing is shared across calls, and
within a call a row only ever reads and writes the cache rows copied from its own request's prefix.
Not done: reusing the nested prefixes of one response's ascending anchors across requests (their
prefixes arrive as text, re-tokenised, so a shared token prefix is not guaranteed; the n-sharing above
is where the measured cost was).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from omniopd_verl.core.seeds import SEED_MODULUS

DEFAULT_SHARE_PREFIX = True
"""What `share_prefix=None` means; benchmarks/bench_local_step_breakdown.py --compare flips it to time the old path."""


LOGPROB_KINDS = ("processed", "raw")


@dataclass
class PromptLogprobs:
    """vLLM's `prompt_logprobs=k` rows for one prompt, in the layout verl extracts (`vllm_rollout/utils.py`).

    One row per prompt token: row i holds the top-k (by rank) of the raw distribution that predicts
    prompt token i + 1 (k = 0: that actual next token only), and a dummy row of zeros comes last."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]


@dataclass
class Sample:
    """One sampled continuation: its token ids (up to and including the stop token) and how it ended."""

    token_ids: list[int]
    finished: bool
    """True when it stopped at an EOS or stop id (False: cut at max_new_tokens, or aborted)."""
    log_probs: list[float] | None = None
    """One per token when `logprobs` was asked for this request (see the module docstring)."""
    aborted: bool = False
    """`should_abort()` stopped it before a stop token or its limit."""
    prompt_logprobs: PromptLogprobs | None = None
    """Its request's prompt rows when `prompt_logprobs` was asked (the same object for the request's n samples)."""


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (where a sample stops)."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return sorted(ids)


def pad_token_id(tokenizer) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS, else 0.

    Which id it is changes no result (padded positions are masked out of attention and their outputs are
    never read); it only has to be a valid id. Left alone on the tokenizer, which may be shared."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def _per_request(value, count: int, name: str) -> list:
    scalar = value is None or isinstance(value, (int, float, str))
    values = [value] * count if scalar else list(value)
    if len(values) != count:
        raise ValueError(f"{name}: {len(values)} values for {count} prefixes")
    return values


def _uniform(values: list):
    """One value when every request has the same one (the scalar arithmetic), else the list."""
    return values[0] if len(set(values)) == 1 else values


def _row_tensor(value, owner: list[int]) -> torch.Tensor | float:
    """A per-request parameter as the scalar it is, or as a [R, 1] float32 column over the sample rows."""
    if not isinstance(value, list):
        return value
    return torch.tensor([float(value[i]) for i in owner], dtype=torch.float32).unsqueeze(-1)


def _filtered_probs(
    logits_RV: torch.Tensor, temperature, top_k, top_p
) -> torch.Tensor:  # fmt: skip
    """Unnormalised probabilities of the distribution sampled from: softmax(logits / temperature), cut to
    the top-k, then to the top-p nucleus (vLLM's order). Each parameter is a scalar or a [R, 1] column;
    temperature 0 (greedy rows) scales by 1 here, top_k <= 0 and top_p = 1 cut nothing."""
    if isinstance(temperature, torch.Tensor):
        temperature = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits_RV.device)
    elif temperature == 0:
        temperature = 1.0
    logits_RV = logits_RV / temperature
    if isinstance(top_k, torch.Tensor) or top_k > 0:
        V = logits_RV.shape[-1]
        k_R1 = (
            (top_k if isinstance(top_k, torch.Tensor) else torch.tensor([[float(top_k)]])).long().to(logits_RV.device)
        )
        k_R1 = torch.where((k_R1 > 0) & (k_R1 < V), k_R1, torch.full_like(k_R1, V)).expand(logits_RV.shape[0], 1)
        kth_R1 = logits_RV.topk(int(k_R1.max()), dim=-1).values.gather(-1, k_R1 - 1)
        logits_RV = logits_RV.masked_fill(logits_RV < kth_R1, float("-inf"))  # ties with the k-th stay, as in vLLM
    probs = torch.softmax(logits_RV, dim=-1)
    if isinstance(top_p, torch.Tensor) or top_p < 1.0:
        if isinstance(top_p, torch.Tensor):  # rows with top_p = 1 cut nothing, also where float sums reach 1 early
            top_p = torch.where(top_p < 1.0, top_p, torch.full_like(top_p, float("inf"))).to(probs.device)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs


def sampling_logprobs(logits_V: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log-probs of the distribution one row is sampled from (-inf = cut): the loop's own filter, one row."""
    probs_V = _filtered_probs(logits_V.float().unsqueeze(0), temperature, top_k, top_p)[0]
    return torch.log(probs_V / probs_V.sum())


def _choose(
    logits_RV: torch.Tensor, uniforms_R: torch.Tensor, temperature, top_k, top_p, want_processed: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse-CDF sample one token per row from the filtered distribution (greedy rows: its argmax);
    with `want_processed`, also each chosen token's log-prob under that distribution."""
    greedy_only = not isinstance(temperature, torch.Tensor) and temperature == 0
    if greedy_only and not want_processed:
        return logits_RV.argmax(dim=-1), None
    probs = _filtered_probs(logits_RV, temperature, top_k, top_p)
    if greedy_only:
        chosen = logits_RV.argmax(dim=-1)
    else:
        cdf = probs.cumsum(dim=-1)
        target = (uniforms_R.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        chosen = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits_RV.shape[-1] - 1)
        if isinstance(temperature, torch.Tensor):
            greedy_R = (temperature.squeeze(-1) == 0).to(chosen.device)
            chosen = torch.where(greedy_R, logits_RV.argmax(dim=-1), chosen)
    if not want_processed:
        return chosen, None
    picked = probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    return chosen, torch.log(picked / probs.sum(dim=-1))


def _left_pad(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids [R, P], attention mask and position ids (0 at each row's first real token)."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, P - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[b, P - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _reserve(cache, extra: int) -> None:
    """Give each full-attention cache layer room for `extra` more tokens, so decoding writes in place.

    DynamicCache concatenates every step, copying the whole cache (43% of a decode step for 64 rows
    of a 286-token prefix on SmolLM2-135M); a preallocated buffer with growing views gives the same
    keys and values bit for bit.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    for k, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4:
            layers[k] = _PreallocatedLayer.of(layer, extra)


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are growing views of one preallocated [B, H, L + extra, D] buffer."""

    @classmethod
    def of(cls, layer: DynamicLayer, extra: int) -> _PreallocatedLayer:
        new = cls()
        B, H, L, D = layer.keys.shape
        new.dtype, new.device, new.is_initialized = layer.keys.dtype, layer.keys.device, True
        new._k = layer.keys.new_empty((B, H, L + extra, D))
        new._v = layer.values.new_empty((B, H, L + extra, D))
        new._k[:, :, :L], new._v[:, :, :L] = layer.keys, layer.values
        new._n = L
        new.keys, new.values = new._k[:, :, :L], new._v[:, :, :L]
        return new

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self._n + n > self._k.shape[-2]:  # past the reservation: grow like DynamicLayer
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            self._k, self._v, self._n = self.keys, self.values, self.keys.shape[-2]
            return self.keys, self.values
        self._k[:, :, self._n : self._n + n] = key_states
        self._v[:, :, self._n : self._n + n] = value_states
        self._n += n
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]
        return self.keys, self.values


@dataclass
class _Params:
    """One call's per-request settings (lists over requests) and the call-wide ones."""

    ns: list[int]
    limits: list[int]
    seeds: list[int]
    temperature: float | list[float]
    top_k: int | list[int]
    top_p: float | list[float]
    stops: list[frozenset[int]]
    logprobs: list[str | None]
    prompt_logprobs: list[int | None]
    pad_token_id: int
    eos_token_ids: Sequence[int]
    min_new_tokens: int
    logit_bias_V: torch.Tensor | None
    share_prefix: bool
    should_abort: Callable[[], bool] | None


@torch.inference_mode()
def sample_continuations(
    model,
    prefixes: Sequence[Sequence[int]],
    *,
    n: int | Sequence[int],
    max_new_tokens: int | Sequence[int],
    temperature: float | Sequence[float],
    top_p: float | Sequence[float],
    seeds: int | Sequence[int],
    pad_token_id: int,
    eos_token_ids: Sequence[int] = (),
    top_k: int | Sequence[int] = 0,
    stop_token_ids: Sequence[Sequence[int]] | None = None,
    logprobs: str | None | Sequence[str | None] = None,
    prompt_logprobs: int | None | Sequence[int | None] = None,
    should_abort: Callable[[], bool] | None = None,
    min_new_tokens: int = 0,
    logit_bias_V: torch.Tensor | None = None,
    share_prefix: bool | None = None,
    max_rows: int | None = None,
) -> list[list[Sample]]:
    """For each prefix (token ids), `n` sampled continuations; see the module docstring.

    `n`, `max_new_tokens`, `seeds`, `temperature`, `top_k`, `top_p`, `logprobs` ('processed', 'raw' or
    None) and `prompt_logprobs` (None or k) are one value for all prefixes or one per prefix;
    `stop_token_ids` is one id list per prefix (stops beside `eos_token_ids`). Requests are grouped into
    generations of at most `max_rows` sample rows (a request is never split).
    """
    count = len(prefixes)
    params = _Params(
        ns=[int(k) for k in _per_request(n, count, "n")],
        limits=[int(k) for k in _per_request(max_new_tokens, count, "max_new_tokens")],
        seeds=[int(s) for s in _per_request(seeds, count, "seeds")],
        temperature=_uniform(_per_request(temperature, count, "temperature")),
        top_k=_uniform([int(k) for k in _per_request(top_k, count, "top_k")]),
        top_p=_uniform(_per_request(top_p, count, "top_p")),
        stops=[frozenset(int(t) for t in ids) for ids in (stop_token_ids or [()] * count)],
        logprobs=_per_request(logprobs, count, "logprobs"),
        prompt_logprobs=_per_request(prompt_logprobs, count, "prompt_logprobs"),
        pad_token_id=pad_token_id,
        eos_token_ids=eos_token_ids,
        min_new_tokens=min_new_tokens,
        logit_bias_V=logit_bias_V,
        share_prefix=DEFAULT_SHARE_PREFIX if share_prefix is None else share_prefix,
        should_abort=should_abort,
    )
    if len(params.stops) != count:
        raise ValueError(f"stop_token_ids: {len(params.stops)} values for {count} prefixes")
    for i, p in enumerate(prefixes):
        if len(p) == 0:
            raise ValueError(f"prefix {i} has no tokens: the first sampled token needs a context")
    temps = params.temperature if isinstance(params.temperature, list) else [params.temperature]
    tops = params.top_p if isinstance(params.top_p, list) else [params.top_p]
    if min(temps) < 0 or not all(0 < p <= 1 for p in tops):
        raise ValueError(f"temperature={temperature} top_p={top_p}: allowed temperature >= 0 and 0 < top_p <= 1")
    if set(params.logprobs) - {None, *LOGPROB_KINDS}:
        raise ValueError(f"logprobs={logprobs!r}: allowed None or one of {LOGPROB_KINDS}")
    out: list[list[Sample]] = [[] for _ in prefixes]
    group: list[int] = []
    rows = 0
    for i in range(count):
        if params.ns[i] == 0 or params.limits[i] == 0:
            out[i] = [Sample([], False) for _ in range(params.ns[i])]
            continue
        if group and max_rows is not None and rows + params.ns[i] > max_rows:
            _generate_group(model, prefixes, group, params, out)
            group, rows = [], 0
        group.append(i)
        rows += params.ns[i]
    if group:
        _generate_group(model, prefixes, group, params, out)
    return out


def _pick(value, group: list[int]):
    """A per-request parameter restricted to `group` (a scalar stays a scalar), made scalar if uniform there."""
    return _uniform([value[i] for i in group]) if isinstance(value, list) else value


def _prompt_rows(logits_LV: torch.Tensor, ids_L: torch.Tensor, k: int) -> PromptLogprobs:
    """vLLM's prompt_logprobs rows for one unpadded prompt (see `PromptLogprobs`)."""
    rows_lp = torch.log_softmax(logits_LV[:-1].float(), dim=-1).cpu()
    if k == 0:
        nxt = ids_L[1:, None].cpu()
        values, ids = rows_lp.gather(-1, nxt), nxt
    else:
        values, ids = rows_lp.topk(k, dim=-1)
    width = max(k, 1)
    return PromptLogprobs(ids.tolist() + [[0] * width], values.tolist() + [[0.0] * width])


def _generate_group(model, prefixes, group: list[int], params: _Params, out: list[list[Sample]]) -> None:
    ns, limits = params.ns, params.limits
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # the sample rows, request by request: row r belongs to request owner[r]
    owner = [i for i in group for _ in range(ns[i])]
    prefill_of = group if params.share_prefix else owner  # the rows that are prefilled
    ids, mask, positions = _left_pad([prefixes[i] for i in prefill_of], params.pad_token_id)
    want_prompt = [i for i in group if params.prompt_logprobs[i] is not None]
    # every position's logits only when a request asks for its prompt log-probs
    kwargs = {"logits_to_keep": 1} if not want_prompt and _accepts(model, "logits_to_keep") else {}
    cache = DynamicCache()
    result = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
        **kwargs,
    )
    prompt_rows = {}
    for i in want_prompt:
        b, width = prefill_of.index(i), len(prefixes[i])
        prompt_rows[i] = _prompt_rows(result.logits[b, -width:], ids[b, -width:], params.prompt_logprobs[i])
    cache = result.past_key_values
    logits_RV = result.logits[:, -1, :].float()
    del result
    if params.share_prefix:
        # copy each request's prefilled cache row n times: rows [0]*n0 + [1]*n1 + ...
        select = torch.tensor([b for b, i in enumerate(group) for _ in range(ns[i])], dtype=torch.long)
        cache.batch_select_indices(select.to(device))
        logits_RV = logits_RV[select.to(logits_RV.device)]
        mask = mask[select]
        positions = positions[select]
    _reserve(cache, max(limits[i] for i in group))
    R = len(owner)
    generators = {}
    for i in group:
        g = torch.Generator(device="cpu")
        g.manual_seed(params.seeds[i] % SEED_MODULUS)
        generators[i] = g
    temperature = _row_tensor(_pick(params.temperature, group), owner)
    top_k = _row_tensor(_pick(params.top_k, group), owner)
    top_p = _row_tensor(_pick(params.top_p, group), owner)
    kinds = [params.logprobs[i] for i in owner]
    log_probs: list[list[float] | None] = [[] if kind else None for kind in kinds]
    eos = torch.tensor(sorted(set(int(e) for e in params.eos_token_ids)), dtype=torch.long)
    # per-request stop ids beside the EOS ids: checked row by row (a Python set per row, R is small)
    row_stops = [params.stops[i] for i in owner] if any(params.stops[i] for i in group) else None
    row_limit = torch.tensor([limits[i] for i in owner])
    bias = params.logit_bias_V
    bias = bias.to(device=logits_RV.device, dtype=torch.float32) if bias is not None else None
    tokens: list[list[int]] = [[] for _ in range(R)]
    done = torch.zeros(R, dtype=torch.bool)
    finished = torch.zeros(R, dtype=torch.bool)
    aborted = torch.zeros(R, dtype=torch.bool)
    next_pos = positions[:, -1] + 1
    attn = mask.to(device)
    steps = max(limits[i] for i in group)
    for t in range(steps):
        if params.should_abort is not None and params.should_abort():
            aborted = ~done
            break
        if bias is not None:
            logits_RV = logits_RV + bias
        if t < params.min_new_tokens and len(eos):
            logits_RV[:, eos.to(logits_RV.device)] = -float("inf")
        uniforms = torch.cat([torch.rand(ns[i], generator=generators[i]) for i in group])
        chosen, processed_R = _choose(logits_RV, uniforms, temperature, top_k, top_p, "processed" in kinds)
        chosen = chosen.cpu()
        raw_R = None
        if "raw" in kinds:
            raw_R = torch.log_softmax(logits_RV, dim=-1).gather(-1, chosen.to(logits_RV.device).unsqueeze(-1))
            raw_R = raw_R.squeeze(-1).cpu()
        processed_R = processed_R.cpu() if processed_R is not None else None
        for r in range(R):
            if not done[r]:
                tokens[r].append(int(chosen[r]))
                if kinds[r]:
                    log_probs[r].append(float((processed_R if kinds[r] == "processed" else raw_R)[r]))
        is_stop = torch.isin(chosen, eos) if len(eos) else torch.zeros(R, dtype=torch.bool)
        if row_stops is not None:
            is_stop |= torch.tensor([int(c) in row_stops[r] for r, c in enumerate(chosen.tolist())])
        finished |= is_stop & ~done
        done |= is_stop | (t + 1 >= row_limit)
        if bool(done.all()) or t + 1 == steps:
            break
        feed = torch.where(done, torch.full_like(chosen, params.pad_token_id), chosen)
        attn = torch.cat([attn, torch.ones((R, 1), dtype=attn.dtype, device=device)], dim=1)
        result = model(
            input_ids=feed.unsqueeze(-1).to(device),
            attention_mask=attn,
            position_ids=next_pos.unsqueeze(-1).to(device),
            past_key_values=cache,
            use_cache=True,
        )
        cache = result.past_key_values
        logits_RV = result.logits[:, -1, :].float()
        next_pos = next_pos + 1
    del cache
    if was_training:
        model.train()
    for r, i in enumerate(owner):
        out[i].append(Sample(tokens[r], bool(finished[r]), log_probs[r], bool(aborted[r]), prompt_rows.get(i)))


@torch.inference_mode()
def score_continuations(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    pad_token_id: int,
    max_rows: int = 64,
    logit_bias_V: torch.Tensor | None = None,
) -> list[list[torch.Tensor]]:
    """log p(token | prefix, earlier tokens) of every continuation of every prefix, float32 [T] tensors on the CPU.

    Each prefix is prefilled once; its continuations are scored in one forward from copies of that KV
    cache (the held-out paired evaluation scores K teacher texts and K base samples per prefix, so this
    saves 2K-1 prefills per prefix). Equal to a full teacher-forced pass up to float rounding.
    `logit_bias_V` is added to the logits first (the log-probs of a steered demonstration teacher).
    """
    out = [[torch.zeros(0) for _ in conts] for conts in continuations]
    for i, k, logp_TV in continuation_distributions(
        model, prefixes, continuations, pad_token_id=pad_token_id, max_rows=max_rows, logit_bias_V=logit_bias_V
    ):
        targets_T = torch.tensor(continuations[i][k], dtype=torch.long, device=logp_TV.device)
        out[i][k] = logp_TV.gather(-1, targets_T.unsqueeze(-1)).squeeze(-1).cpu()
    return out


@torch.inference_mode()
def continuation_distributions(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    pad_token_id: int,
    max_rows: int = 64,
    logit_bias_V: torch.Tensor | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(i, k, logp_TV) for every non-empty continuation k of prefix i: row t is the log-distribution the
    model draws token t of that continuation from (given the prefix and tokens < t), float32 [T, V].

    The building block of `score_continuations` and of the held-out evaluation's token-set mass; each
    prefix is prefilled once per group of at most `max_rows` continuations.
    """
    if len(prefixes) != len(continuations):
        raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuation lists")
    group: list[int] = []
    rows = 0
    for i in range(len(prefixes)):
        if len(prefixes[i]) == 0:
            raise ValueError(f"prefix {i} has no tokens: the first continuation token needs a context")
        k = len(continuations[i])
        if group and rows + k > max_rows:
            yield from _distributions_of_group(model, prefixes, continuations, group, pad_token_id, logit_bias_V)
            group, rows = [], 0
        group.append(i)
        rows += k
    if group:
        yield from _distributions_of_group(model, prefixes, continuations, group, pad_token_id, logit_bias_V)


def _distributions_of_group(model, prefixes, continuations, group, pad_token_id, logit_bias_V):
    device = next(model.parameters()).device
    owner = [(i, k) for i in group for k in range(len(continuations[i])) if len(continuations[i][k])]
    if not owner:
        return
    live = sorted({i for i, _ in owner})
    row_of = {i: b for b, i in enumerate(live)}
    was_training = model.training
    model.eval()
    try:
        ids, mask, positions = _left_pad([prefixes[i] for i in live], pad_token_id)
        kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        result = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=DynamicCache(),
            use_cache=True,
            **kwargs,
        )
        cache = result.past_key_values
        bias = 0.0 if logit_bias_V is None else logit_bias_V.to(device=result.logits.device, dtype=torch.float32)
        first_logp_BV = torch.log_softmax(result.logits[:, -1, :].float() + bias, dim=-1)
        select = torch.tensor([row_of[i] for i, _ in owner], dtype=torch.long)
        cache.batch_select_indices(select.to(device))
        texts = [list(continuations[i][k]) for i, k in owner]
        T = max(len(t) for t in texts)
        cont = torch.full((len(texts), T), pad_token_id, dtype=torch.long)
        cont_mask = torch.zeros((len(texts), T), dtype=torch.long)
        for r, t in enumerate(texts):
            cont[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            cont_mask[r, : len(t)] = 1
        attn = torch.cat([mask[select], cont_mask], dim=1)
        pos = positions[select][:, -1:] + 1 + torch.arange(T).unsqueeze(0)
        logits = model(
            input_ids=cont.to(device),
            attention_mask=attn.to(device),
            position_ids=pos.to(device),
            past_key_values=cache,
            use_cache=True,
        ).logits.float()
        del cache
        # the distribution of token t is the prefill's last row for t = 0, the continuation's row t-1 after
        logp_RTV = torch.log_softmax(logits + bias, dim=-1)
        for r, ((i, k), t) in enumerate(zip(owner, texts, strict=True)):
            first = first_logp_BV[select[r]].unsqueeze(0)
            yield i, k, torch.cat([first, logp_RTV[r, : len(t) - 1]], dim=0)
    finally:
        if was_training:
            model.train()
