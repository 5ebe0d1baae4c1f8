"""A small inference engine on transformers: batched, KV-cached sampling with per-token log-probs and
(for MoE models) the experts every token was routed to.

No Ray and no verl here, so it is testable on its own; :mod:`verl_stable.cpu.rollout` serves it to
verl's agent loop. Semantics follow vLLM where verl depends on them:

- ``logprobs_mode``: ``processed_logprobs`` (verl's default) are log-probs of the distribution actually
  sampled from (logits / temperature, top-k / top-p applied); ``raw_logprobs`` are of the raw logits.
  Greedy (temperature 0) always reports raw log-probs, as vLLM does.
- routed experts: one ``(num_tokens, num_moe_layers, top_k)`` array per request with a row for every
  token the model ran on — all prompt tokens and all response tokens but the last, exactly as vLLM's
  ``routed_experts`` — which is what verl's agent loop reads from ``TokenOutput.routed_experts``. The array
  is in the compact route dtype (uint8 up to 256 experts, uint16 above: ``routing.compact_dtype``) and
  stays so on the wire to the training engine (:mod:`verl_stable.integration.agent_loop`).
- precision: ``dtype`` is the compute dtype; ``quantization="fp8"`` round-trips the linear / expert
  weights through ``torch.float8_e4m3fn`` (per-tensor, per-expert scales) after every weight load, the way
  FP8 rollouts do, so the rollout policy mu_old genuinely differs from the trainer's pi_old.
  ``quantization="int8"`` / ``"int4"`` / ``"int3"`` fake-quantise the same weights to symmetric integers with
  one absmax scale per output channel (weight-only quantisation, as in GPTQ/AWQ-style int rollouts): a dial
  for the training–inference mismatch, from bf16 rounding up to the published KL of the paper's 30B FP8
  rollouts (docs/method.md §6) and beyond.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
import torch

from verl_stable.routing import RoutingReplay, generation_routes

#: The precisions the rollout runs, by the names ``actor_rollout_ref.rollout.dtype`` may give.
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
#: The weight quantisations the rollout implements (None: the weights as loaded).
SUPPORTED_QUANTIZATION = (None, "fp8", "int8", "int4", "int3")
INT_BITS = {"int8": 8, "int4": 4, "int3": 3}
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")
FP8_MAX = 448.0  # largest finite torch.float8_e4m3fn value
_EXPERT_KEY = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in DTYPES:
        raise ValueError(
            f"actor_rollout_ref.rollout.dtype={name!r} is not supported by the hf_cpu rollout; "
            f"use one of {sorted(set(DTYPES))}"
        )
    return DTYPES[key]


def is_fp8_target(name: str, tensor: torch.Tensor) -> bool:
    """Which weights FP8 inference quantizes: matmul weights of attention and experts/MLPs.

    Embeddings, the LM head, norms and the MoE router stay in the compute dtype, as in vLLM's FP8 mode.
    """
    if tensor.ndim < 2 or not tensor.is_floating_point():
        return False
    lowered = name.lower()
    if "embed" in lowered or "lm_head" in lowered or "norm" in lowered:
        return False
    if lowered.endswith(".gate.weight") or ".router." in lowered:
        return False
    return True


@torch.no_grad()
def fp8_round_trip(tensor: torch.Tensor) -> torch.Tensor:
    """Quantize to float8_e4m3fn with an absmax scale (per tensor; per expert for 3-D weights) and back."""
    src = tensor.float()
    reduce_dims = tuple(range(1, src.ndim)) if src.ndim == 3 else tuple(range(src.ndim))
    amax = src.abs().amax(dim=reduce_dims, keepdim=True).clamp(min=1e-12)
    scale = amax / FP8_MAX
    quantized = (src / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (quantized.float() * scale).to(tensor.dtype)


@torch.no_grad()
def int_round_trip(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantisation to ``bits``-bit integers and back.

    One absmax scale per row of the last two dimensions (an output channel of ``[out, in]``, per expert for
    3-D weights): ``q = clamp(round(w / s), -L, L) * s`` with ``L = 2**(bits-1) - 1`` and ``s = absmax / L``,
    so every element moves by at most ``s / 2``. All-zero rows stay zero; non-finite input is an error.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"int_round_trip: bits={bits} must be in 2..8")
    src = tensor.float()
    if not torch.isfinite(src).all():
        raise FloatingPointError("int_round_trip: weight has non-finite values")
    levels = 2 ** (bits - 1) - 1
    scale = src.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
    return ((src / scale).round().clamp(-levels, levels) * scale).to(tensor.dtype)


def round_trip(tensor: torch.Tensor, quantization: str) -> torch.Tensor:
    """The rollout's weight quantisation ``quantization`` (one of :data:`SUPPORTED_QUANTIZATION`) and back."""
    if quantization == "fp8":
        return fp8_round_trip(tensor)
    if quantization in INT_BITS:
        return int_round_trip(tensor, INT_BITS[quantization])
    raise ValueError(
        f"actor_rollout_ref.rollout.quantization={quantization!r} is not supported by the hf_cpu rollout; "
        f"use one of {SUPPORTED_QUANTIZATION}"
    )


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    logprobs: bool = False
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    seed: Optional[int] = None


