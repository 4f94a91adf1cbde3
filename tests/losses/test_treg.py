"""T-REG invariants (docs/methods.md, T-REG) on small float64 tensors."""

import math

import pytest
import torch

from tokalign.losses import contrastive_token_rewards, dpo_loss, treg_loss

from .helpers import logps, make_mask, randn, with_garbage

SEEDS = [0, 1, 2]
WEIGHTINGS = ["adaptive", "static"]


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _batch(seed: int, side: str = "right"):
    """Policy and reference log-probs and token rewards in (−½, ½) for 3 pairs (width 7)."""
    mask_w, mask_l = make_mask([4, 7, 1], 7, side), make_mask([5, 2, 3], 7, side)
    pw, pl, rw, rl = (logps(3, 7, seed=10 * seed + i) for i in range(4))
    tw = contrastive_token_rewards(randn(3, 7, seed=10 * seed + 4, scale=2.0), torch.zeros(3, 7), mask_w)
    tl = contrastive_token_rewards(randn(3, 7, seed=10 * seed + 5, scale=2.0), torch.zeros(3, 7), mask_l)
    return pw, pl, rw, rl, tw, tl, mask_w, mask_l


def test_contrastive_token_rewards_by_hand():
    better, worse = _f64([[-1.0, -2.0, float("nan")]]), _f64([[-2.0, -2.0, 5.0]])
    rewards = contrastive_token_rewards(better, worse, torch.tensor([[1, 1, 0]]))
    # σ(1) − ½ = 0.2310585786…; equal log-probs give 0; the masked NaN gives 0
    assert rewards[0].tolist() == pytest.approx([1 / (1 + math.exp(-1)) - 0.5, 0.0, 0.0], abs=1e-15)


def test_one_example_by_hand():
    mask = torch.tensor([[1, 1]])
    pw, rw = _f64([[-1.0, -2.0]]), _f64([[-1.5, -1.0]])
    pl, rl = _f64([[-3.0, -1.0]]), _f64([[-2.0, -2.0]])
    tw, tl = _f64([[0.2, 0.1]]), _f64([[0.3, 0.0]])
    beta, alpha = 0.1, 0.5
    loss, metrics = treg_loss(pw, pl, rw, rl, tw, tl, mask, mask, beta=beta, alpha=alpha)
    # Δ_w = (0.5, −1), Δ_l = (−1, 1): z = 0.1 · (−0.5 − 0) = −0.05
    # L_REG(y_w) = −0.1 · (0.2·(−1) + 0.1·(−2)) = 0.04; L_REG(y_l) = −0.1 · (0.3·(−3)) = 0.09; w = σ(0.05)
    w = 1 / (1 + math.exp(-0.05))
    dpo = math.log1p(math.exp(0.05))
    assert loss.item() == pytest.approx(dpo + alpha * w * 0.13, abs=1e-15)
    assert metrics["loss/dpo"].item() == pytest.approx(dpo, abs=1e-15)
    assert metrics["loss/reg"].item() == pytest.approx(alpha * w * 0.13, abs=1e-15)
    assert metrics["treg/weight"].item() == pytest.approx(w, abs=1e-15)
    assert metrics["treg/token_reward"].item() == pytest.approx(0.6 / 4, abs=1e-15)
    assert metrics["treg/token_reward_positive_frac"].item() == 0.75
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.05, abs=1e-15)  # plain βΔ, as DPO logs
    static, _ = treg_loss(pw, pl, rw, rl, tw, tl, mask, mask, beta=beta, alpha=alpha, weighting="static")
    assert static.item() == pytest.approx(dpo + alpha * 0.13, abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_alpha_zero_or_zero_token_rewards_is_dpo_exactly(seed, weighting):  # invariant 1
    pw, pl, rw, rl, tw, tl, mask_w, mask_l = _batch(seed)
    policy = [pw.requires_grad_(), pl.requires_grad_()]
    dpo, dpo_metrics = dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.1)
    dpo_grads = torch.autograd.grad(dpo, policy)
    for alpha, rewards in ((0.0, (tw, tl)), (0.5, (torch.zeros_like(tw), torch.zeros_like(tl)))):
        loss, metrics = treg_loss(pw, pl, rw, rl, *rewards, mask_w, mask_l, beta=0.1, alpha=alpha, weighting=weighting)
        assert torch.equal(loss, dpo)
        assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(loss, policy), dpo_grads))
        assert all(torch.equal(metrics[key], value) for key, value in dpo_metrics.items())


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.5])
def test_policy_equal_to_reference_gives_half_weight(alpha):  # invariant 2
    _, _, rw, rl, tw, tl, mask_w, mask_l = _batch(2)
    loss, metrics = treg_loss(rw, rl, rw, rl, tw, tl, mask_w, mask_l, beta=0.1, alpha=alpha)
    assert metrics["treg/weight"].item() == 0.5
    reg_w = -0.1 * (tw * rw * mask_w).sum(-1)
    reg_l = -0.1 * (tl * rl * mask_l).sum(-1)
    expected = (math.log(2) + 0.5 * alpha * (reg_w + reg_l)).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-15)


