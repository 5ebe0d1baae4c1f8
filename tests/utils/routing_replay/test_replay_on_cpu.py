"""RoutingReplay semantics: the R2 and R3 invariants, gradient-checkpoint recompute, several forwards per
context, packed input, routes without a recorded row, isolation from other models, and misuse errors."""

from __future__ import annotations

import copy

import pytest
import torch
from verl_stable.routing import Routes, RoutingReplay, concat, pack, route_agreement

from tests.utils.routing_replay.helpers import VOCAB, ExpertTap, random_routes_idx, tiny_model, token_logprobs


def _assert_agreement_is_offline(agree, native: Routes, replayed: Routes) -> None:
    """What a replay context measured equals comparing the routers' own routes with the replayed ones offline."""
    offline = route_agreement(native, replayed)
    for key in ("agreement", "expert_overlap", "tokens_mismatch_any_layer"):
        torch.testing.assert_close(getattr(agree, key), getattr(offline, key), rtol=0, atol=1e-6)


def _routes_of(model, rr, input_ids, **kw):
    with rr.record() as rec, torch.no_grad():
        model(input_ids=input_ids, use_cache=False, **kw)
    return rec.routes[0]


# ------------------------------------------------------------------ R2
def test_r2_same_theta_bit_identical_then_restores_drifted_routes():
    torch.manual_seed(0)
    model = tiny_model("qwen3_moe").train()
    rr = RoutingReplay(model)
    x = torch.randint(0, VOCAB, (4, 16))

    # pi_old pass records; the first mini-batch at the same theta replays -> bit-identical log-probs
    with rr.record() as rec, torch.no_grad():
        logp_old = token_logprobs(model, x)
    routes = rec.routes[0]
    with rr.replay(routes):
        logp_replay = token_logprobs(model, x)
        logp_replay.mean().backward()
    assert torch.equal(logp_old, logp_replay)

    # a big step moves the routers: without replay, some tokens would pick other experts now
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    opt.step()
    opt.zero_grad()
    drifted = _routes_of(model, rr, x)
    assert route_agreement(drifted, routes).agreement.min() < 1.0

    # with replay, forward and backward use exactly the recorded experts, and the routers still learn
    with ExpertTap(model, rr) as tap, rr.replay(routes, track_agreement=True) as state:
        token_logprobs(model, x).mean().backward()
    for layer, calls in enumerate(tap.calls):
        assert all(torch.equal(c, routes.layer(layer)) for c in calls)
    assert (state.agreement().agreement < 1.0).any()  # the drift the replay undid, measured per layer
    for site in rr.sites:
        assert site.module.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ R3
def test_r3_training_uses_rollout_routes_exactly():
    train = tiny_model("deepseek_v3", seed=5)
    rollout = copy.deepcopy(train).to(torch.bfloat16)  # the "inference engine": same weights, other numerics
    x = torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(2))
    rollout_routes = _routes_of(rollout, RoutingReplay(rollout), x)

    rr = RoutingReplay(train)
    native = _routes_of(train, rr, x)
    mismatch = route_agreement(native, rollout_routes).tokens_mismatch_any_layer
    assert mismatch > 0  # the train-inference route mismatch R3 removes

    with ExpertTap(train, rr) as tap, rr.replay(rollout_routes, track_agreement=True) as state, rr.record() as used:
        token_logprobs(train, x).sum().backward()
    assert used.routes[0].equal(rollout_routes)
    for layer, calls in enumerate(tap.calls):
        assert torch.equal(calls[0], rollout_routes.layer(layer))
    # the helper reports the same mismatch as comparing routes offline
    agree = state.agreement()
    _assert_agreement_is_offline(agree, native, rollout_routes)
    assert agree.without_route == 0


# ------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("family,reentrant", [("qwen3_moe", False), ("deepseek_v3", False), ("mixtral", True)])
def test_checkpoint_recompute_replays_same_indices(family, reentrant):
    x = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))

    def grads(checkpointing):
        model = tiny_model(family).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        rr = RoutingReplay(model)
        spec = rr.spec
        idx = random_routes_idx(x.numel(), spec.num_layers, spec.num_experts, spec.top_k, torch.Generator().manual_seed(9))
        routes = Routes.from_indices(idx, spec.num_experts)
        with ExpertTap(model, rr) as tap, rr.replay(routes):
            token_logprobs(model, x).sum().backward()
        for layer, calls in enumerate(tap.calls):
            assert len(calls) == (2 if checkpointing else 1)  # forward + recompute in backward
            assert all(torch.equal(c, routes.layer(layer)) for c in calls)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_record_under_checkpointing_counts_one_forward_and_recompute_matches():
    model = tiny_model("mixtral").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rr = RoutingReplay(model)
    x = torch.randint(0, VOCAB, (2, 8))
    with ExpertTap(model, rr) as tap, rr.record() as rec:
        token_logprobs(model, x).sum().backward()
    assert rec.num_forwards == 1
    for layer, calls in enumerate(tap.calls):
        assert len(calls) == 2 and torch.equal(calls[1], rec.routes[0].layer(layer))


