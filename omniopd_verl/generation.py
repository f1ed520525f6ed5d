"""One Hugging Face sampling loop for the whole project: N samples per prefix from one prefill.

Every local sampler goes through `sample_continuations`: the local engine's rollout, the `transformers`
teacher's raw call (and so the CPU teacher server behind it) and eval's TransformersGenerator.

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
  sampling  temperature, then top-p, then inverse-CDF sampling with uniforms from a torch.Generator
            owned by the request and seeded by its seed: at every step the request draws n uniforms,
            one per sample, whether or not a sample has finished. A request's samples are therefore a
            function of (weights, its prefix, its seed) only: not of the other requests in the batch,
            of the batch order or of the machine's global RNG (up to the last-bit float differences
            that a different batch shape can cause in the logits). Reruns are bit-identical.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

SEED_MODULUS = 2**63
DEFAULT_SHARE_PREFIX = True
"""What `share_prefix=None` means; benchmarks/bench_local_step_breakdown.py --compare flips it to time the old path."""


@dataclass
class Sample:
    """One sampled continuation: its token ids (up to and including the first EOS) and whether it stopped there."""

    token_ids: list[int]
    finished: bool


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (where a sample stops)."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(x) for x in source)
    return sorted(ids)


def derive_seed(seed: int, index: int) -> int:
    """A per-request seed from a batch seed and the request's index (splitmix64: neighbours decorrelate)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 1) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % SEED_MODULUS


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def _per_request(value, count: int, name: str) -> list:
    values = [value] * count if isinstance(value, (int, float)) else list(value)
    if len(values) != count:
        raise ValueError(f"{name}: {len(values)} values for {count} prefixes")
    return values


def _choose(logits_RV: torch.Tensor, uniforms_R: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sample one token per row from softmax(logits / temperature), restricted to the top-p nucleus."""
    if temperature == 0:
        return logits_RV.argmax(dim=-1)
    probs = torch.softmax(logits_RV / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.cumsum(dim=-1)
    target = (uniforms_R.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits_RV.shape[-1] - 1)


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


@torch.inference_mode()
def sample_continuations(
    model,
    prefixes: Sequence[Sequence[int]],
    *,
    n: int | Sequence[int],
    max_new_tokens: int | Sequence[int],
    temperature: float,
    top_p: float,
    seeds: int | Sequence[int],
    pad_token_id: int,
    eos_token_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    logit_bias_V: torch.Tensor | None = None,
    share_prefix: bool | None = None,
    max_rows: int | None = None,
) -> list[list[Sample]]:
    """For each prefix (token ids), `n` sampled continuations; see the module docstring.

    `n`, `max_new_tokens` and `seeds` are one value for all prefixes or one per prefix. Requests are
    grouped into generations of at most `max_rows` sample rows (a request is never split).
    """
    if share_prefix is None:
        share_prefix = DEFAULT_SHARE_PREFIX
    count = len(prefixes)
    ns = [int(k) for k in _per_request(n, count, "n")]
    limits = [int(k) for k in _per_request(max_new_tokens, count, "max_new_tokens")]
    seed_list = [int(s) for s in _per_request(seeds, count, "seeds")]
    for i, p in enumerate(prefixes):
        if len(p) == 0:
            raise ValueError(f"prefix {i} has no tokens: the first sampled token needs a context")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature={temperature} top_p={top_p}: allowed temperature >= 0 and 0 < top_p <= 1")
    out: list[list[Sample]] = [[] for _ in prefixes]
    group: list[int] = []
    rows = 0
    for i in range(count):
        if ns[i] == 0 or limits[i] == 0:
            out[i] = [Sample([], False) for _ in range(ns[i])]
            continue
        if group and max_rows is not None and rows + ns[i] > max_rows:
            _generate_group(model, prefixes, group, ns, limits, seed_list, out, temperature, top_p, pad_token_id,
                            eos_token_ids, min_new_tokens, logit_bias_V, share_prefix)  # fmt: skip
            group, rows = [], 0
        group.append(i)
        rows += ns[i]
    if group:
        _generate_group(model, prefixes, group, ns, limits, seed_list, out, temperature, top_p, pad_token_id,
                        eos_token_ids, min_new_tokens, logit_bias_V, share_prefix)  # fmt: skip
    return out


def _generate_group(
    model, prefixes, group, ns, limits, seeds, out, temperature, top_p, pad_token_id, eos_token_ids, min_new_tokens,
    logit_bias_V, share_prefix,
) -> None:  # fmt: skip
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # the sample rows, request by request: row r belongs to request owner[r]
    owner = [i for i in group for _ in range(ns[i])]
    prefill_of = group if share_prefix else owner  # the rows that are prefilled
    ids, mask, positions = _left_pad([prefixes[i] for i in prefill_of], pad_token_id)
    kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    cache = DynamicCache()
    result = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
        **kwargs,
    )
    cache = result.past_key_values
    logits_RV = result.logits[:, -1, :].float()
    if share_prefix:
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
        g.manual_seed(seeds[i] % SEED_MODULUS)
        generators[i] = g
    eos = torch.tensor(sorted(set(int(e) for e in eos_token_ids)), dtype=torch.long)
    row_limit = torch.tensor([limits[i] for i in owner])
    bias = logit_bias_V.to(device=logits_RV.device, dtype=torch.float32) if logit_bias_V is not None else None
    tokens: list[list[int]] = [[] for _ in range(R)]
    done = torch.zeros(R, dtype=torch.bool)
    finished = torch.zeros(R, dtype=torch.bool)
    next_pos = positions[:, -1] + 1
    attn = mask.to(device)
    steps = max(limits[i] for i in group)
    for t in range(steps):
        if bias is not None:
            logits_RV = logits_RV + bias
        if t < min_new_tokens and len(eos):
            logits_RV[:, eos.to(logits_RV.device)] = -float("inf")
        uniforms = torch.cat([torch.rand(ns[i], generator=generators[i]) for i in group])
        chosen = _choose(logits_RV, uniforms, temperature, top_p).cpu()
        for r in range(R):
            if not done[r]:
                tokens[r].append(int(chosen[r]))
        is_eos = torch.isin(chosen, eos) if len(eos) else torch.zeros(R, dtype=torch.bool)
        finished |= is_eos & ~done
        done |= is_eos | (t + 1 >= row_limit)
        if bool(done.all()) or t + 1 == steps:
            break
        feed = torch.where(done, torch.full_like(chosen, pad_token_id), chosen)
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
        out[i].append(Sample(tokens[r], bool(finished[r])))


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
