"""The hf_cpu inference engine on its own: sampling, log-probs, routes, precision, weight updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_stable.cpu.hf_engine import (
    INT_BITS,
    SUPPORTED_QUANTIZATION,
    GenerationRequest,
    HFInferenceEngine,
    fp8_round_trip,
    int_round_trip,
    is_fp8_target,
)

from tests.utils.routing_replay.helpers import addition_prompt, response_logprobs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_logprobs_match_a_transformers_forward_in_the_same_precision(tiny_assets, dtype, tol):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    engine = HFInferenceEngine(tiny_assets["model"], dtype=dtype, eos_token_ids=[tokenizer.eos_token_id], seed=1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=dtype, attn_implementation="sdpa")
    # Prompts of different lengths: the batch is left-padded, which must not change any log-prob.
    prompts = [addition_prompt(tokenizer, a, b) for a, b in [(1, 2), (3, 4), (9, 9)]]
    prompts[1] = prompts[1][1:]
    requests = [
        GenerationRequest(prompt_ids=p, max_tokens=6, temperature=0.7, logprobs=True, ignore_eos=True) for p in prompts
    ]
    results = engine.generate(requests)
    for prompt, res in zip(prompts, results, strict=True):
        assert len(res.token_ids) == 6 and res.finish_reason == "length"
        ref = response_logprobs(reference, prompt, res.token_ids, temperature=0.7)
        got = torch.tensor(res.log_probs)
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max().item() < tol


def test_greedy_is_deterministic_and_stops_at_eos(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    eos = tokenizer.eos_token_id
    engine = HFInferenceEngine(tiny_assets["model"], dtype="float32", eos_token_ids=[eos])
    prompt = addition_prompt(tokenizer, 2, 2)
    first = engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=8, temperature=0.0)])[0]
    second = engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=8, temperature=0.0)])[0]
    assert first.token_ids == second.token_ids
    # Force a stop: make the greedy token EOS by declaring the first greedy token a stop token.
    stop = engine.generate(
        [GenerationRequest(prompt_ids=prompt, max_tokens=8, temperature=0.0, stop_token_ids=(first.token_ids[0],))]
    )[0]
    assert stop.token_ids == first.token_ids[:1] and stop.finish_reason == "stop"
    assert first.log_probs is None  # only when asked, as vLLM


def test_routed_experts_cover_every_token_the_model_ran_on(tiny_assets):
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    engine = HFInferenceEngine(tiny_assets["model"], dtype="float32", record_routes=True)
    cfg = engine.model.config
    prompts = [addition_prompt(tokenizer, 5, 6), addition_prompt(tokenizer, 7, 1)[2:]]
    results = engine.generate(
        [GenerationRequest(prompt_ids=p, max_tokens=5, logprobs=True, ignore_eos=True) for p in prompts]
    )
    for prompt, res in zip(prompts, results, strict=True):
        routes = res.routed_experts
        assert isinstance(routes, np.ndarray)
        # vLLM's layout: every token the model ran on, i.e. all but the last sampled one.
        assert routes.shape == (len(prompt) + len(res.token_ids) - 1, cfg.num_hidden_layers, cfg.num_experts_per_tok)
        assert routes.dtype == np.uint8  # compact: one byte per id up to 256 experts (routing.compact_dtype)
        assert routes.min() >= 0 and routes.max() < cfg.num_experts
        # The routes are the ones a plain transformers forward over the same tokens selects.
        ids = torch.tensor([prompt + res.token_ids[:-1]])
        expected = []
        hooks = [
            m.register_forward_hook(lambda mod, args, out, acc=expected: acc.append(out[-1]))
            for m in engine.model.modules()
            if type(m).__name__.endswith("TopKRouter")
        ]
        with torch.no_grad():
            engine.model(input_ids=ids)
        for h in hooks:
            h.remove()
        want = torch.stack(expected, dim=1).numpy()  # (tokens, layers, top_k)
        assert np.array_equal(np.sort(routes, -1), np.sort(want, -1))


def test_routing_replay_on_a_dense_model_is_a_clear_error(tmp_path):
    from transformers import Qwen3Config

    from verl_stable.tasks.addition import build_tokenizer

    tok = build_tokenizer()
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="enable_rollout_routing_replay"):
        HFInferenceEngine(str(tmp_path), dtype="float32", record_routes=True)


def test_weight_update_takes_effect_including_packed_experts(tiny_assets):
    from verl.workers.engine.fsdp.utils import unfuse_moe_params

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    engine = HFInferenceEngine(tiny_assets["model"], dtype="float32")
    prompt = addition_prompt(tokenizer, 4, 4)
    before = engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=3, temperature=0.0, logprobs=True)])[0]

    # What verl's FSDP engine sends: every weight, experts unfused to per-expert checkpoint keys.
    trained = AutoModelForCausalLM.from_pretrained(tiny_assets["model"], dtype=torch.float32)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sent = list(unfuse_moe_params(trained.state_dict().items(), trained.config.model_type))
    assert any(".experts.0.gate_proj.weight" in n for n, _ in sent)
    assert engine.load_weights(sent) == len(sent)
    assert engine.weight_version == 1
    for name, param in trained.named_parameters():
        assert torch.equal(dict(engine.model.named_parameters())[name], param), name

    after = engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=3, temperature=0.0, logprobs=True)])[0]
    ref = response_logprobs(trained, prompt, after.token_ids)
    assert (torch.tensor(after.log_probs) - ref).abs().max() < 1e-4
    assert before.log_probs != after.log_probs


def test_weight_update_rejects_unknown_names_shapes_and_nonfinite_values(tiny_assets):
    engine = HFInferenceEngine(tiny_assets["model"], dtype="float32")
    name, param = next(iter(engine.model.named_parameters()))
    with pytest.raises(KeyError, match="does not have"):
        engine.load_weights([("model.no_such.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape"):
        engine.load_weights([(name, torch.zeros(param.shape[0] + 1))])
    bad = torch.zeros_like(param)
    bad.view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        engine.load_weights([(name, bad)])


def test_fp8_rollout_widens_the_gap_to_the_full_precision_policy(tiny_assets):
    """The point of FP8 rollouts: mu_old != pi_old by clearly more than bf16 rounding alone.

    Measured as KL(pi_fp32 || mu) over the whole vocabulary at every position of sampled sequences.
    """
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    ref = HFInferenceEngine(tiny_assets["model"], dtype="float32", seed=3)
    prompts = [addition_prompt(tokenizer, a, (3 * a + 1) % 10) for a in range(10)]
    samples = ref.generate([GenerationRequest(prompt_ids=p, max_tokens=4) for p in prompts])
    seqs = [torch.tensor([p + s.token_ids]) for p, s in zip(prompts, samples, strict=True)]

    def logp(engine, ids):
        with torch.no_grad():
            return torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)

    def kl(engine):
        per_seq = []
        for ids in seqs:
            lp, lq = logp(ref, ids), logp(engine, ids)
            per_seq.append((lp.exp() * (lp - lq)).sum(-1).mean())
        return torch.stack(per_seq).mean().item()

    bf16 = kl(HFInferenceEngine(tiny_assets["model"], dtype="bfloat16"))
    fp8 = kl(HFInferenceEngine(tiny_assets["model"], dtype="bfloat16", quantization="fp8"))
    assert 0 < bf16 < fp8
    assert fp8 > 2 * bf16
    assert fp8 < 1e-2  # a precision gap, not a different model


def test_fp8_round_trip_quantizes_matmul_weights_only():
    w = torch.randn(16, 16)
    q = fp8_round_trip(w)
    assert q.dtype == w.dtype and not torch.equal(q, w)
    assert ((q - w).abs() <= w.abs().amax() / 448 * 16).all()  # within e4m3 resolution of the scale
    assert torch.equal(fp8_round_trip(q), q)  # idempotent: already on the FP8 grid
    assert is_fp8_target("model.layers.0.self_attn.q_proj.weight", w)
    assert is_fp8_target("model.layers.0.mlp.experts.3.down_proj.weight", w)
    assert not is_fp8_target("model.layers.0.mlp.gate.weight", w)
    assert not is_fp8_target("model.embed_tokens.weight", w)
    assert not is_fp8_target("lm_head.weight", w)
    assert not is_fp8_target("model.norm.weight", torch.ones(16))


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_int_round_trip_is_per_channel_and_within_half_a_step(bits):
    torch.manual_seed(bits)
    # rows of very different magnitude: a per-tensor scale would flatten the small rows to zero
    w = torch.randn(8, 32) * torch.logspace(-3, 1, 8)[:, None]
    q = int_round_trip(w, bits)
    levels = 2 ** (bits - 1) - 1
    step = w.abs().amax(dim=1, keepdim=True) / levels
    assert q.dtype == w.dtype and q.shape == w.shape
    assert ((q - w).abs() <= step / 2 + 1e-7 * step).all()  # round to nearest: at most half a step
    grid = q / step
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # on the integer grid of its own row
    assert grid.abs().max() <= levels + 1e-4 and len(torch.unique(grid.round())) <= 2 * levels + 1
    assert torch.allclose(q.abs().amax(dim=1), w.abs().amax(dim=1))  # the absmax is representable
    assert torch.allclose(int_round_trip(q, bits), q, atol=1e-6 * step.max())  # idempotent
    assert not (q[0] == 0).all()  # the smallest row keeps its own resolution
    # 3-D (packed experts): one scale per expert and row
    packed = torch.stack([w, 100 * w])
    assert torch.allclose(int_round_trip(packed, bits)[1], 100 * q, rtol=1e-5, atol=1e-6)
    assert torch.equal(int_round_trip(torch.zeros(2, 4), bits), torch.zeros(2, 4))


def test_fewer_bits_quantise_more_coarsely():
    w = torch.randn(64, 64)
    errors = [(int_round_trip(w, INT_BITS[name]) - w).pow(2).mean().item() for name in ("int8", "int4", "int3")]
    fp8 = (fp8_round_trip(w) - w).pow(2).mean().item()
    assert errors[0] < fp8 < errors[1] < errors[2]  # per-channel int8 is finer than per-tensor e4m3
    with pytest.raises(FloatingPointError):
        int_round_trip(torch.tensor([[1.0, float("nan")]]), 8)
    with pytest.raises(ValueError, match="bits"):
        int_round_trip(w, 1)


def test_int_quantised_rollout_changes_matmul_weights_only(tiny_assets):
    full = HFInferenceEngine(tiny_assets["model"], dtype="float32")
    int4 = HFInferenceEngine(tiny_assets["model"], dtype="float32", quantization="int4")
    before, after = dict(full.model.named_parameters()), dict(int4.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any("q_proj" in n for n in changed) and any("experts" in n for n in changed)
    assert not any("embed" in n or "lm_head" in n or "norm" in n or n.endswith("mlp.gate.weight") for n in changed)
    q = after["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q, int_round_trip(before["model.layers.0.self_attn.q_proj.weight"], 4))
    # a weight update is quantised the same way
    update = [("model.layers.0.self_attn.q_proj.weight", torch.randn_like(q))]
    int4.load_weights(update)
    assert torch.equal(after["model.layers.0.self_attn.q_proj.weight"], int_round_trip(update[0][1], 4))


def test_bad_settings_name_the_config_key(tiny_assets):
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.dtype"):
        HFInferenceEngine(tiny_assets["model"], dtype="int8")
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.quantization"):
        HFInferenceEngine(tiny_assets["model"], quantization="awq")
    assert {"fp8", "int8", "int4", "int3"} <= set(SUPPORTED_QUANTIZATION)
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.logprobs_mode"):
        HFInferenceEngine(tiny_assets["model"], logprobs_mode="processed_logits")


def test_top_k_and_top_p_restrict_sampling_like_vllm(tiny_assets):
    from verl_stable.cpu.hf_engine import _filter_logits

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    assert torch.isinf(_filter_logits(logits, top_k=2, top_p=1.0)[2:]).all()
    kept = torch.isfinite(_filter_logits(logits, top_k=-1, top_p=0.7))  # probs 0.61, 0.22, 0.14, 0.03
    assert kept.tolist() == [True, True, False, False]  # smallest prefix reaching 0.7
    assert torch.isfinite(_filter_logits(logits, top_k=0, top_p=1.0)).all()  # 0 / -1 disable, as vLLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    engine = HFInferenceEngine(tiny_assets["model"], dtype="float32", seed=5)
    prompt = addition_prompt(tokenizer, 8, 1)
    greedy = engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=4, temperature=0.0, ignore_eos=True)])[0]
    top1 = engine.generate(
        [GenerationRequest(prompt_ids=prompt, max_tokens=4, temperature=1.0, top_k=1, logprobs=True, ignore_eos=True)]
    )[0]
    assert top1.token_ids == greedy.token_ids
    # processed log-probs of a top-1 distribution: every sampled token had probability 1
    assert all(abs(lp) < 1e-6 for lp in top1.log_probs)
