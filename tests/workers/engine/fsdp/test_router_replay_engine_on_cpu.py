"""R2 / R3 routing replay through verl's real FSDP2 engine on CPU (tiny Qwen3-MoE, one gloo process).

Every test drives ``infer_batch`` / ``train_batch`` of the engine that ``EngineRegistry`` hands out, on batches
made by verl's ``left_right_2_no_padding``, so verl's own micro-batching, dynamic-batch re-ordering,
remove-padding packing and gradient checkpointing are what the routes have to survive.
"""

from __future__ import annotations

import pytest
import torch

from tests.workers.engine.fsdp.harness import (
    NUM_LAYERS,
    engine_state_dict,
    hf_reference,
    make_batch,
    make_engine,
    ppo_loss_fn,
    random_routes,
    set_engine_keys,
)

LAYOUTS = [
    pytest.param(True, True, id="rmpad-dynbsz"),
    pytest.param(True, False, id="rmpad-fixedmb"),
    pytest.param(False, True, id="padded-dynbsz"),
    pytest.param(False, False, id="padded-fixedmb"),
]


def _response_logp(td, log_probs):
    from verl.workers.utils.padding import no_padding_2_padding

    return no_padding_2_padding(log_probs, td)


def _nested_to_padded(nested, attention_mask):
    """Nested per-token tensor [B, j, ...] back to the left/right padded [B, S, ...] of attention_mask."""
    out = torch.zeros((*attention_mask.shape, *nested.shape[2:]), dtype=nested.dtype)
    out[attention_mask.bool()] = nested.values()
    return out


@pytest.mark.parametrize("use_remove_padding,use_dynamic_bsz", LAYOUTS)
def test_r2_records_in_old_pass_and_replays_bit_identically(process_group, tiny_moe_path, use_remove_padding,
                                                            use_dynamic_bsz):
    from verl.utils import tensordict_utils as tu

    engine = make_engine(tiny_moe_path, mode="R2", use_remove_padding=use_remove_padding,
                         use_dynamic_bsz=use_dynamic_bsz, gradient_checkpointing=True)
    td, padded = make_batch()
    set_engine_keys(td, engine)
    with engine.eval_mode():
        old = engine.infer_batch(td)["model_output"]
    recorded = old["routed_experts"]
    # One route row per token, in the order of the nested input_ids (dynamic-bsz re-ordering undone).
    assert recorded.is_nested and recorded.dtype == torch.uint8  # compact, as the rollout server sends routes
    assert torch.equal(recorded.offsets(), td["input_ids"].offsets())
    assert tuple(recorded.shape[2:]) == (NUM_LAYERS, 2)
    # ... and they are the experts the same model picks for those tokens (plain transformers, padded layout).
    _, native, _ = hf_reference(tiny_moe_path, padded)
    mask = padded[1].bool()
    assert torch.equal(_nested_to_padded(recorded, padded[1])[mask], native[mask])

    # The update at the same θ (lr 0) replays them in forward AND backward (gradient checkpointing on):
    # the log-probs are bit-identical to the π_old pass and every router agrees with its replayed experts.
    td2, _ = make_batch()
    td2["routed_experts"] = recorded
    td2["old_log_probs"] = _response_logp(td, old["log_probs"]).detach()
    set_engine_keys(td2, engine)
    tu.assign_non_tensor(td2, return_model_output=True)
    with engine.train_mode():
        out = engine.train_batch(td2, ppo_loss_fn())
    assert torch.equal(out["model_output"]["log_probs"].values(), old["log_probs"].values())
    metrics = out["metrics"]
    assert metrics["routing/agreement_mean"] == [1.0]
    assert metrics["routing/tokens_mismatch_any_layer"] == [0.0]
    assert metrics["routing/tokens_without_route"] == [0.0]
    assert all(metrics[f"routing/agreement_layer_{i}"] == [1.0] for i in range(NUM_LAYERS))


