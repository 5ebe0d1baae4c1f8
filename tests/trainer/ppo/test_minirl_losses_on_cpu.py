"""The registered verl adapters: cross-check against verl's own vanilla loss, aggregation, errors."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from verl_stable.losses import (
    AGG_MODE_MEANING,
    LOSS_MODES,
    LOSS_VARIANTS,
    TOLERATED_AGG_MODES,
    AggregationWarning,
    LengthNormalisationWarning,
    LossVariant,
    check_clip_range,
)


def random_batch(batch=8, length=12, dtype=torch.float64, seed=0):
    """Clipped, truncated, zero-advantage and padded tokens all present."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=dtype) * 3
    log_prob = old + 0.35 * torch.randn(batch, length, generator=g, dtype=dtype)
    adv = torch.randn(batch, 1, generator=g, dtype=dtype).expand(batch, length).clone()
    adv[: batch // 4] = 0.0
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(dtype)
    raw = torch.exp(0.8 * torch.randn(batch, length, generator=g, dtype=dtype))
    weights = raw.clamp(max=5.0) * mask  # verl's TIS: clamp above, zero on padding
    return old, log_prob, adv, mask, weights


def grad_of(loss_fn, old, log_prob, adv, mask, weights, agg, config):
    lp = log_prob.clone().requires_grad_(True)
    loss, metrics = loss_fn(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask.bool(), loss_agg_mode=agg,
        config=config, rollout_is_weights=weights,
    )
    loss.backward()
    return loss.detach(), lp.grad, metrics


@pytest.mark.parametrize("agg", ["seq-mean-token-sum", "token-mean", "seq-mean-token-mean", "token-sum"])
def test_minirl_gradient_equals_vanilla_times_tis_weight(minirl_actor_config, agg):
    """With dual clip off, PPO-clip's gradient is M·r·Â·∇log π, so MiniRL = vanilla × TIS weight."""
    old, log_prob, adv, mask, weights = random_batch()
    ratio = torch.exp(log_prob - old)
    assert ((ratio > 1.27) & (adv > 0)).any() and ((ratio < 0.8) & (adv < 0)).any(), "batch must hit both clips"
    assert (weights == 5.0).any(), "batch must contain truncated IS weights"
    vanilla_cfg = dataclasses.replace(minirl_actor_config, clip_ratio_c=1e12)  # disables dual clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthNormalisationWarning)
        _, g_minirl, _ = grad_of(get_policy_loss_fn("minirl"), old, log_prob, adv, mask, weights, agg, minirl_actor_config)
    _, g_vanilla, _ = grad_of(get_policy_loss_fn("vanilla"), old, log_prob, adv, mask, weights, agg, vanilla_cfg)
    torch.testing.assert_close(g_minirl, g_vanilla, rtol=1e-5, atol=1e-12)
    assert g_minirl.abs().sum() > 0


def test_minirl_loss_value_is_the_weighted_surrogate(minirl_actor_config):
    old, log_prob, adv, mask, weights = random_batch()
    loss, _, metrics = grad_of(
        get_policy_loss_fn("minirl"), old, log_prob, adv, mask, weights, "seq-mean-token-sum", minirl_actor_config
    )
    ratio = torch.exp(log_prob - old)
    keep = ~(((adv > 0) & (ratio > 1.27)) | ((adv < 0) & (ratio < 0.8)))
    per_seq = (-(weights * ratio * adv * keep) * mask).sum(-1)
    assert loss.item() == pytest.approx(per_seq.mean().item(), rel=1e-10)
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_pos_adv", "actor/pg_clipfrac_neg_adv", "actor/ppo_kl",
                "actor/staleness_kl_k3", "actor/staleness_ratio_mean", "actor/is_weight_mean",
                "actor/is_truncated_frac"):
        assert math.isfinite(metrics[key]), key
    assert metrics["actor/pg_clipfrac"] == pytest.approx(
        metrics["actor/pg_clipfrac_pos_adv"] + metrics["actor/pg_clipfrac_neg_adv"]
    )
    truncated = ((weights >= 5.0) & mask.bool()).sum() / mask.sum()
    assert metrics["actor/is_truncated_frac"] == pytest.approx(truncated.item(), rel=1e-6)


