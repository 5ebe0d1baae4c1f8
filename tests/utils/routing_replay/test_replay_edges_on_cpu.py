"""Edges of the replay API, for every router family: Routes built with the constructor are checked before they
are replayed; one open context per model; a forward never takes another forward's routes (only a
gradient-checkpoint recompute in backward reuses routes, those of the forward it belongs to)."""

from __future__ import annotations

import itertools

import pytest
import torch
from verl_stable.routing import Routes, RoutingReplay
from verl_stable.routing.replay import _CLAIM

from tests.utils.routing_replay.helpers import FAMILIES, VOCAB, ExpertTap, random_routes_idx, tiny_model, token_logprobs


def _random_routes(rr, num_tokens: int, seed: int) -> Routes:
    spec = rr.spec
    gen = torch.Generator().manual_seed(seed)
    idx = random_routes_idx(num_tokens, spec.num_layers, spec.num_experts, spec.top_k, gen)
    return Routes.from_indices(idx, spec.num_experts)


def _ids(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _assert_stock(model, family: str, x: torch.Tensor) -> None:
    """No hook, wrapper or claim left anywhere, and the output of a never-bound model, bit for bit."""
    for name, m in model.named_modules():
        assert not (m._forward_hooks or m._forward_pre_hooks), name
        assert _CLAIM not in vars(m) and "route_tokens_to_experts" not in vars(m), name
    with torch.no_grad():
        assert torch.equal(token_logprobs(model, x), token_logprobs(tiny_model(family), x))


# ------------------------------------------------------------------ Routes built directly
def _corrupt(routes: Routes, row: int, layer: int, ids: list[int]) -> Routes:
    """The same routes with ``ids`` written into one row, through the constructor (no checks on ids)."""
    experts = routes.experts.clone()
    experts[row, layer] = torch.tensor(ids, dtype=experts.dtype)
    return Routes(experts, routes.num_experts, routes.valid)


@pytest.mark.parametrize("family", FAMILIES)
def test_directly_built_routes_are_checked_before_replay(family):
    model = tiny_model(family)
    rr = RoutingReplay(model)
    spec = rr.spec
    x = _ids(2, 5, seed=0)
    good = _random_routes(rr, x.numel(), seed=1)
    row = good.experts[7, 1].tolist()
    out_of_range = _corrupt(good, 7, 1, [spec.num_experts, *row[1:]])
    repeated = _corrupt(good, 4, 0, [row[0]] * spec.top_k)
    n = spec.num_experts
    named = r"replayed routes\[{i}\]: "
    range_msg = named + rf"expert id {n} out of range \[0, {n}\) at token row 7, layer 1.*num_experts={n}"
    repeat_msg = named + rf"token row 4 repeats an expert in layer 0 .* distinct experts of num_experts={n}"

    with ExpertTap(model, rr) as tap:
        for bad, msg in ((out_of_range, range_msg), (repeated, repeat_msg)):
            with pytest.raises(ValueError, match=msg.format(i=0)):  # one Routes for every forward
                with rr.replay(bad), torch.no_grad():
                    model(input_ids=x)
            with pytest.raises(ValueError, match=msg.format(i=1)):  # one per forward, given up front
                with rr.replay([good, bad]), torch.no_grad():
                    model(input_ids=x)
            with pytest.raises(ValueError, match=msg.format(i=1)):  # pushed: refused at the push
                with rr.replay() as state, torch.no_grad():
                    state.push(good)
                    model(input_ids=x)
                    state.push(bad)
                    model(input_ids=x)
            assert not rr.active
        # nothing reached the experts with the bad routes: only the forward of each push case ran, with good ones
        assert all(len(calls) == 2 for calls in tap.calls)
        assert all(torch.equal(c, good.layer(layer)) for layer, calls in enumerate(tap.calls) for c in calls)

    # a row without a route is never replayed: whatever it holds is not checked, the router picks natively there
    valid = torch.ones(x.numel(), dtype=torch.bool)
    valid[[4, 7]] = False
    junk = Routes(_corrupt(repeated, 7, 1, [n, *row[1:]]).experts, n, valid)
    clean = Routes.from_indices(good.experts.to(torch.int64), n, valid)
    with torch.no_grad():
        with rr.replay(junk):
            replayed_junk = token_logprobs(model, x)
        with rr.replay(clean):
            replayed_clean = token_logprobs(model, x)
    assert torch.equal(replayed_junk, replayed_clean)
    _assert_stock(model, family, x)


def _first_fault_by_loop(ids: torch.Tensor, valid: torch.Tensor, num_experts: int):
    """The reference for ``check_ids``: ("range", row, layer) for the first row with an id outside
    [0, num_experts), else ("repeat", row, layer) for the first row repeating an expert, else None."""
    rows = [(t, layer) for t in range(ids.shape[0]) if valid[t] for layer in range(ids.shape[1])]
    for t, layer in rows:
        if any(not 0 <= int(e) < num_experts for e in ids[t, layer]):
            return "range", t, layer
    for t, layer in rows:
        if len(set(ids[t, layer].tolist())) < ids.shape[2]:
            return "repeat", t, layer
    return None


@pytest.mark.parametrize("num_experts,top_k", [(8, 1), (8, 3), (256, 8), (300, 4)])
def test_check_ids_matches_a_loop(num_experts, top_k):
    """The vectorised check against a loop over rows, on random corruptions, uint8 and uint16 storage; the
    error names the first offending row the loop finds (range errors before repeats)."""
    gen = torch.Generator().manual_seed(num_experts + top_k)
    for trial in range(40):
        ids = random_routes_idx(9, 3, num_experts, top_k, gen)
        valid = torch.rand(9, generator=gen) > 0.2
        for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
            t, layer, k = (int(torch.randint(0, d, (1,), generator=gen)) for d in ids.shape)
            if torch.rand(1, generator=gen) < 0.5 and num_experts < 256:
                ids[t, layer, k] = num_experts + int(torch.randint(0, 256 - num_experts, (1,), generator=gen))
            elif num_experts == 300 and torch.rand(1, generator=gen) < 0.5:
                ids[t, layer, k] = 300 + int(torch.randint(0, 65236, (1,), generator=gen))
            else:
                ids[t, layer, k] = ids[t, layer, (k + 1) % top_k]
        stored = ids.to(torch.int32).to(torch.int16).view(torch.uint16) if num_experts > 256 else ids.to(torch.uint8)
        routes = Routes(stored, num_experts, valid)
        fault = _first_fault_by_loop(ids, valid, num_experts)
        if fault is None:
            assert routes.check_ids() is routes
            continue
        kind, t, layer = fault
        msg = f"token row {t} repeats an expert in layer {layer} "
        if kind == "range":
            msg = f"out of range \\[0, {num_experts}\\) at token row {t}, layer {layer};"
        with pytest.raises(ValueError, match=msg):
            routes.check_ids()


# ------------------------------------------------------------------ one context per model
@pytest.mark.parametrize("family", FAMILIES)
def test_two_contexts_on_one_model_are_refused(family):
    model = tiny_model(family)
    rr, other = RoutingReplay(model), RoutingReplay(model)
    inner = RoutingReplay(model.model)  # the same routers, reached from the decoder stack
    x = _ids(2, 6, seed=2)
    routes = _random_routes(rr, x.numel(), seed=3)
    refused = "already hooked by an open record\\(\\)/replay\\(\\) context of another RoutingReplay"

    with ExpertTap(model, rr) as tap:
        with rr.replay(routes):
            for second in (other.replay(routes), other.record(), inner.replay(routes), inner.record()):
                with pytest.raises(RuntimeError, match=refused):
                    with second:
                        pass
            with pytest.raises(RuntimeError, match="already active"):
                with rr.replay(routes):
                    pass
            assert not (other.active or inner.active)
            # the first context still replays, on every layer
            with torch.no_grad():
                token_logprobs(model, x)
        with rr.record() as rec:  # a record() is guarded the same way
            for second in (other.replay(routes), other.record(), inner.record()):
                with pytest.raises(RuntimeError, match=refused):
                    with second:
                        pass
            with torch.no_grad():
                model(input_ids=x)
        assert rec.num_forwards == 1
    for layer, calls in enumerate(tap.calls):
        assert torch.equal(calls[0], routes.layer(layer))
    _assert_stock(model, family, x)

    # once the first context closed, the others bind the model in turn
    for rr_next in (other, inner):
        with rr_next.replay(routes), torch.no_grad():
            token_logprobs(model, x)
    _assert_stock(model, family, x)


# ------------------------------------------------------------------ one forward, its own routes
@pytest.mark.parametrize("family", FAMILIES)
def test_a_forward_never_takes_another_forwards_routes(family):
    model = tiny_model(family)
    rr = RoutingReplay(model)
    first_layer = rr.spec.moe_layers[0]
    x1, x2 = _ids(2, 5, seed=4), _ids(2, 5, seed=5)  # same shape: wrong routes would fit
    r1, r2 = _random_routes(rr, 10, seed=6), _random_routes(rr, 10, seed=7)

    # a second model call with nothing pushed for it
    with pytest.raises(ValueError, match=r"1 Routes .* forward #2: push\(\) the routes of every forward"):
        with rr.replay() as state, torch.no_grad():
            state.push(r1)
            model(input_ids=x1)
            model(input_ids=x2)
    # a forward the context cannot see (the decoder stack called, not the bound model) with routes pushed for it
    with pytest.raises(RuntimeError, match="fired a second time in forward #1 outside backward.*state.push"):
        with rr.replay() as state, torch.no_grad():
            state.push(r1)
            model(input_ids=x1)
            state.push(r2)
            model.model(input_ids=x2)
    # ... and under record(): it would be recorded as (or replay) the first forward's routes
    with pytest.raises(RuntimeError, match="fired a second time in forward #1 outside backward"):
        with rr.record(), torch.no_grad():
            model(input_ids=x1)
            model.model(input_ids=x2)
    # a forward whose token count differs from its pushed routes
    mismatch = f"10 token rows but the router of decoder layer {first_layer} routes 12 tokens in forward #2"
    with pytest.raises(ValueError, match=mismatch):
        with rr.replay() as state, torch.no_grad():
            state.push(r1)
            model(input_ids=x1)
            state.push(r2)
            model(input_ids=_ids(2, 6, seed=8))
    assert not rr.active
    _assert_stock(model, family, x1)

    # pushed routes for each forward: each forward gets its own
    with ExpertTap(model, rr) as tap, rr.replay() as state, torch.no_grad():
        for x, r in ((x1, r1), (x2, r2)):
            state.push(r)
            model(input_ids=x)
    for layer, calls in enumerate(tap.calls):
        assert [torch.equal(c, r.layer(layer)) for c, r in zip(calls, (r1, r2))] == [True, True]


@pytest.mark.parametrize("family,reentrant", list(itertools.product(FAMILIES, [False, True])))
def test_recompute_replays_the_forward_it_belongs_to(family, reentrant):
    """Forward 1, forward 2, then backward 1 and backward 2: each checkpoint recompute replays the routes of
    the forward whose graph it recomputes (not the latest forward's), and the gradients equal those without
    checkpointing."""
    x1, x2 = _ids(2, 6, seed=9), _ids(2, 6, seed=10)

    def run(checkpointing: bool):
        model = tiny_model(family).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        rr = RoutingReplay(model)
        r1, r2 = _random_routes(rr, 12, seed=11), _random_routes(rr, 12, seed=12)
        with ExpertTap(model, rr) as tap, rr.replay(track_agreement=True) as state:
            state.push(r1)
            loss1 = token_logprobs(model, x1).sum()
            state.push(r2)
            loss2 = token_logprobs(model, x2).sum()
            loss1.backward()
            loss2.backward()
        expected = (r1, r2, r1, r2) if checkpointing else (r1, r2)
        for layer, calls in enumerate(tap.calls):
            assert len(calls) == len(expected)
            assert all(torch.equal(c, r.layer(layer)) for c, r in zip(calls, expected))
        assert state.agreement().tokens.tolist() == [24.0] * rr.spec.num_layers  # recompute not counted
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = run(False), run(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_record_recompute_replays_the_forward_it_belongs_to(family):
    model = tiny_model(family).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rr = RoutingReplay(model)
    x1, x2 = _ids(2, 6, seed=13), _ids(2, 6, seed=14)
    with ExpertTap(model, rr) as tap, rr.record() as rec:
        loss1 = token_logprobs(model, x1).sum()
        loss2 = token_logprobs(model, x2).sum()
        loss1.backward()
        loss2.backward()
    first, second = rec.routes
    assert not first.equal(second)
    for layer, calls in enumerate(tap.calls):
        expected = (first, second, first, second)
        assert len(calls) == 4 and all(torch.equal(c, r.layer(layer)) for c, r in zip(calls, expected))