def test_r2_later_mini_batches_replay_the_stale_routes_and_report_drift(process_group, tiny_moe_path):
    """After an update the routers would pick differently; R2 keeps replaying the π_old-pass routes, and the
    agreement metric measures exactly that drift."""
    from verl.utils import tensordict_utils as tu

    engine = make_engine(tiny_moe_path, mode="R2", use_remove_padding=True, use_dynamic_bsz=True, lr=0.2)
    td, padded = make_batch(seed=4)
    set_engine_keys(td, engine)
    with engine.eval_mode():
        old = engine.infer_batch(td)["model_output"]

    def update():
        batch, _ = make_batch(seed=4)
        batch["routed_experts"] = old["routed_experts"]
        batch["old_log_probs"] = _response_logp(td, old["log_probs"])
        set_engine_keys(batch, engine)
        tu.assign_non_tensor(batch, return_model_output=True)
        with engine.train_mode():
            return engine.train_batch(batch, ppo_loss_fn())

    update()  # mini-batch 1 moves θ
    theta = engine_state_dict(engine)
    second = update()  # mini-batch 2: forward at the new θ, replaying the π_old routes
    recorded = _nested_to_padded(old["routed_experts"], padded[1])
    ref_logp, _, native_now = hf_reference(tiny_moe_path, padded, routes=recorded, state_dict=theta)
    resp_mask = padded[1][:, 8:].bool()
    got = _response_logp(td, second["model_output"]["log_probs"])
    torch.testing.assert_close(got[resp_mask], ref_logp[resp_mask], rtol=0, atol=2e-5)

    mask = padded[1].bool()
    same = (native_now[mask].sort(-1).values == recorded[mask].long().sort(-1).values).all(-1)
    assert not bool(same.all()), "the update did not move any route; the test would prove nothing"
    metrics = second["metrics"]
    assert metrics["routing/agreement_mean"] == [pytest.approx(same.double().mean().item(), abs=1e-12)]
    assert metrics["routing/tokens_mismatch_any_layer"] == [
        pytest.approx((~same.all(-1)).double().mean().item(), abs=1e-12)
    ]


@pytest.mark.parametrize(
    "use_remove_padding,use_dynamic_bsz,pad_to_length",
    [
        pytest.param(True, True, False, id="rmpad-dynbsz"),
        pytest.param(True, True, True, id="rmpad-dynbsz-pad_to_length"),
        pytest.param(False, True, False, id="padded-dynbsz"),
        pytest.param(False, False, False, id="padded-fixedmb"),
    ],
)
def test_r3_replays_supplied_routes_on_their_tokens(process_group, tiny_moe_path, use_remove_padding,
                                                    use_dynamic_bsz, pad_to_length):
    from verl.workers.engine.utils import prepare_micro_batches

    from verl_stable.routing import codecs, unpack
    from verl_stable.routing.fsdp import padded_mask

    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=use_remove_padding,
                         use_dynamic_bsz=use_dynamic_bsz, pad_to_length=pad_to_length)
    routes = random_routes(6, 16)
    td, padded = make_batch(routes=routes)
    set_engine_keys(td, engine)
    rr = engine.routing_replay
    # Record, around the engine's own replay, the experts every MoE layer actually used (per micro-batch).
    with engine.eval_mode(), rr.record() as rec:
        out = engine.infer_batch(td)

    # 100% agreement with the supplied routes, micro-batch by micro-batch, in verl's own micro-batch order.
    micro_batches, _ = prepare_micro_batches(td)
    assert rec.num_forwards == len(micro_batches)
    for used, mb in zip(rec.routes, micro_batches):
        expected = codecs.from_engine(mb["routed_experts"].values(), rr.spec)
        if not use_remove_padding:
            expected = unpack(expected, padded_mask(mb["input_ids"]))
            used_real = used.experts[expected.valid_mask()]
            assert torch.equal(used_real, expected.experts[expected.valid_mask()])
        else:
            nnz = expected.num_tokens
            assert used.num_tokens >= nnz  # pad_to_length appends pad rows (routed natively)
            assert torch.equal(used.experts[:nnz], expected.experts)

    # The log-probs are those of the same model replaying the same routes on the padded batch: routes
    # stayed on their tokens through packing, re-ordering and micro-batching.
    ref_logp, _, native = hf_reference(tiny_moe_path, padded, routes=routes)
    native_logp, _, _ = hf_reference(tiny_moe_path, padded)
    resp_mask = padded[1][:, 8:].bool()
    got = _response_logp(td, out["model_output"]["log_probs"])
    torch.testing.assert_close(got[resp_mask], ref_logp[resp_mask], rtol=0, atol=2e-5)
    # ... and replay mattered: random routes are far from the native ones.
    assert (got[resp_mask] - native_logp[resp_mask]).abs().max() > 1e-2

    # The reported agreement is the train-vs-supplied route agreement over real tokens, exactly.
    mask = padded[1].bool()
    same = (native[mask].sort(-1).values == routes[mask].long().sort(-1).values).all(-1)  # [T, L]
    metrics = out["metrics"]
    for i in range(NUM_LAYERS):
        expected = same[:, i].double().mean().item()
        assert metrics[f"routing/old_pass/agreement_layer_{i}"] == [pytest.approx(expected, abs=1e-12)]
    assert metrics["routing/old_pass/tokens_mismatch_any_layer"] == [
        pytest.approx((~same.all(-1)).double().mean().item(), abs=1e-12)
    ]
    assert metrics["routing/old_pass/agreement_mean"][0] < 0.5