@pytest.mark.parametrize("agg", ["seq-mean-token-sum", "token-mean"])
@pytest.mark.filterwarnings("ignore::verl_stable.losses.LengthNormalisationWarning")
def test_global_batch_aggregation_across_data_parallel_ranks(minirl_actor_config, agg):
    """Two ranks with verl's global_batch_info: the averaged gradient equals the single-rank gradient."""
    old, log_prob, adv, mask, weights = random_batch(batch=8)
    fn = get_policy_loss_fn("minirl")
    single_cfg = dataclasses.replace(minirl_actor_config, global_batch_info={})
    _, g_single, _ = grad_of(fn, old, log_prob, adv, mask, weights, agg, single_cfg)
    info = {
        "dp_size": 2,
        "batch_num_tokens": int(mask.sum()),
        "global_batch_size": int((mask.sum(-1) > 0).sum()),
    }
    rank_cfg = dataclasses.replace(minirl_actor_config, global_batch_info=info)
    grads = []
    for rank in range(2):
        rows = slice(rank * 4, rank * 4 + 4)
        _, g, _ = grad_of(fn, old[rows], log_prob[rows], adv[rows], mask[rows], weights[rows], agg, rank_cfg)
        grads.append(g)
    # FSDP/DDP average gradients over ranks; each rank holds its own rows.
    torch.testing.assert_close(torch.cat(grads) / 2, g_single, rtol=1e-5, atol=1e-12)


def test_ablation_losses(minirl_actor_config):
    old, log_prob, adv, mask, weights = random_batch()
    ratio = torch.exp(log_prob - old)
    _, g_no_clip, _ = grad_of(get_policy_loss_fn("minirl_no_clip"), old, log_prob, adv, mask, weights,
                              "seq-mean-token-sum", minirl_actor_config)
    expected = -(weights * ratio * adv * mask) / mask.shape[0]
    torch.testing.assert_close(g_no_clip, expected, rtol=1e-5, atol=1e-12)
    _, g_no_is, _ = grad_of(get_policy_loss_fn("minirl_no_is"), old, log_prob, adv, mask, None,
                            "seq-mean-token-sum", minirl_actor_config)
    _, g_unit_w, _ = grad_of(get_policy_loss_fn("minirl"), old, log_prob, adv, mask, torch.ones_like(mask),
                             "seq-mean-token-sum", minirl_actor_config)
    torch.testing.assert_close(g_no_is, g_unit_w, rtol=1e-10, atol=1e-12)
    _, g_len, _ = grad_of(get_policy_loss_fn("minirl_length_norm"), old, log_prob, adv, mask, weights,
                          "seq-mean-token-mean", minirl_actor_config)
    _, g_sum, _ = grad_of(get_policy_loss_fn("minirl"), old, log_prob, adv, mask, weights,
                          "seq-mean-token-sum", minirl_actor_config)
    lengths = mask.sum(-1, keepdim=True)
    torch.testing.assert_close(g_len * mask, g_sum / lengths * mask, rtol=1e-6, atol=1e-12)


def test_seq_is_gradient_is_sequence_ratio_times_score(minirl_actor_config):
    old, log_prob, adv, mask, _ = random_batch()
    log_prob = old + 0.05 * (log_prob - old)  # keep sequence ratios moderate
    seq_w = torch.rand(old.shape[0], 1, dtype=old.dtype) + 0.5
    weights = seq_w.expand_as(old) * mask
    loss, g, _ = grad_of(get_policy_loss_fn("seq_is"), old, log_prob, adv, mask, weights,
                         "seq-mean-token-sum", minirl_actor_config)
    rho = seq_w * torch.exp(((log_prob - old) * mask).sum(-1, keepdim=True))
    expected = -(rho * adv * mask) / old.shape[0]
    torch.testing.assert_close(g, expected, rtol=1e-8, atol=1e-12)
    assert loss.item() == pytest.approx((-(rho * adv[:, :1])).mean().item(), rel=1e-8)


