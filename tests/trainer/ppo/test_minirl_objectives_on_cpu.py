"""MiniRL's pure per-token functions: hand-computed values, mask semantics, gradient path, theory."""

from __future__ import annotations

import math

import pytest
import torch

from verl_stable import objectives

EPS_LOW, EPS_HIGH = 0.2, 0.27


def test_hand_computed_value_and_gradient():
    # One response, three tokens: ratio 1.1 (kept), 1.5 with Â>0 (clipped), weight truncated at C = 5.
    old = torch.log(torch.tensor([[0.5, 0.2, 0.4]], dtype=torch.float64))
    log_prob = torch.log(torch.tensor([[0.55, 0.3, 0.4]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.full((1, 3), 2.0, dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 5.0]], dtype=torch.float64)
    loss = objectives.minirl_token_loss(log_prob, old, adv, w, EPS_LOW, EPS_HIGH)
    expected = torch.tensor([[-1.1 * 2.0, 0.0, -5.0 * 1.0 * 2.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    # ∂/∂log π of −sg[M·w·r·Â]·log π is −M·w·r·Â.
    torch.testing.assert_close(log_prob.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "advantage, ratio, kept",
    [
        (1.0, 1.0 + EPS_HIGH + 0.01, False),  # Â>0 above the range: masked
        (1.0, 1.0 + EPS_HIGH - 0.01, True),
        (1.0, 1.0 - EPS_LOW - 0.1, True),  # Â>0 below the range: the gradient pushes r back up, kept
        (-1.0, 1.0 - EPS_LOW - 0.01, False),  # Â<0 below the range: masked
        (-1.0, 1.0 - EPS_LOW + 0.01, True),
        (-1.0, 1.0 + EPS_HIGH + 3.0, True),  # Â<0 far above: kept, no dual clip
        (0.0, 10.0, True),
        (0.0, 0.01, True),
    ],
)
def test_clip_mask_each_sign_and_side(advantage, ratio, kept):
    adv = torch.tensor([[advantage]], dtype=torch.float64)
    old = torch.zeros(1, 1, dtype=torch.float64)
    log_prob = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    mask = objectives.decoupled_clip_keep_mask(torch.exp(log_prob - old), adv, EPS_LOW, EPS_HIGH)
    assert bool(mask) is kept
    objectives.minirl_token_loss(log_prob, old, adv, None, EPS_LOW, EPS_HIGH).sum().backward()
    expected_grad = -ratio * advantage if kept else 0.0
    assert log_prob.grad.item() == pytest.approx(expected_grad, rel=1e-12, abs=1e-12)


def test_gradient_flows_only_through_current_log_prob():
    shape = (4, 6)
    old = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    log_prob = (old.detach() + 0.1 * torch.randn(shape, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.rand(shape, dtype=torch.float64).mul(5).requires_grad_(True)
    loss = objectives.minirl_token_loss(log_prob, old, adv, w, EPS_LOW, EPS_HIGH).sum()
    loss.backward()
    assert log_prob.grad is not None and log_prob.grad.abs().sum() > 0
    for name, leaf in (("old_log_prob", old), ("advantages", adv), ("is_weight", w)):
        assert leaf.grad is None, f"{name} must be a stop-gradient constant"


def test_no_clip_and_no_is_variants():
    shape = (3, 5)
    old = torch.randn(shape, dtype=torch.float64)
    log_prob = (old + 0.5 * torch.randn(shape, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(shape, dtype=torch.float64)
    w = torch.rand(shape, dtype=torch.float64) * 5
    ratio = torch.exp(log_prob.detach() - old)
    no_clip = objectives.minirl_token_loss(log_prob, old, adv, w, EPS_LOW, EPS_HIGH, clip=False)
    torch.testing.assert_close(no_clip.detach(), -w * ratio * adv, rtol=1e-12, atol=1e-12)
    no_is = objectives.minirl_token_loss(log_prob, old, adv, None, EPS_LOW, EPS_HIGH)
    keep = objectives.decoupled_clip_keep_mask(ratio, adv, EPS_LOW, EPS_HIGH).double()
    torch.testing.assert_close(no_is.detach(), -keep * ratio * adv, rtol=1e-12, atol=1e-12)


def test_stats_all_masked_are_finite_zero():
    shape = (2, 3)
    stats = objectives.minirl_stats(
        torch.randn(shape), torch.randn(shape), torch.randn(shape), torch.zeros(shape), EPS_LOW, EPS_HIGH,
        torch.ones(shape), 5.0,
    )
    assert all(math.isfinite(v) for v in vars(stats).values())
    assert stats.clipfrac == 0.0 and stats.is_truncated_frac == 0.0


def test_stats_against_loop():
    shape = (5, 7)
    old = torch.randn(shape, dtype=torch.float64)
    log_prob = old + 0.4 * torch.randn(shape, dtype=torch.float64)
    adv = torch.randn(shape, dtype=torch.float64)
    mask = (torch.rand(shape) > 0.3).double()
    w = torch.where(torch.rand(shape) > 0.7, torch.tensor(5.0, dtype=torch.float64), torch.rand(shape, dtype=torch.float64))
    s = objectives.minirl_stats(log_prob, old, adv, mask, EPS_LOW, EPS_HIGH, w, 5.0)
    n = hi = lo = trunc = kl3 = 0.0
    for i in range(shape[0]):
        for j in range(shape[1]):
            if not mask[i, j]:
                continue
            r = math.exp(float(log_prob[i, j] - old[i, j]))
            a = float(adv[i, j])
            n += 1
            hi += a > 0 and r > 1 + EPS_HIGH
            lo += a < 0 and r < 1 - EPS_LOW
            trunc += float(w[i, j]) >= 5.0
            kl3 += r - 1 - math.log(r)
    assert s.clipfrac_pos_adv == pytest.approx(hi / n, rel=1e-5)
    assert s.clipfrac_neg_adv == pytest.approx(lo / n, rel=1e-5)
    assert s.clipfrac == pytest.approx((hi + lo) / n, rel=1e-5)
    assert s.is_truncated_frac == pytest.approx(trunc / n, rel=1e-5)
    assert s.staleness_kl_k3 == pytest.approx(kl3 / n, rel=1e-5)
    assert s.staleness_kl_k3 >= 0


def test_training_inference_kl_matches_verl():
    from verl.trainer.ppo.rollout_corr_helper import compute_offpolicy_metrics

    shape = (4, 9)
    rollout = torch.randn(shape, dtype=torch.float64) - 1.0
    old = rollout + 0.05 * torch.randn(shape, dtype=torch.float64)
    mask = (torch.rand(shape) > 0.2).double()
    ours = objectives.training_inference_kl(old, rollout, mask)
    theirs = compute_offpolicy_metrics(old_log_prob=old, rollout_log_prob=rollout, response_mask=mask)
    assert ours["k1"] == pytest.approx(theirs["kl"], rel=1e-5)
    assert ours["k3"] == pytest.approx(theirs["k3_kl"], rel=1e-5)


# ----------------------------------------------------------------------------------------------------
# Theory (docs/method.md §1): ∇J_token = ∇J_seq at θ = θ_old with μ = π; the gap grows smoothly away from it.


class TinyAutoregressive(torch.nn.Module):
    """π(y_t | y_<t) = softmax(E[y_{t-1}] W): a bigram policy, tiny but genuinely autoregressive."""

    def __init__(self, vocab: int = 6, dim: int = 4):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab + 1, dim, dtype=torch.float64)  # +1: the BOS token
        self.head = torch.nn.Linear(dim, vocab, dtype=torch.float64)
        self.bos = vocab

    def log_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.full_like(tokens[:, :1], self.bos), tokens[:, :-1]], dim=1)
        logp = torch.log_softmax(self.head(self.embed(prev)), dim=-1)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        tokens = torch.full((batch, 1), self.bos)
        out = []
        for _ in range(length):
            logits = self.head(self.embed(tokens[:, -1]))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            out.append(nxt)
            tokens = torch.cat([tokens, nxt], dim=1)
        return torch.cat(out, dim=1)


def _objective_grads(model, tokens, mu_log_prob, adv, mask):
    params = list(model.parameters())

    def grad_of(per_token):
        loss = (per_token * mask).sum(-1).mean()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    token = objectives.minirl_token_loss(model.log_probs(tokens), mu_log_prob, adv, None, 0.0, 0.0, clip=False)
    seq = objectives.sequence_is_token_loss(model.log_probs(tokens), mu_log_prob, adv, mask)
    return grad_of(token), grad_of(seq)


def test_token_objective_is_first_order_approximation_of_sequence_objective():
    gen = torch.Generator().manual_seed(1)
    model = TinyAutoregressive()
    tokens = model.sample(batch=64, length=5, generator=gen)
    mask = torch.ones(tokens.shape, dtype=torch.float64)
    reward = (tokens == 2).any(dim=1).double()
    adv = (reward - reward.mean()).unsqueeze(-1).expand_as(mask)
    with torch.no_grad():
        mu = model.log_probs(tokens)  # μ_old = π_old = π_θ at θ = θ_old

    g_token, g_seq = _objective_grads(model, tokens, mu, adv, mask)
    assert g_seq.norm() > 1e-3
    torch.testing.assert_close(g_token, g_seq, rtol=1e-10, atol=1e-12)

    direction = [torch.randn_like(p) for p in model.parameters()]
    theta_old = [p.detach().clone() for p in model.parameters()]
    gaps = []
    for delta in (0.01, 0.02, 0.04, 0.08):
        with torch.no_grad():
            for p, p0, d in zip(model.parameters(), theta_old, direction):
                p.copy_(p0 + delta * d)
        g_token, g_seq = _objective_grads(model, tokens, mu, adv, mask)
        gaps.append(float((g_token - g_seq).norm() / g_seq.norm()))
    assert all(a < b for a, b in zip(gaps, gaps[1:])), gaps
    # First order: the relative gap is linear in the step size for small steps (ratio ≈ 2 per doubling).
    for a, b in zip(gaps, gaps[1:]):
        assert 1.6 < b / a < 2.4, gaps


def test_clip_sides_are_the_mask_and_the_statistics():
    """One clip rule: the keep mask is the complement of the two sides, and the stats count the same tokens."""
    shape = (6, 9)
    old = torch.randn(shape, dtype=torch.float64)
    log_prob = old + 0.5 * torch.randn(shape, dtype=torch.float64)
    adv = torch.randn(shape, dtype=torch.float64)
    adv[0] = 0.0
    ratio = torch.exp(log_prob - old)
    high, low = objectives.decoupled_clip_sides(ratio, adv, EPS_LOW, EPS_HIGH)
    assert high.any() and low.any() and not (high & low).any()
    assert not (high | low)[0].any()  # Â = 0 is never clipped
    assert torch.equal(objectives.decoupled_clip_keep_mask(ratio, adv, EPS_LOW, EPS_HIGH), ~(high | low))
    stats = objectives.minirl_stats(log_prob, old, adv, torch.ones(shape), EPS_LOW, EPS_HIGH)
    assert stats.clipfrac_pos_adv == pytest.approx(high.double().mean().item(), rel=1e-6)
    assert stats.clipfrac_neg_adv == pytest.approx(low.double().mean().item(), rel=1e-6)