@dataclass
class GenerationResult:
    token_ids: list[int]
    log_probs: Optional[list[float]]
    routed_experts: Optional[np.ndarray]
    finish_reason: str  # "stop" | "length"
    extra: dict = field(default_factory=dict)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k / nucleus top-p with -inf (vLLM's sampler semantics)."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(dim=-1)
        remove = (cum - probs) > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    return logits


class HFInferenceEngine:
    """Holds one transformers causal LM for inference; generates batches of requests."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str | torch.dtype = "bfloat16",
        quantization: Optional[str] = None,
        logprobs_mode: str = "processed_logprobs",
        record_routes: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: str = "sdpa",
        eos_token_ids: Iterable[int] = (),
        seed: int = 0,
    ):
        from transformers import AutoModelForCausalLM

        if quantization not in SUPPORTED_QUANTIZATION:
            raise ValueError(
                f"actor_rollout_ref.rollout.quantization={quantization!r} is not supported by the hf_cpu rollout; "
                f"use one of {SUPPORTED_QUANTIZATION}"
            )
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"actor_rollout_ref.rollout.logprobs_mode={logprobs_mode!r} is not supported by the hf_cpu "
                f"rollout; use one of {LOGPROBS_MODES}"
            )
        self.dtype = resolve_dtype(dtype)
        self.quantization = quantization
        self.logprobs_mode = logprobs_mode
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=self.dtype, trust_remote_code=trust_remote_code, attn_implementation=attn_implementation
        )
        self.model.eval()
        self.model.requires_grad_(False)
        self.eos_token_ids = set(int(t) for t in eos_token_ids)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if gen_eos is not None:
            self.eos_token_ids |= set([gen_eos] if isinstance(gen_eos, int) else gen_eos)
        self.generator = torch.Generator().manual_seed(seed)
        # The same recorder the training engine replays with (verl_stable.routing), bound to this model.
        self.routing: Optional[RoutingReplay] = None
        if record_routes:
            try:
                self.routing = RoutingReplay(self.model)
            except ValueError as exc:
                raise ValueError(
                    "actor_rollout_ref.rollout.enable_rollout_routing_replay=True but the model "
                    f"({type(self.model).__name__}) has no MoE router to record ({exc}); turn it off for dense models"
                ) from exc
        self.weight_version = 0
        if self.quantization is not None:
            self._quantize_all()

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def _quantize_all(self) -> None:
        # Same granularity as a weight update: one scale per checkpoint tensor (per expert, per projection).
        from verl.workers.engine.fsdp.utils import unfuse_moe_params

        named = [(n, p.detach().clone()) for n, p in self.model.named_parameters()]
        self.load_weights(unfuse_moe_params(named, self.model.config.model_type))
        self.weight_version = 0

    def _resolve_target(self, name: str, params: dict, buffers: dict) -> torch.Tensor:
        """The tensor (or the slice of a packed expert tensor) that checkpoint weight ``name`` maps to.

        verl's FSDP engine sends Transformers-5 packed experts unfused, under per-expert checkpoint keys
        (``...mlp.experts.<e>.gate_proj.weight``; verl/workers/engine/fsdp/utils.py:unfuse_moe_params);
        this is the inverse mapping.
        """
        if name in params:
            return params[name]
        if name in buffers:
            return buffers[name]
        match = _EXPERT_KEY.match(name)
        if match:
            base, expert, proj = match.group(1), int(match.group(2)), match.group(3)
            if proj == "down_proj" and f"{base}.down_proj" in params:
                return params[f"{base}.down_proj"][expert]
            if proj in ("gate_proj", "up_proj") and f"{base}.gate_up_proj" in params:
                packed = params[f"{base}.gate_up_proj"][expert]
                half = packed.shape[0] // 2
                return packed[:half] if proj == "gate_proj" else packed[half:]
        raise KeyError(f"hf_cpu rollout: trainer sent weight {name!r} that the rollout model does not have")

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy trainer weights in (cast to the compute dtype, quantisation round trip if enabled). Returns the count.

        An unknown name or a shape mismatch is an error, not a skip, so a layout mismatch between trainer
        and rollout cannot go unnoticed.
        """
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        count = 0
        for name, tensor in named_tensors:
            target = self._resolve_target(name, params, buffers)
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"hf_cpu rollout: weight {name!r} has shape {tuple(tensor.shape)}, "
                    f"rollout expects {tuple(target.shape)}"
                )
            value = tensor.detach().to(device=target.device, dtype=target.dtype)
            if not torch.isfinite(value).all():
                raise FloatingPointError(f"hf_cpu rollout: trainer sent non-finite values in weight {name!r}")
            if self.quantization is not None and is_fp8_target(name, value):
                value = round_trip(value, self.quantization)
            target.copy_(value)
            count += 1
        self.weight_version += 1
        return count

    # ------------------------------------------------------------------ scoring (tests, diagnostics)
    @torch.no_grad()
    def score(self, input_ids: list[int], temperature: float = 1.0) -> torch.Tensor:
        """log p(token_t | tokens_<t) for t >= 1 under this engine's weights and precision (float32)."""
        ids = torch.tensor([input_ids])
        logits = self.model(input_ids=ids).logits[0, :-1].float()
        if temperature and temperature > 0:
            logits = logits / temperature
        return torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate all requests as one left-padded batch with a shared KV cache."""
        from transformers import DynamicCache

        if not requests:
            return []
        for r in requests:
            if not r.prompt_ids:
                raise ValueError("hf_cpu rollout: empty prompt")
            if r.max_tokens < 1:
                raise ValueError(f"hf_cpu rollout: max_tokens={r.max_tokens} must be >= 1")
        bsz = len(requests)
        lengths = [len(r.prompt_ids) for r in requests]
        max_len = max(lengths)
        pad_id = 0
        input_ids = torch.full((bsz, max_len), pad_id, dtype=torch.long)
        attention = torch.zeros((bsz, max_len), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, max_len - lengths[i] :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, max_len - lengths[i] :] = 1
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)

        temperature = torch.tensor([float(r.temperature) for r in requests])
        greedy = temperature <= 0
        max_new = max(r.max_tokens for r in requests)
        record = self.routing is not None
        seeded = [torch.Generator().manual_seed(int(r.seed)) if r.seed is not None else None for r in requests]

        out_tokens: list[list[int]] = [[] for _ in requests]
        out_logps: list[list[float]] = [[] for _ in requests]
        finished = [False] * bsz
        finish_reason = ["length"] * bsz

        cache = DynamicCache(config=self.model.config)
        ctx = self.routing.record() if record else contextlib.nullcontext()
        with ctx as recording:
            logits = self._forward(input_ids, attention, position_ids, cache)
            cur_pos = position_ids[:, -1]
            for _ in range(max_new):
                raw = logits.float()
                if not torch.isfinite(raw).all():
                    raise FloatingPointError("hf_cpu rollout: model produced non-finite logits")
                next_ids = torch.empty(bsz, dtype=torch.long)
                next_logp = torch.empty(bsz, dtype=torch.float32)
                for i, r in enumerate(requests):
                    if finished[i]:
                        next_ids[i] = pad_id
                        next_logp[i] = 0.0
                        continue
                    row = raw[i]
                    raw_logp = torch.log_softmax(row, dim=-1)
                    if greedy[i]:
                        tok = int(torch.argmax(row))
                        lp = raw_logp[tok]
                    else:
                        processed = _filter_logits(row / float(r.temperature), r.top_k, r.top_p)
                        proc_logp = torch.log_softmax(processed, dim=-1)
                        probs = proc_logp.exp()
                        tok = int(torch.multinomial(probs, 1, generator=seeded[i] or self.generator))
                        lp = proc_logp[tok] if self.logprobs_mode == "processed_logprobs" else raw_logp[tok]
                    next_ids[i] = tok
                    next_logp[i] = lp
                    out_tokens[i].append(tok)
                    out_logps[i].append(float(lp))
                    if not r.ignore_eos and (tok in self.eos_token_ids or tok in r.stop_token_ids):
                        finished[i], finish_reason[i] = True, "stop"
                    elif len(out_tokens[i]) >= r.max_tokens:
                        finished[i] = True
                if all(finished):
                    break
                attention = torch.cat([attention, torch.ones((bsz, 1), dtype=torch.long)], dim=1)
                cur_pos = cur_pos + 1
                logits = self._forward(next_ids[:, None], attention, cur_pos[:, None], cache)
        if record:
            # [bsz, max_len + decode steps, moe_layers, top_k]: the prefill forward, then one per step, in the
            # compact route dtype (uint8 / uint16), which is what travels to the training engine.
            generated = generation_routes(recording.routes, bsz, final_token=False)
            routes = generated.experts.view(bsz, -1, generated.num_layers, generated.top_k)

        results = []
        for i, r in enumerate(requests):
            routed = None
            if record:
                # Like vLLM: one row per token the model was run on, i.e. every prompt token and every
                # response token but the last (sampled, never fed back). verl's agent loop pads that row
                # and its R3 replay mask and MoE metrics skip it.
                n_fed = len(out_tokens[i]) - 1
                routed = routes[i, max_len - lengths[i] : max_len + n_fed].clone().numpy()
                assert routed.shape[0] == lengths[i] + n_fed
            results.append(
                GenerationResult(
                    token_ids=out_tokens[i],
                    log_probs=out_logps[i] if r.logprobs else None,
                    routed_experts=routed,
                    finish_reason=finish_reason[i],
                )
            )
        return results

    def _forward(self, ids, attention, position_ids, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]