# ----------------------------------------------------------------------------------------------------
# Error paths: each names the config key to fix


def call(name, config, agg="seq-mean-token-sum", **overrides):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    kwargs = dict(old_log_prob=old, log_prob=log_prob, advantages=adv, response_mask=mask.bool(),
                  loss_agg_mode=agg, config=config, rollout_is_weights=weights)
    kwargs.update(overrides)
    return get_policy_loss_fn(name)(**kwargs)


def test_minirl_without_is_weights_names_the_keys(minirl_actor_config):
    with pytest.raises(ValueError, match=r"algorithm\.rollout_correction\.rollout_is=token.*calculate_log_probs"):
        call("minirl", minirl_actor_config, rollout_is_weights=None)


def test_no_is_ablation_refuses_weights(minirl_actor_config):
    with pytest.raises(ValueError, match=r"algorithm\.rollout_correction\.rollout_is=null"):
        call("minirl_no_is", minirl_actor_config)


def test_shape_mismatch(minirl_actor_config):
    with pytest.raises(ValueError, match=r"advantages has shape \(4, 4\).*response_mask has \(4, 5\)"):
        call("minirl", minirl_actor_config, advantages=torch.zeros(4, 4, dtype=torch.float64))


@pytest.mark.parametrize("field", ["log_prob", "old_log_prob", "advantages", "rollout_is_weights"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_reported(minirl_actor_config, field, bad):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    tensors = dict(log_prob=log_prob, old_log_prob=old, advantages=adv, rollout_is_weights=weights)
    tensors[field] = tensors[field].clone()
    tensors[field][0, 0] = bad  # position (0, 0) is always a response token
    with pytest.raises(FloatingPointError, match=f"NaN/inf value\\(s\\) in {field}"):
        call("minirl", minirl_actor_config, **tensors)


def test_nan_on_padding_is_ignored(minirl_actor_config):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    mask[:, -1] = 0
    log_prob = log_prob.clone()
    log_prob[:, -1] = float("nan")
    loss, _ = call("minirl", minirl_actor_config, log_prob=log_prob, response_mask=mask.bool(), rollout_is_weights=weights * mask)
    assert math.isfinite(loss.item())


def _valid_aggregations(name):
    if name == "seq_is":
        return ["seq-mean-token-sum"]
    if name == "minirl_length_norm":
        return ["seq-mean-token-mean", "token-mean"]
    return ["seq-mean-token-sum", "seq-mean-token-mean", "token-mean"]


@pytest.mark.parametrize("name, agg", [(n, a) for n in sorted(LOSS_MODES) for a in _valid_aggregations(n)])
def test_all_masked_batch_gives_finite_zero(minirl_actor_config, name, agg):
    old, log_prob, adv, mask, weights = random_batch(batch=3, length=4)
    lp = log_prob.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthNormalisationWarning)
        loss, metrics = get_policy_loss_fn(name)(
            old_log_prob=old, log_prob=lp, advantages=adv, response_mask=torch.zeros_like(mask, dtype=torch.bool),
            loss_agg_mode=agg, config=minirl_actor_config,
            rollout_is_weights=None if name == "minirl_no_is" else torch.zeros_like(weights),
        )
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))
    assert all(math.isfinite(v) for v in metrics.values())