def test_r3_tokens_the_rollout_never_routed_are_routed_natively(process_group, tiny_moe_path):
    """vLLM never feeds the last sampled token through the model, and verl's agent loop fills its route with
    zeros: such rows are not replayed (the router picks), and they are counted, not hidden."""
    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    routes = random_routes(6, 16, seed=7)
    _, padded = make_batch()
    attention_mask = padded[1]
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)  # last real token of each row
    routes[torch.arange(6), last] = 0
    td, padded = make_batch(routes=routes)
    set_engine_keys(td, engine)
    with engine.eval_mode():
        out = engine.infer_batch(td)
    metrics = out["metrics"]
    n_real = int(attention_mask.sum())
    assert metrics["routing/old_pass/tokens_without_route"] == [pytest.approx(6 / n_real, abs=1e-12)]
    # Same log-probs as the plain model replaying the same routes with those rows routed natively.
    ref_logp, _, _ = hf_reference(tiny_moe_path, padded, routes=routes)
    resp_mask = attention_mask[:, 8:].bool()
    got = _response_logp(td, out["model_output"]["log_probs"])
    torch.testing.assert_close(got[resp_mask], ref_logp[resp_mask], rtol=0, atol=2e-5)


def test_r3_old_pass_metrics_reach_the_next_update(process_group, tiny_moe_path):
    """verl's trainers log the update's metrics, not the π_old pass's: the engine hands the π_old-pass
    agreement (R3: the train-inference mismatch) to the next update, once."""
    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    routes = random_routes(6, 16, seed=3)
    td, _ = make_batch(routes=routes)
    set_engine_keys(td, engine)
    with engine.eval_mode():
        old = engine.infer_batch(td)
    td2, _ = make_batch(routes=routes)
    td2["old_log_probs"] = _response_logp(td, old["model_output"]["log_probs"])
    set_engine_keys(td2, engine)
    with engine.train_mode():
        first = engine.train_batch(td2, ppo_loss_fn())["metrics"]
        second = engine.train_batch(td2, ppo_loss_fn())["metrics"]
    assert first["routing/old_pass/agreement_mean"] == old["metrics"]["routing/old_pass/agreement_mean"]
    # At the same θ the update's own agreement equals the π_old pass's.
    assert first["routing/agreement_mean"] == old["metrics"]["routing/old_pass/agreement_mean"]
    assert "routing/old_pass/agreement_mean" not in second


@pytest.mark.parametrize("use_remove_padding", [True, False], ids=["rmpad", "padded"])
def test_gradient_checkpoint_recompute_replays_the_same_experts(process_group, tiny_moe_path, use_remove_padding):
    """One R3 update with random routes: with gradient checkpointing the backward recomputes every layer;
    the parameters after the step equal those without checkpointing only if the recompute replayed too."""

    def step(gc: bool, mode: str):
        engine = make_engine(tiny_moe_path, mode=mode, use_remove_padding=use_remove_padding, use_dynamic_bsz=True,
                             gradient_checkpointing=gc, lr=0.05)
        routes = random_routes(6, 16, seed=5)
        td, _ = make_batch(routes=routes, seed=2)
        td["old_log_probs"] = torch.full(td["advantages"].shape, -4.0)
        set_engine_keys(td, engine)
        with engine.train_mode():
            engine.train_batch(td, ppo_loss_fn())
        return {k: v.detach().full_tensor().clone() if hasattr(v, "full_tensor") else v.detach().clone()
                for k, v in engine.module.state_dict().items()}

    with_gc, without_gc, native = step(True, "R3"), step(False, "R3"), step(True, "disabled")
    for k in with_gc:
        torch.testing.assert_close(with_gc[k], without_gc[k], rtol=0, atol=1e-6, msg=k)
    # Sanity: replay changed the update (else the comparison above would prove nothing).
    assert max((with_gc[k] - native[k]).abs().max().item() for k in with_gc) > 1e-4