def _closed_form_gradients(pw, pl, rw, rl, tw, tl, mask_w, mask_l, beta, alpha, weighting):
    """∂L/∂log π_θ: DPO's ∓βσ(−z)/B per token plus the regulariser's −αwβ r̂/B."""
    with torch.no_grad():
        z = beta * (((pw - rw) * mask_w).sum(-1) - ((pl - rl) * mask_l).sum(-1))
        sigma = torch.sigmoid(-z).unsqueeze(-1)
        weight = sigma if weighting == "adaptive" else torch.ones_like(sigma)
        batch = len(z)
        grad_w = (-beta * sigma - alpha * weight * beta * tw) * mask_w / batch
        grad_l = (beta * sigma - alpha * weight * beta * tl) * mask_l / batch
    return grad_w, grad_l


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_gradient_matches_closed_form(seed, weighting):  # invariant 4 (adaptive), and its static form
    pw, pl, rw, rl, tw, tl, mask_w, mask_l = _batch(seed)
    beta, alpha = 0.3, 1.5
    pw, pl = pw.requires_grad_(), pl.requires_grad_()
    loss, _ = treg_loss(pw, pl, rw, rl, tw, tl, mask_w, mask_l, beta=beta, alpha=alpha, weighting=weighting)
    grads = torch.autograd.grad(loss, (pw, pl))
    expected = _closed_form_gradients(pw, pl, rw, rl, tw, tl, mask_w, mask_l, beta, alpha, weighting)
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    if weighting == "adaptive":  # −βσ(−z)(1 + αr̂_w) and +βσ(−z)(1 − αr̂_l)
        with torch.no_grad():
            z = beta * (((pw - rw) * mask_w).sum(-1) - ((pl - rl) * mask_l).sum(-1))
            scale = (beta * torch.sigmoid(-z) / len(z)).unsqueeze(-1)
        torch.testing.assert_close(grads[0], -scale * (1 + alpha * tw) * mask_w, rtol=0, atol=1e-14)
        torch.testing.assert_close(grads[1], scale * (1 - alpha * tl) * mask_l, rtol=0, atol=1e-14)


def test_static_regulariser_gradient_does_not_depend_on_the_margin():  # invariant 3
    pw, pl, rw, rl, tw, tl, mask_w, mask_l = _batch(1)
    pw, pl = pw.requires_grad_(), pl.requires_grad_()
    differences = []
    for shift in (0.0, 3.0, -5.0):  # moves z through very different σ(−z)
        ref_w = rw + shift
        treg, _ = treg_loss(pw, pl, ref_w, rl, tw, tl, mask_w, mask_l, beta=0.1, alpha=0.7, weighting="static")
        dpo, _ = dpo_loss(pw, pl, ref_w, rl, mask_w, mask_l, beta=0.1)
        treg_grads, dpo_grads = torch.autograd.grad(treg, (pw, pl)), torch.autograd.grad(dpo, (pw, pl))
        differences.append([a - b for a, b in zip(treg_grads, dpo_grads)])
    for other in differences[1:]:
        for a, b in zip(differences[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    torch.testing.assert_close(differences[0][0], -0.7 * 0.1 * tw * mask_w / 3, rtol=0, atol=1e-15)


def test_token_rewards_lie_in_the_open_interval_and_are_odd():  # invariant 5
    mask = make_mask([6, 0, 3], 7, "left")
    better, worse = randn(3, 7, seed=20, scale=4.0), randn(3, 7, seed=21, scale=4.0)
    rewards = contrastive_token_rewards(better, worse, mask)
    assert (rewards.abs() < 0.5).all()
    assert (rewards[mask == 0] == 0).all()
    assert torch.equal(contrastive_token_rewards(worse, better, mask), -rewards)
    assert (contrastive_token_rewards(better, better.clone(), mask) == 0).all()
    assert torch.equal(contrastive_token_rewards(with_garbage(better, mask), worse, mask), rewards)
    assert not contrastive_token_rewards(better.requires_grad_(), worse, mask).requires_grad
    expected = torch.where(mask.bool(), torch.sigmoid(better - worse) - 0.5, 0)
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_garbage_padding_and_batch_mates_do_not_matter(seed, weighting):  # invariant 6
    batch = _batch(seed)
    mask_w, mask_l = batch[-2:]
    kwargs = dict(beta=0.1, alpha=1.0, weighting=weighting)
    loss, _ = treg_loss(*batch, **kwargs)
    singles = []
    for row in range(3):
        new_w = make_mask([int(mask_w[row].sum())], 10, "left")
        new_l = make_mask([int(mask_l[row].sum())], 10, "left")
        moved = []
        for x, old, new in zip(batch[:6], [mask_w, mask_l] * 3, [new_w, new_l] * 3):
            y = torch.full((1, 10), float("nan"), dtype=torch.float64)
            y[new.bool()] = x[row][old[row].bool()]
            moved.append(y)
        singles.append(treg_loss(*moved, new_w, new_l, **kwargs)[0])
    torch.testing.assert_close(loss, torch.stack(singles).mean(), rtol=0, atol=1e-14)
    garbage = [with_garbage(x, m) for x, m in zip(batch[:6], [mask_w, mask_l] * 3)]
    assert torch.equal(treg_loss(*garbage, mask_w, mask_l, **kwargs)[0], loss)


def test_no_gradient_reaches_reference_or_token_rewards():  # invariant 6
    pw, pl, rw, rl, tw, tl, mask_w, mask_l = (t.requires_grad_() if t.is_floating_point() else t for t in _batch(0))
    loss, metrics = treg_loss(pw, pl, rw, rl, tw, tl, mask_w, mask_l, beta=0.1, alpha=1.0)
    loss.backward()
    assert pw.grad is not None and pl.grad is not None
    assert all(t.grad is None for t in (rw, rl, tw, tl))
    assert not any(value.requires_grad for value in metrics.values())


def test_large_alpha_warns_and_unknown_weighting_fails():
    batch = _batch(0)
    with pytest.warns(UserWarning, match="alpha"):
        treg_loss(*batch, beta=0.1, alpha=2.0)
    with pytest.raises(ValueError, match="weighting"):
        treg_loss(*batch, beta=0.1, alpha=0.5, weighting="dynamic")