def test_length_norm_under_minirl_warns_and_ablation_is_silent(minirl_actor_config):
    with pytest.warns(LengthNormalisationWarning, match="algorithm=minirl_length_norm"):
        call("minirl", minirl_actor_config, agg="seq-mean-token-mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LengthNormalisationWarning)
        call("minirl_length_norm", minirl_actor_config, agg="seq-mean-token-mean")


def test_length_norm_ablation_needs_length_normalisation(minirl_actor_config):
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.loss_agg_mode=seq-mean-token-mean"):
        call("minirl_length_norm", minirl_actor_config, agg="seq-mean-token-sum")


def test_seq_is_refuses_token_weights_and_token_aggregation(minirl_actor_config):
    with pytest.raises(ValueError, match=r"rollout_is=sequence"):
        call("seq_is", minirl_actor_config)
    with pytest.raises(ValueError, match=r"loss_agg_mode=seq-mean-token-sum"):
        call("seq_is", minirl_actor_config, agg="token-mean", rollout_is_weights=None)


# ----------------------------------------------------------------------------------------------------
# Refused inputs from the Python API (issue 8): each error names the key to change


WEIGHTED = [name for name, v in LOSS_VARIANTS.items() if v.use_is]


def _weights_for(name, weights, mask):
    """Valid weights for ``name``: per response for the sequence-level loss, none for the no-IS ablation."""
    variant = LOSS_VARIANTS[name]
    if not variant.use_is:
        return None
    if variant.level == "sequence":
        return torch.full_like(weights, 1.5) * mask
    return weights


@pytest.mark.parametrize("name", WEIGHTED)
def test_negative_is_weights_are_refused(minirl_actor_config, name):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    bad = _weights_for(name, weights, mask).clone()
    bad[0] = -bad[0]  # a whole response, so the sequence-level loss sees one (negative) weight too
    with pytest.raises(ValueError, match=r"negative value\(s\) in rollout_is_weights.*algorithm\.rollout_correction"):
        call(name, minirl_actor_config, agg=LOSS_VARIANTS[name].agg_modes[0], rollout_is_weights=bad)


def test_negative_weight_on_padding_is_ignored(minirl_actor_config):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    mask[:, -1] = 0
    weights = weights * mask
    weights[:, -1] = -1.0
    loss, _ = call("minirl", minirl_actor_config, response_mask=mask.bool(), rollout_is_weights=weights)
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_is_weights_name_rollout_correction(minirl_actor_config, name, bad):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    weights = _weights_for(name, weights, mask).clone()
    weights[0, 0] = bad
    pattern = r"NaN/inf value\(s\) in rollout_is_weights.*algorithm\.rollout_correction"
    with pytest.raises(FloatingPointError, match=pattern):
        call(name, minirl_actor_config, agg=LOSS_VARIANTS[name].agg_modes[0], rollout_is_weights=weights)


@pytest.mark.parametrize("side, key", [("low", "clip_ratio_low"), ("high", "clip_ratio_high")])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_clip_ratio_out_of_range_is_refused(minirl_actor_config, side, key, value):
    low, high = (value, 0.27) if side == "low" else (0.2, value)
    pattern = rf"actor_rollout_ref\.actor\.{key}=.*out of range"
    with pytest.raises(ValueError, match=pattern):
        check_clip_range(low, high)
    config = dataclasses.replace(minirl_actor_config, **{key: value})
    for name, variant in LOSS_VARIANTS.items():  # the no-clip variants still report clip statistics
        old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
        with pytest.raises(ValueError, match=pattern):
            call(name, config, agg=variant.agg_modes[0], rollout_is_weights=_weights_for(name, weights, mask))


def test_clip_ratio_falls_back_to_clip_ratio_and_is_checked(minirl_actor_config):
    config = dataclasses.replace(minirl_actor_config, clip_ratio=-0.2, clip_ratio_low=None)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.clip_ratio_low=-0\.2.*clip_ratio\)"):
        call("minirl", config)


@pytest.mark.parametrize("low, high", [(0.0, 0.0), (0.2, 0.27), (0.999, 0.999), (0, 0)])
def test_clip_ratio_in_range_is_accepted(low, high):
    check_clip_range(low, high)