# ------------------------------------------------------------------ several forwards
def test_queue_one_routes_per_forward_and_count_checks():
    model = tiny_model("qwen2_moe")
    rr = RoutingReplay(model)
    spec = rr.spec
    xs = [torch.randint(0, VOCAB, (2, n)) for n in (5, 7)]
    routes = [Routes.from_indices(random_routes_idx(x.numel(), spec.num_layers, 8, spec.top_k), 8) for x in xs]
    with ExpertTap(model, rr) as tap, rr.replay(routes, track_agreement=True) as state:
        for x in xs:
            token_logprobs(model, x)
    for layer, calls in enumerate(tap.calls):
        assert [torch.equal(c, r.layer(layer)) for c, r in zip(calls, routes)] == [True, True]
    # agreement pools both forwards: equal to comparing the concatenated routes offline
    _assert_agreement_is_offline(state.agreement(), concat([_routes_of(model, rr, x) for x in xs]), concat(routes))

    with pytest.raises(ValueError, match="2 Routes .* ran 1 forwards"):
        with rr.replay(routes):
            token_logprobs(model, xs[0])
    with pytest.raises(ValueError, match="forward #3"):
        with rr.replay(routes):
            for x in [*xs, xs[0]]:
                token_logprobs(model, x)
    assert not rr.active


def test_push_one_routes_per_micro_batch_in_one_context():
    """A training loop's protocol: one replay context per batch, each micro-batch pushes its Routes before its
    forward; its backward (with checkpoint recompute) replays them; agreement covers the whole batch."""
    model = tiny_model("qwen3_moe").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rr = RoutingReplay(model)
    spec = rr.spec
    xs = [torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(n)) for n in (5, 7, 3)]
    routes = [Routes.from_indices(random_routes_idx(x.numel(), spec.num_layers, 8, spec.top_k), 8) for x in xs]
    with ExpertTap(model, rr) as tap, rr.replay(track_agreement=True) as state:
        for x, r in zip(xs, routes):
            state.push(r)
            token_logprobs(model, x).sum().backward()
    for layer, calls in enumerate(tap.calls):
        expected = [r.layer(layer) for r in routes for _ in range(2)]  # forward + recompute, per micro-batch
        assert len(calls) == len(expected) and all(torch.equal(c, e) for c, e in zip(calls, expected))
    _assert_agreement_is_offline(state.agreement(), concat([_routes_of(model, rr, x) for x in xs]), concat(routes))

    with pytest.raises(ValueError, match="1 Routes .* forward #2"):
        with rr.replay() as state:
            state.push(routes[0])
            token_logprobs(model, xs[0])
            token_logprobs(model, xs[1])
    with pytest.raises(RuntimeError, match="push"):
        with rr.replay(routes[0]) as state:
            state.push(routes[1])
    assert not rr.active


def test_record_native_is_each_routers_own_choice():
    """``record(native=True)``: without replay the routers' own top-k is what they used; under replay it is
    what each would have picked given the replayed earlier layers (not the replayed ids)."""
    model = tiny_model("deepseek_v3")
    rr = RoutingReplay(model)
    spec = rr.spec
    x = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    with rr.record(native=True) as rec, torch.no_grad():
        model(input_ids=x)
    assert rec.native[0].equal(rec.routes[0])
    forced = Routes.from_indices(random_routes_idx(x.numel(), spec.num_layers, 8, spec.top_k), 8)
    with rr.replay(forced), rr.record(native=True) as rec, torch.no_grad():
        model(input_ids=x)
    assert rec.routes[0].equal(forced)
    # layer 0 sees the same input with or without replay: its own choice is the unreplayed route
    assert torch.equal(rec.native[0].layer(0), _routes_of(model, rr, x).layer(0))
    assert route_agreement(rec.native[0], forced).tokens_mismatch_any_layer > 0
    with rr.record() as plain, torch.no_grad():
        model(input_ids=x)
    with pytest.raises(RuntimeError, match="native=True"):
        _ = plain.native


def test_record_collects_one_routes_per_forward_in_router_token_order():
    model = tiny_model("olmoe")
    rr = RoutingReplay(model)
    a, b = torch.randint(0, VOCAB, (2, 5)), torch.randint(0, VOCAB, (3, 4))
    with rr.record() as rec, torch.no_grad():
        model(input_ids=a)
        model(input_ids=b)
    ra, rb = rec.routes
    assert (ra.num_tokens, rb.num_tokens) == (10, 12)
    # row b*S + s belongs to token [b, s]: recording sequence 1 alone reproduces rows 5..9
    alone = _routes_of(model, rr, a[1:])
    assert alone.equal(ra.narrow(5, 5))


