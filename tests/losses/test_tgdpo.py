"""TGDPO invariants (docs/methods.md, TGDPO) on small float64 tensors."""

import math

import pytest
import torch

from tokalign.losses import dpo_loss, tgdpo_loss

from .helpers import logps, make_mask, with_garbage

SEEDS = [0, 1, 2]


def _batch(seed: int, side: str = "right"):
    """Policy, reference and guidance log-probs for 3 pairs of different lengths (width 7)."""
    mask_w, mask_l = make_mask([4, 7, 1], 7, side), make_mask([5, 2, 3], 7, side)
    pw, pl, rw, rl = (logps(3, 7, seed=10 * seed + i) for i in range(4))
    gw, gl = rw + logps(3, 7, seed=10 * seed + 4) + 1.5, rl + logps(3, 7, seed=10 * seed + 5) + 1.5
    return pw, pl, rw, rl, gw, gl, mask_w, mask_l


def test_one_example_by_hand():
    mask = torch.tensor([[1, 1]])
    pw = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    rw = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    gw = torch.tensor([[-0.5, -3.0]], dtype=torch.float64)
    pl = torch.tensor([[-3.0, -1.0]], dtype=torch.float64)
    rl = torch.tensor([[-2.0, -2.0]], dtype=torch.float64)
    gl = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    beta, alpha, guidance_beta = 0.1, 0.5, 0.2
    loss, metrics = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask, mask, beta=beta, alpha=alpha, guidance_beta=guidance_beta)
    # r̂_w = 0.2·(1, −2) → f_w = (1.1, 0.8); r̂_l = 0.2·(1, 0) → f_l = (0.9, 1); Δ_w = (0.5, −1), Δ_l = (−1, 1)
    z = beta * (1.1 * 0.5 + 0.8 * -1.0) - beta * (0.9 * -1.0 + 1.0 * 1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-z)), abs=1e-12)
    assert metrics["f/min"].item() == pytest.approx(0.8)
    assert metrics["f/mean"].item() == pytest.approx((1.1 + 0.8 + 0.9 + 1.0) / 4)
    assert metrics["f/clamped_frac"].item() == 0.0
    assert metrics["guidance/chosen"].item() == pytest.approx(0.2 * (1 - 2))
    assert metrics["guidance/rejected"].item() == pytest.approx(0.2)
    assert metrics["rewards/chosen"].item() == pytest.approx(beta * -0.5)  # unweighted, as DPO logs


@pytest.mark.parametrize("seed", SEEDS)
def test_alpha_zero_is_dpo_exactly(seed):  # invariant 1
    pw, pl, rw, rl, gw, gl, mask_w, mask_l = _batch(seed)
    policy = [pw.requires_grad_(), pl.requires_grad_()]
    loss, metrics = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=0.0, guidance_beta=3.0)
    tg_grads = torch.autograd.grad(loss, policy)
    dpo, dpo_metrics = dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.1)
    assert torch.equal(loss, dpo)
    for ours, theirs in zip(tg_grads, torch.autograd.grad(dpo, policy)):
        assert torch.equal(ours, theirs)
    assert all(torch.equal(metrics[key], value) for key, value in dpo_metrics.items())


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_guidance_equal_to_reference_is_dpo_exactly(alpha):  # invariant 2
    pw, pl, rw, rl, _, _, mask_w, mask_l = _batch(1)
    loss, _ = tgdpo_loss(pw, pl, rw, rl, rw.clone(), rl.clone(), mask_w, mask_l, beta=0.1, alpha=alpha)
    assert torch.equal(loss, dpo_loss(pw, pl, rw, rl, mask_w, mask_l, beta=0.1)[0])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0, 40.0])
@pytest.mark.parametrize("f_min", [None, 0.1])
def test_policy_equal_to_reference_gives_log_two(alpha, f_min):  # invariant 3
    _, _, rw, rl, gw, gl, mask_w, mask_l = _batch(2)
    loss, _ = tgdpo_loss(rw, rl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=alpha, f_min=f_min)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("f_min", [None, 0.9])