def _refused_aggregations():
    for name, variant in LOSS_VARIANTS.items():
        accepted = set(variant.agg_modes) | set(TOLERATED_AGG_MODES[name])
        for agg in [*sorted(set(AGG_MODE_MEANING) - accepted), "seq-mean-token-max"]:
            yield name, agg


@pytest.mark.parametrize("name, agg", list(_refused_aggregations()))
def test_wrong_aggregation_is_refused_naming_the_allowed_values(minirl_actor_config, name, agg):
    variant = LOSS_VARIANTS[name]
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    with pytest.raises(ValueError) as info:
        call(name, minirl_actor_config, agg=agg, rollout_is_weights=_weights_for(name, weights, mask))
    message = str(info.value)
    assert f"actor_rollout_ref.actor.loss_agg_mode={agg}" in message
    assert f"set actor_rollout_ref.actor.loss_agg_mode={variant.agg_modes[0]}" in message
    assert f"allowed: {', '.join(variant.agg_modes)}" in message


def test_every_variant_refuses_some_real_aggregation_or_an_unknown_one():
    refused = {}
    for name, agg in _refused_aggregations():
        refused.setdefault(name, []).append(agg)
    assert set(refused) == set(LOSS_VARIANTS)
    assert {"seq-mean-token-sum", "token-sum"} <= set(refused["minirl_length_norm"])
    assert {"token-mean", "seq-mean-token-mean", "token-sum"} <= set(refused["seq_is"])


@pytest.mark.parametrize("name, agg", [(n, a) for n, modes in TOLERATED_AGG_MODES.items() for a in modes])
def test_tolerated_aggregation_runs_with_a_warning(minirl_actor_config, name, agg):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    with pytest.warns(AggregationWarning, match=r"actor_rollout_ref\.actor\.loss_agg_mode=") as record:
        loss, _ = call(name, minirl_actor_config, agg=agg, rollout_is_weights=_weights_for(name, weights, mask))
    assert math.isfinite(loss.item())
    length_norm = agg in ("token-mean", "seq-mean-token-mean") and name != "minirl_length_norm"
    assert any(isinstance(w.message, LengthNormalisationWarning) for w in record) is length_norm


@pytest.mark.parametrize("name, agg", [(n, a) for n, v in LOSS_VARIANTS.items() for a in v.agg_modes])
def test_allowed_aggregation_is_silent(minirl_actor_config, name, agg):
    old, log_prob, adv, mask, weights = random_batch(batch=4, length=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AggregationWarning)
        loss, _ = call(name, minirl_actor_config, agg=agg, rollout_is_weights=_weights_for(name, weights, mask))
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("name", [n for n, v in LOSS_VARIANTS.items() if v.requires_is_weights])
def test_missing_is_weights_are_refused(minirl_actor_config, name):
    allowed = "|".join(LOSS_VARIANTS[name].rollout_is)
    pattern = rf"algorithm\.rollout_correction\.rollout_is=({allowed}).*calculate_log_probs"
    with pytest.raises(ValueError, match=pattern):
        call(name, minirl_actor_config, agg=LOSS_VARIANTS[name].agg_modes[0], rollout_is_weights=None)


@pytest.mark.parametrize("name", [n for n, v in LOSS_VARIANTS.items() if not v.use_is])
def test_unexpected_is_weights_are_refused(minirl_actor_config, name):
    pattern = r"carries rollout_is_weights; set algorithm\.rollout_correction\.rollout_is=null"
    with pytest.raises(ValueError, match=pattern):
        call(name, minirl_actor_config, agg=LOSS_VARIANTS[name].agg_modes[0])


def test_seq_is_weights_are_optional(minirl_actor_config):
    loss, _ = call("seq_is", minirl_actor_config, rollout_is_weights=None)
    assert math.isfinite(loss.item())