def test_missing_routes_are_clear_errors(process_group, tiny_moe_path):
    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    td, _ = make_batch()
    set_engine_keys(td, engine)
    with engine.eval_mode(), pytest.raises(ValueError, match="enable_rollout_routing_replay"):
        engine.infer_batch(td)

    engine2 = make_engine(tiny_moe_path, mode="R2", use_remove_padding=True, use_dynamic_bsz=True)
    td, _ = make_batch()
    td["old_log_probs"] = torch.zeros(td["advantages"].shape)
    set_engine_keys(td, engine2)
    with engine2.train_mode(), pytest.raises(ValueError, match="compute_log_prob"):
        engine2.train_batch(td, ppo_loss_fn())

    # Routes of another model (3 layers for a 2-layer model) name the mismatch.
    bad = torch.zeros(6, 16, 3, 2, dtype=torch.int16)
    bad[..., 1] = 1
    td, _ = make_batch(routes=bad)
    set_engine_keys(td, engine)
    with engine.eval_mode(), pytest.raises(ValueError, match="layers"):
        engine.infer_batch(td)
    # After an error no replay context is left open on the model.
    assert not engine.routing_replay.active


def test_disabled_mode_is_the_stock_engine(process_group, tiny_moe_path):
    """mode=disabled: same class from the registry, same outputs as verl's engine, no routes touched."""
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    engine = make_engine(tiny_moe_path, mode="disabled", use_remove_padding=True, use_dynamic_bsz=True)
    assert isinstance(engine, FSDPEngineWithLMHead)
    routes = random_routes(6, 16)
    td, padded = make_batch(routes=routes)  # routes present but not asked for: ignored
    set_engine_keys(td, engine)
    with engine.eval_mode():
        out = engine.infer_batch(td)
    assert "routed_experts" not in out["model_output"] and not out["metrics"]
    native_logp, _, _ = hf_reference(tiny_moe_path, padded)
    resp_mask = padded[1][:, 8:].bool()
    torch.testing.assert_close(_response_logp(td, out["model_output"]["log_probs"])[resp_mask],
                               native_logp[resp_mask], rtol=0, atol=2e-5)
    assert engine._rr_binding is None


def test_lora_ref_in_actor_pass_is_not_replayed(process_group, tiny_moe_path):
    """With LoRA, verl computes the reference log-probs on the actor engine inside ``disable_adapter()``: that
    is the reference model, so the mixin suspends replay there (and replays again after)."""
    engine = make_engine(tiny_moe_path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True, lora_rank=4)
    routes = random_routes(6, 16)
    td, padded = make_batch(routes=routes)
    set_engine_keys(td, engine)
    with engine.eval_mode():
        with engine.disable_adapter():
            ref = engine.infer_batch(td)
        actor = engine.infer_batch(td)
    resp_mask = padded[1][:, 8:].bool()
    # LoRA B is zero-initialised: the adapter changes nothing, so the only difference is replay.
    native_logp, _, _ = hf_reference(tiny_moe_path, padded)
    replay_logp, _, _ = hf_reference(tiny_moe_path, padded, routes=routes)
    torch.testing.assert_close(_response_logp(td, ref["model_output"]["log_probs"])[resp_mask],
                               native_logp[resp_mask], rtol=0, atol=2e-5)
    assert not ref["metrics"]
    torch.testing.assert_close(_response_logp(td, actor["model_output"]["log_probs"])[resp_mask],
                               replay_logp[resp_mask], rtol=0, atol=2e-5)
    assert "routing/old_pass/agreement_mean" in actor["metrics"]


