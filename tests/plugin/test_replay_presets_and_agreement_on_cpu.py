"""The routing_replay=R2|R3 presets on verl's real config tree, the config checks, and the agreement math."""

from __future__ import annotations

import pytest
import torch

from tests.hydra_configs import compose as _compose

BASE = ["algorithm=minirl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"]


def compose(overrides):
    return _compose(overrides=overrides)


@pytest.mark.parametrize("mode,route_return", [("R2", False), ("R3", True)])
def test_preset_sets_verls_switch_for_the_fsdp_engine(mode, route_return):
    from verl.utils.config import omega_conf_to_dataclass

    from verl_stable.validation import check_routing_replay, replay_mode

    cfg = compose(BASE + [f"routing_replay={mode}"])
    assert cfg.actor_rollout_ref.rollout.enable_rollout_routing_replay is route_return
    # verl's own dataclass path: FSDPActorConfig.engine (= fsdp_config) carries EngineRouterReplayConfig.
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.engine.router_replay.mode == mode
    # The reference model's engine is not replayed.
    ref_rr = cfg.actor_rollout_ref.ref.fsdp_config.get("router_replay", None)
    assert ref_rr is None or ref_rr.mode == "disabled"
    assert replay_mode(cfg) == mode
    # the model path is verl's placeholder (not local): only the switches are checked, and they agree
    assert list(check_routing_replay(cfg)) == []


def test_no_preset_is_disabled():
    from verl_stable.validation import replay_mode

    assert replay_mode(compose(BASE)) == "disabled"


def test_r3_without_route_return_names_the_key():
    from verl_stable.validation import ROUTE_RETURN_KEY, check_routing_replay

    cfg = compose(BASE + ["routing_replay=R3", "actor_rollout_ref.rollout.enable_rollout_routing_replay=False"])
    (issue,) = check_routing_replay(cfg)
    assert issue.key == ROUTE_RETURN_KEY and issue.allowed == "true" and "R3" in issue.problem
    cfg = compose(BASE + ["routing_replay=R2", "actor_rollout_ref.rollout.enable_rollout_routing_replay=True"])
    (issue,) = check_routing_replay(cfg)
    assert issue.key == ROUTE_RETURN_KEY and issue.allowed == "false" and "use routing_replay=R3" in issue.problem


def test_r2_with_bypass_mode_is_rejected_by_verls_own_validation():
    """verl validates R2 against bypass mode from the actor's engine config: our switch is verl's switch."""
    from verl.utils.config import _validate_router_replay_config, omega_conf_to_dataclass

    cfg = compose(BASE + ["routing_replay=R2", "algorithm.rollout_correction.bypass_mode=True"])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    with pytest.raises(ValueError, match="bypass_mode=False"):
        _validate_router_replay_config(actor, cfg.algorithm.rollout_correction)


def _loop_agreement(native, replayed, valid):
    T, L, K = native.shape
    same = torch.zeros(L, dtype=torch.float64)
    shared = torch.zeros(L, dtype=torch.float64)
    any_mismatch = 0
    n = 0
    for t in range(T):
        if not valid[t]:
            continue
        n += 1
        differs = False
        for layer in range(L):
            a, b = set(native[t, layer].tolist()), set(replayed[t, layer].tolist())
            same[layer] += a == b
            shared[layer] += len(a & b) / K
            differs |= a != b
        any_mismatch += differs
    return n, same, shared, any_mismatch


def test_agreement_counts_match_a_loop_and_merge_exactly():
    from verl_stable.routing.agreement import count_agreement

    g = torch.Generator().manual_seed(0)
    T, L, E, K = 40, 3, 6, 2
    native = torch.rand(T, L, E, generator=g).argsort(-1)[..., :K]
    replayed = native.clone()
    flip = torch.rand(T, L, generator=g) < 0.3
    replayed[flip] = torch.rand(int(flip.sum()), E, generator=g).argsort(-1)[..., :K]
    replayed = replayed.flip(-1)  # order within the top-k must not matter
    valid = torch.rand(T, generator=g) > 0.2

    c = count_agreement(native, replayed, valid)
    n, same, shared, any_mismatch = _loop_agreement(native, replayed, valid)
    assert c.tokens.tolist() == [n] * L and c.without_route == T - n
    torch.testing.assert_close(c.same_set, same, rtol=0, atol=0)
    torch.testing.assert_close(c.shared, shared, rtol=1e-12, atol=0)
    assert c.mismatch_any_layer == any_mismatch

    # Two micro-batches merge to the counts of the whole batch.
    a = count_agreement(native[:15], replayed[:15], valid[:15])
    b = count_agreement(native[15:], replayed[15:], valid[15:])
    m = (a + b).to_metrics()
    whole = c.to_metrics()
    assert m.keys() == whole.keys()
    for k in m:
        assert m[k] == pytest.approx(whole[k], rel=1e-12)
    assert whole["routing/agreement_mean"] == pytest.approx((same / n).mean().item(), rel=1e-12)
    assert whole["routing/tokens_mismatch_any_layer"] == pytest.approx(any_mismatch / n, rel=1e-12)
    assert whole["routing/tokens_without_route"] == pytest.approx((T - n) / T, rel=1e-12)


def test_metrics_without_comparable_tokens_are_nan_free():
    from verl_stable.routing.agreement import count_agreement

    x = torch.zeros(4, 2, 2, dtype=torch.long)
    m = count_agreement(x, x, torch.zeros(4, dtype=torch.bool)).to_metrics()
    assert m == {"routing/tokens_without_route": 1.0}