def test_seq_is_refuses_weights_varying_within_a_response(minirl_actor_config):
    old, log_prob, adv, mask, _ = random_batch(batch=4, length=5)
    weights = torch.ones_like(mask)
    longest = int(mask.sum(-1).argmax())
    assert mask[longest].sum() >= 2
    weights[longest, 0] = 2.0
    pattern = r"vary within a response; set algorithm\.rollout_correction\.rollout_is=sequence"
    with pytest.raises(ValueError, match=pattern):
        call("seq_is", minirl_actor_config, rollout_is_weights=weights * mask)


# ----------------------------------------------------------------------------------------------------
# The table of variants ↔ verl's registry ↔ the presets


def test_loss_variant_table():
    """The declared contract other code (config validation, docs) is written against."""
    sums = ("seq-mean-token-sum", "seq-mean-token-sum-norm")
    expected = {
        "minirl": (True, True, "token", sums, ("token",)),
        "minirl_no_is": (False, True, "token", sums, (None,)),
        "minirl_length_norm": (True, True, "token", ("seq-mean-token-mean",), ("token",)),
        "minirl_no_clip": (True, False, "token", sums, ("token",)),
        "seq_is": (True, False, "sequence", ("seq-mean-token-sum",), ("sequence", None)),
    }
    actual = {n: (v.use_is, v.clip, v.level, v.agg_modes, v.rollout_is) for n, v in LOSS_VARIANTS.items()}
    assert actual == expected
    assert all(name == v.name and v.summary and "\n" not in v.summary for name, v in LOSS_VARIANTS.items())
    assert set(LOSS_MODES) == set(LOSS_VARIANTS) == set(TOLERATED_AGG_MODES)
    for name, modes in TOLERATED_AGG_MODES.items():
        assert not set(modes) & set(LOSS_VARIANTS[name].agg_modes)


@pytest.mark.parametrize(
    "fields",
    [
        dict(use_is=True, rollout_is=(None,)),
        dict(use_is=False, rollout_is=("token",)),
        dict(level="tokens"),
        dict(agg_modes=()),
        dict(agg_modes=("seq-sum",)),
    ],
)
def test_loss_variant_refuses_inconsistent_rows(fields):
    row = dict(name="x", use_is=True, clip=True, level="token", agg_modes=("seq-mean-token-sum",),
               rollout_is=("token",), summary="x")
    with pytest.raises(ValueError, match="LossVariant x"):
        LossVariant(**{**row, **fields})


@pytest.mark.parametrize("name", sorted(LOSS_VARIANTS))
def test_generated_functions_have_verls_signature_and_their_own_names(name):
    import inspect
    import pickle

    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    fn = LOSS_MODES[name]
    assert fn.__name__ == fn.__qualname__ == f"compute_policy_loss_{name}"
    assert fn.__module__ == "verl_stable.losses"
    assert name in fn.__doc__ and LOSS_VARIANTS[name].summary in fn.__doc__
    ours, verls = inspect.signature(fn).parameters, inspect.signature(compute_policy_loss_vanilla).parameters
    assert list(ours) == list(verls)
    assert ours["loss_agg_mode"].default == LOSS_VARIANTS[name].agg_modes[0]
    assert ours["config"].default is None and ours["rollout_is_weights"].default is None
    assert pickle.loads(pickle.dumps(fn)) is fn  # by reference: the module attribute of that name


def test_every_variant_is_registered_after_import_verl_and_reload_is_a_no_op():
    import subprocess
    import sys

    code = (
        "import importlib, verl\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R\n"
        "import verl_stable.losses as L\n"
        "for name in L.LOSS_VARIANTS:\n"
        "    assert R[name] is L.LOSS_MODES[name], name\n"
        "importlib.reload(L)\n"
        "L.register_all()\n"
        "for name in L.LOSS_VARIANTS:\n"
        "    assert R[name].__qualname__ == L.LOSS_MODES[name].__qualname__, name\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