def test_r3_deepseek_v3_with_a_dense_first_layer(process_group, tmp_path):
    """DeepSeek-V3 routes through ``route_tokens_to_experts`` (sigmoid scores, group limit, correction bias)
    and its first layer is dense. Rollout routes indexed by all 3 decoder layers (as vLLM returns them) are
    narrowed to the 2 MoE layers and replayed on their tokens."""
    from tests.utils.routing_replay.helpers.models import save_tiny_deepseek_v3

    path = save_tiny_deepseek_v3(str(tmp_path / "tiny_dsv3"))
    engine = make_engine(path, mode="R3", use_remove_padding=True, use_dynamic_bsz=True)
    routes = random_routes(6, 16, seed=11, num_layers=3)  # layer 0 is dense: its entries are ignored
    td, padded = make_batch(routes=routes)
    set_engine_keys(td, engine)
    with engine.eval_mode():
        out = engine.infer_batch(td)
    ref_logp, _, native = hf_reference(path, padded, routes=routes[:, :, 1:])
    native_logp, _, _ = hf_reference(path, padded)
    resp_mask = padded[1][:, 8:].bool()
    got = _response_logp(td, out["model_output"]["log_probs"])
    torch.testing.assert_close(got[resp_mask], ref_logp[resp_mask], rtol=0, atol=2e-5)
    assert (got[resp_mask] - native_logp[resp_mask]).abs().max() > 1e-2
    mask = padded[1].bool()
    same = (native[mask].sort(-1).values == routes[:, :, 1:][mask].long().sort(-1).values).all(-1)
    expected = same.double().mean().item()
    assert out["metrics"]["routing/old_pass/agreement_mean"] == [pytest.approx(expected, abs=1e-12)]


def test_training_worker_r2_mini_batches_and_metrics(process_group, tiny_moe_path):
    """verl's TrainingWorker (in this process, the class Ray would host): infer_batch records, then
    train_mini_batch splits the batch into shuffled mini-batches, each replaying its own sequences' routes,
    and the route metrics come out of verl's worker-level aggregation."""
    from verl.trainer.config import CheckpointConfig
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import (
        EngineRouterReplayConfig,
        FSDPEngineConfig,
        FSDPOptimizerConfig,
        HFModelConfig,
        TrainingWorkerConfig,
    )
    from verl.workers.engine_workers import TrainingWorker

    from verl_stable.routing.fsdp import RoutingReplayEngineMixin

    config = TrainingWorkerConfig(
        model_type="language_model",
        model_config=HFModelConfig(path=tiny_moe_path, load_tokenizer=False, use_remove_padding=True,
                                   override_config={"attn_implementation": "sdpa"}),
        engine_config=FSDPEngineConfig(
            strategy="fsdp2", fsdp_size=1, use_dynamic_bsz=True, max_token_len_per_gpu=40,
            infer_max_token_len_per_gpu=40, use_torch_compile=False,
            mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
            router_replay=EngineRouterReplayConfig(mode="R2"),
        ),
        optimizer_config=FSDPOptimizerConfig(lr=0.0, weight_decay=0.0, lr_warmup_steps_ratio=0.0),
        checkpoint_config=CheckpointConfig(),
    )
    worker = TrainingWorker(config)
    assert isinstance(worker.engine, RoutingReplayEngineMixin)
    worker.reset()
    worker.set_loss_fn(ppo_loss_fn())

    td, _ = make_batch()
    tu.assign_non_tensor(td, compute_loss=False)
    old = worker.infer_batch(td)
    assert torch.equal(old["routed_experts"].offsets(), td["input_ids"].offsets())

    td2, _ = make_batch()
    td2["routed_experts"] = old["routed_experts"]
    td2["old_log_probs"] = _response_logp(td, old["log_probs"])
    tu.assign_non_tensor(td2, mini_batch_size=2, global_batch_size=2, epochs=1, seed=3,
                         dataloader_kwargs={"shuffle": True})
    metrics = tu.get(worker.train_mini_batch(td2), "metrics")
    # Three mini-batches of 2 sequences, each replaying its own (shuffled) sequences' routes at θ_old.
    assert metrics["routing/agreement_mean"] == [1.0, 1.0, 1.0]
    assert metrics["routing/tokens_mismatch_any_layer"] == [0.0, 0.0, 0.0]