# ------------------------------------------------------------------ packed input and missing rows
def test_packed_rmpad_input_takes_packed_routes():
    model = tiny_model("qwen3_moe")
    rr = RoutingReplay(model)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[2, 7:] = 0  # right padding
    ids = torch.randint(0, VOCAB, (3, 9))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = _routes_of(model, rr, ids, attention_mask=mask, position_ids=pos)
    assert padded.num_tokens == 27
    keep = mask.flatten().bool()
    ids_p, pos_p = ids.flatten()[keep][None], pos.flatten()[keep][None]
    packed = _routes_of(model, rr, ids_p, position_ids=pos_p)
    assert packed.num_tokens == int(mask.sum())
    assert pack(padded, mask).equal(packed)  # same tokens, same experts, verl's unpad order
    with ExpertTap(model, rr) as tap, rr.replay(pack(padded, mask)), torch.no_grad():
        model(input_ids=ids_p, position_ids=pos_p, use_cache=False)
    assert torch.equal(tap.calls[0][0], packed.layer(0))


def test_rows_without_route_are_routed_natively():
    model = tiny_model("gpt_oss")
    rr = RoutingReplay(model)
    spec = rr.spec
    x = torch.randint(0, VOCAB, (2, 6))
    native = _routes_of(model, rr, x)
    valid = torch.arange(12) % 3 != 0
    forced = Routes.from_indices(random_routes_idx(12, spec.num_layers, 8, spec.top_k), 8, valid)
    with ExpertTap(model, rr) as tap, rr.replay(forced, track_agreement=True) as state, torch.no_grad():
        model(input_ids=x)
    agree = state.agreement()
    assert agree.tokens.tolist() == [float(valid.sum())] * spec.num_layers  # only replayed rows count
    assert agree.without_route == float((~valid).sum())
    for layer, calls in enumerate(tap.calls):
        assert torch.equal(calls[0][valid], forced.layer(layer)[valid])
        assert torch.equal(calls[0][~valid], native.layer(layer)[~valid])


# ------------------------------------------------------------------ isolation
def test_nothing_leaks_into_other_models():
    policy, reference = tiny_model("qwen3_moe"), tiny_model("qwen3_moe", seed=1)
    x = torch.randint(0, VOCAB, (2, 8))
    ref_before = token_logprobs(reference, x)
    rr = RoutingReplay(policy)
    spec = rr.spec
    routes = Routes.from_indices(random_routes_idx(x.numel(), spec.num_layers, 8, spec.top_k), 8)
    with rr.replay(routes), rr.record():
        # the reference policy (and an SFT model) in the same process run stock inside the context
        assert torch.equal(token_logprobs(reference, x), ref_before)
        token_logprobs(policy, x)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in reference.modules())
    # two RoutingReplay on two models are independent
    rr_ref = RoutingReplay(reference)
    with rr.replay(routes), rr_ref.record() as rec:
        token_logprobs(reference, x)
    assert rec.routes[0].equal(_routes_of(reference, rr_ref, x))


# ------------------------------------------------------------------ misuse
def test_errors_name_the_mismatch():
    model = tiny_model("qwen3_moe")
    rr = RoutingReplay(model)
    x = torch.randint(0, VOCAB, (2, 5))
    wrong_tokens = Routes.from_indices(random_routes_idx(7, 3, 8, 2), 8)
    with pytest.raises(ValueError, match="7 token rows but the router of decoder layer 0 routes 10 tokens"):
        with rr.replay(wrong_tokens):
            model(input_ids=x)
    assert not rr.active  # hooks removed on the error path too
    with pytest.raises(ValueError, match="2 MoE layers but the model has 3"):
        rr.replay(Routes.from_indices(random_routes_idx(10, 2, 8, 2), 8)).__enter__()
    with pytest.raises(ValueError, match="top_k=3 but the model has num_experts_per_tok=2"):
        rr.replay(Routes.from_indices(random_routes_idx(10, 3, 8, 3), 8)).__enter__()
    with pytest.raises(ValueError, match="num_experts=16 but the model has 8"):
        rr.replay(Routes.from_indices(random_routes_idx(10, 3, 16, 2), 16)).__enter__()
    with rr.replay(Routes.from_indices(random_routes_idx(10, 3, 8, 2), 8)):
        with pytest.raises(RuntimeError, match="already active"):
            rr.replay(Routes.from_indices(random_routes_idx(10, 3, 8, 2), 8)).__enter__()
    assert not rr.active


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_generate_records_rollout_routes_like_an_engine(family):
    """A KV-cached generate() inside record() is a rollout engine with route return: prefill + one forward per
    decode step, assembled per token; the final sampled token has no route (as in vLLM)."""
    from verl_stable.routing import generation_routes

    model = tiny_model(family)
    rr = RoutingReplay(model)
    prompt = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(0))
    with rr.record() as rec, torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert rec.num_forwards == 6 and [r.num_tokens for r in rec.routes] == [15] + [3] * 5
    rollout = generation_routes(rec.routes, batch_size=3)
    assert rollout.num_tokens == out.numel()
    assert rollout.valid_mask().view(3, 11)[:, -1].tolist() == [False] * 3
    training = _routes_of(model, rr, out)
    assert route_agreement(rollout, training).tokens_mismatch_any_layer == 0
    with rr.replay(rollout):
        assert torch.equal(token_logprobs(model, out), token_logprobs(tiny_model(family), out))