def test_gradient_matches_closed_form(seed, f_min):  # invariant 4
    pw, pl, rw, rl, gw, gl, mask_w, mask_l = _batch(seed)
    beta, alpha, guidance_beta = 0.3, 2.0, 0.2
    pw, pl = pw.requires_grad_(), pl.requires_grad_()
    loss, _ = tgdpo_loss(
        pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=beta, alpha=alpha, guidance_beta=guidance_beta, f_min=f_min
    )
    grad_w, grad_l = torch.autograd.grad(loss, (pw, pl))

    with torch.no_grad():
        f_w = (1 + alpha * guidance_beta * (gw - rw)) * mask_w
        f_l = (1 - alpha * guidance_beta * (gl - rl)) * mask_l
        if f_min is not None:
            f_w, f_l = f_w.clamp(min=f_min) * mask_w, f_l.clamp(min=f_min) * mask_l
        z = beta * ((f_w * (pw - rw)).sum(-1) - (f_l * (pl - rl)).sum(-1))
        scale = (beta * torch.sigmoid(-z) / len(z)).unsqueeze(-1)
    torch.testing.assert_close(grad_w, -scale * f_w, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad_l, scale * f_l, rtol=0, atol=1e-14)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_swapping_responses_and_negating_guidance_flips_z(seed, alpha):  # invariant 5
    pw, pl, rw, rl, gw, gl, mask_w, mask_l = _batch(seed)
    for row in range(3):
        one = lambda x: x[row : row + 1]  # noqa: E731
        loss, _ = tgdpo_loss(*map(one, (pw, pl, rw, rl, gw, gl, mask_w, mask_l)), beta=0.1, alpha=alpha)
        negated_gl, negated_gw = 2 * rl - gl, 2 * rw - gw  # r̂ → −r̂
        swapped, _ = tgdpo_loss(
            *map(one, (pl, pw, rl, rw, negated_gl, negated_gw, mask_l, mask_w)), beta=0.1, alpha=alpha
        )
        assert (torch.exp(-loss) + torch.exp(-swapped)).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_garbage_padding_and_batch_mates_do_not_matter(seed):  # invariant 6
    batch = _batch(seed)
    mask_w, mask_l = batch[-2:]
    kwargs = dict(beta=0.1, alpha=1.0, f_min=0.0)
    loss, _ = tgdpo_loss(*batch, **kwargs)
    singles = []
    for row in range(3):
        # alone, left-padded to width 10 (and so shifted), NaN at every masked position
        new_w = make_mask([int(mask_w[row].sum())], 10, "left")
        new_l = make_mask([int(mask_l[row].sum())], 10, "left")
        moved = []
        for x, old, new in zip(batch[:6], [mask_w, mask_l] * 3, [new_w, new_l] * 3):
            y = torch.full((1, 10), float("nan"), dtype=torch.float64)
            y[new.bool()] = x[row][old[row].bool()]
            moved.append(y)
        singles.append(tgdpo_loss(*moved, new_w, new_l, **kwargs)[0])
    torch.testing.assert_close(loss, torch.stack(singles).mean(), rtol=0, atol=1e-14)
    garbage = [with_garbage(x, m) for x, m in zip(batch[:6], [mask_w, mask_l] * 3)]
    assert torch.equal(tgdpo_loss(*garbage, mask_w, mask_l, **kwargs)[0], loss)


def test_no_gradient_reaches_reference_or_guidance():  # invariant 7
    pw, pl, rw, rl, gw, gl, mask_w, mask_l = (t.requires_grad_() if t.is_floating_point() else t for t in _batch(0))
    loss, metrics = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=1.0)
    loss.backward()
    assert pw.grad is not None and pl.grad is not None
    assert all(t.grad is None for t in (rw, rl, gw, gl))
    assert not any(value.requires_grad for value in metrics.values())


@pytest.mark.parametrize("c_w, c_l", [(0.3, -0.2), (-1.0, 0.5), (2.0, 2.0)])
def test_constant_guidance_is_dpo_with_per_side_betas(c_w, c_l):  # invariant 8
    pw, pl, rw, rl, _, _, mask_w, mask_l = _batch(1)
    beta, alpha, guidance_beta = 0.1, 0.5, 0.25
    gw, gl = rw + c_w / guidance_beta, rl + c_l / guidance_beta
    loss, _ = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=beta, alpha=alpha, guidance_beta=guidance_beta)
    delta_w = ((pw - rw) * mask_w).sum(-1)
    delta_l = ((pl - rl) * mask_l).sum(-1)
    z = beta * (1 + alpha * c_w) * delta_w - beta * (1 - alpha * c_l) * delta_l
    expected = sum(math.log1p(math.exp(-v)) for v in z.tolist()) / len(z)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_f_min_clamps_and_metrics_report_raw_f():
    pw, pl, rw, rl, gw, gl, mask_w, mask_l = _batch(0)
    gw = rw - 40.0  # r̂_w = 0.1 · (−40) = −4 → f_w = 1 + 0.5 · (−4) = −1 on every chosen token
    _, raw = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=0.5)
    loss, clamped = tgdpo_loss(pw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=0.5, f_min=0.0)
    assert raw["f/min"].item() == pytest.approx(-1.0) and clamped["f/min"].item() == pytest.approx(-1.0)
    assert raw["f/clamped_frac"].item() == 0.0
    n_chosen, n_all = int(mask_w.sum()), int(mask_w.sum() + mask_l.sum())
    assert clamped["f/clamped_frac"].item() == pytest.approx(n_chosen / n_all)
    # f_w clamped to 0: the chosen side drops out of z entirely
    expected, _ = tgdpo_loss(rw, pl, rw, rl, gw, gl, mask_w, mask_l, beta=0.1, alpha=0.5, f_min=0.0)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-14)
