"""Token-level PPO pieces and their macro-action forms (docs/methods.md, MA-RLHF: invariants 2, 7, 9)."""

import math

import pytest
import torch

from tokalign.losses import (
    gae,
    kl_penalty_rewards,
    macro_gae,
    ppo_policy_loss,
    ppo_value_loss,
    segment_macro_actions,
    whiten,
)

from .helpers import logps, make_mask, randn, reference_token_gae, with_garbage

NAN = float("nan")


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_rewards_by_hand(estimator):
    mask = torch.tensor([[1, 1, 1, 0]])
    old, ref = _f64([[-1.0, -2.0, -0.5, NAN]]), _f64([[-1.5, -1.0, -0.5, 9.0]])
    rewards = kl_penalty_rewards(old, ref, mask, _f64([2.0]), kl_coef=0.1, estimator=estimator)
    k1 = [0.5, -1.0, 0.0]
    kl = k1 if estimator == "k1" else [math.exp(-v) - 1 + v for v in k1]
    expected = [-0.1 * kl[0], -0.1 * kl[1], -0.1 * kl[2] + 2.0, 0.0]
    assert rewards[0].tolist() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("side", ["right", "left", "middle"])
def test_score_lands_once_on_the_last_valid_token(side):  # invariant 7
    mask = make_mask([0, 1, 4, 6], 8, side)
    old = with_garbage(logps(4, 8, seed=0), mask)
    ref = with_garbage(logps(4, 8, seed=1), mask)
    score = _f64([5.0, -3.0, 2.5, 1.0])
    with_score = kl_penalty_rewards(old, ref, mask, score, kl_coef=0.05)
    without = kl_penalty_rewards(old, ref, mask, torch.zeros(4, dtype=torch.float64), kl_coef=0.05)
    added = with_score - without
    for row in range(4):
        positions = mask[row].nonzero().flatten().tolist()
        expected = torch.zeros(8, dtype=torch.float64)
        if positions:  # an empty response has nowhere to put its score
            expected[positions[-1]] = score[row]
        torch.testing.assert_close(added[row], expected, rtol=0, atol=1e-15)
    assert (with_score[mask == 0] == 0).all()
    # under `sum`, one segment collects every reward, the score exactly once (γ = 1, V = 0)
    ids = segment_macro_actions(mask, "fixed", n=100, isolate_last=False)
    advantages, _ = macro_gae(with_score, torch.zeros_like(with_score), mask, ids, gamma=1.0)
    single_advantage = advantages.sum(-1) / mask.sum(-1).clamp(min=1)
    torch.testing.assert_close(single_advantage, with_score.sum(-1), rtol=0, atol=1e-12)


def test_gae_by_hand_on_three_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    rewards = _f64([[NAN, NAN, 0.1, -0.2, 1.0]])
    values = _f64([[NAN, NAN, 0.5, 0.3, 0.4]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # δ = (0.1 + 0.9·0.3 − 0.5, −0.2 + 0.9·0.4 − 0.3, 1.0 − 0.4) = (−0.13, −0.14, 0.6); γλ = 0.72
    expected = [0.0, 0.0, -0.13 + 0.72 * (-0.14 + 0.72 * 0.6), -0.14 + 0.72 * 0.6, 0.6]
    assert advantages[0].tolist() == pytest.approx(expected, abs=1e-15)
    assert returns[0].tolist() == pytest.approx([0.0, 0.0, expected[2] + 0.5, expected[3] + 0.3, 1.0], abs=1e-15)


@pytest.mark.parametrize("side", ["right", "left"])
def test_gae_is_textbook_token_gae(side):
    mask = make_mask([5, 1, 0, 8], 8, side)
    rewards, values = randn(4, 8, seed=1), randn(4, 8, seed=2)
    got = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    expected = reference_token_gae(rewards, values, mask, 0.99, 0.95)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_policy_loss_by_hand():
    mask = torch.tensor([[1, 1, 1, 0]])
    old = _f64([[-1.0, -1.0, -1.0, NAN]])
    new = old + _f64([[math.log(1.5), math.log(0.9), math.log(0.5), 0.0]])
    advantages = _f64([[1.0, -2.0, -1.0, NAN]])
    loss, metrics = ppo_policy_loss(new, old, advantages, mask, clip_eps=0.2)
    # ρ = (1.5, 0.9, 0.5): max(−Âρ, −Â clip ρ) = (−1.2, 1.8, 0.8); tokens 0 and 2 clipped
    assert loss.item() == pytest.approx((-1.2 + 1.8 + 0.8) / 3, abs=1e-15)
    assert metrics["policy/clipfrac"].item() == pytest.approx(2 / 3)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in (1.5, 0.9, 0.5)) / 3
    assert metrics["policy/approx_kl"].item() == pytest.approx(expected_kl, abs=1e-15)


def test_segment_level_policy_loss_uses_the_joint_ratio_once_per_segment():
    mask = torch.tensor([[1, 1, 1]])
    old = _f64([[-1.0, -1.0, -1.0]])
    new = (old + _f64([[math.log(1.5), math.log(0.9), math.log(0.5)]])).requires_grad_()
    advantages = _f64([[1.0, 1.0, -1.0]])
    ids = torch.tensor([[0, 0, 1]])
    loss, metrics = ppo_policy_loss(new, old, advantages, mask, segment_ids=ids, level="segment")
    # ρ_0 = 1.5 · 0.9 = 1.35 → −1 · 1.2; ρ_1 = 0.5 → 0.8; each segment once, over N = 3 tokens
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 3, abs=1e-15)
    assert metrics["policy/clipfrac"].item() == 1.0
    loss.backward()
    assert (new.grad == 0).all()  # every segment clipped


@pytest.mark.parametrize("side", ["right", "left", "middle"])
@pytest.mark.parametrize("clip_eps", [0.2, 0.05])
def test_singleton_segments_are_token_level_ppo_exactly(side, clip_eps):  # invariant 2, losses
    mask = make_mask([5, 1, 0, 6], 8, side)
    old = with_garbage(logps(4, 8, seed=3), mask)
    new = (old + randn(4, 8, seed=4, scale=0.2)).detach().requires_grad_()
    rewards, values = randn(4, 8, seed=5), randn(4, 8, seed=6)
    ids = segment_macro_actions(mask, "fixed", n=1)
    advantages, returns = macro_gae(rewards, values, mask, ids)
    token_advantages, token_returns = reference_token_gae(rewards, values, mask, 1.0, 0.95)
    assert torch.equal(advantages, token_advantages) and torch.equal(returns, token_returns)

    token_loss, token_metrics = ppo_policy_loss(new, old, advantages, mask, clip_eps=clip_eps)
    (token_grad,) = torch.autograd.grad(token_loss, new)
    segment_loss, segment_metrics = ppo_policy_loss(
        new, old, advantages, mask, clip_eps=clip_eps, segment_ids=ids, level="segment"
    )
    (segment_grad,) = torch.autograd.grad(segment_loss, new)
    assert torch.equal(token_loss, segment_loss) and torch.equal(token_grad, segment_grad)
    assert all(torch.equal(token_metrics[k], segment_metrics[k]) for k in token_metrics)


@pytest.mark.parametrize("level", ["token", "segment"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_gradient_at_old_policy_is_advantage_weighted(level, side):  # invariant 9
    mask = make_mask([7, 2, 5], 9, side)
    old = with_garbage(logps(3, 9, seed=7), mask)
    new = old.clone().requires_grad_()
    ids = segment_macro_actions(mask, "randomized", lengths=(1, 2, 3), seed=1)
    advantages, _ = macro_gae(randn(3, 9, seed=8), randn(3, 9, seed=9), mask, ids)
    loss, metrics = ppo_policy_loss(new, old, advantages, mask, segment_ids=ids, level=level)
    loss.backward()
    n_tokens = int(mask.sum())
    expected = torch.where(mask.bool(), -advantages / n_tokens, 0)
    torch.testing.assert_close(new.grad, expected, rtol=0, atol=1e-15)
    assert metrics["policy/clipfrac"].item() == 0.0 and metrics["policy/approx_kl"].item() == 0.0


def test_value_loss_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    values = _f64([[1.0, 0.0, NAN]]).requires_grad_()
    old_values, returns = _f64([[0.5, 0.0, NAN]]), _f64([[2.0, 1.0, NAN]])
    loss, metrics = ppo_value_loss(values, old_values, returns, mask, clip_eps_value=0.2)
    # token 0: (1 − 2)² = 1 vs (0.7 − 2)² = 1.69 → 1.69 (clipped); token 1: 1 vs 1 → 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-15)
    assert metrics["value/clipfrac"].item() == 0.5
    loss.backward()
    # clipped term wins at token 0, so V gets no gradient there; token 1: ½ · 2(V − G) / 2
    assert values.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0], abs=1e-15)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_over_valid_tokens(shift_mean):
    mask = make_mask([5, 2, 6], 7, "left")
    x = (randn(3, 7, seed=10, scale=3.0) + 4.0).requires_grad_()
    whitened = whiten(with_garbage(x, mask), mask, shift_mean=shift_mean)
    valid = whitened[mask.bool()]
    original_mean = x[mask.bool()].mean()
    assert valid.mean().item() == pytest.approx(0.0 if shift_mean else original_mean.item(), abs=1e-12)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)  # unbiased, as TRL
    assert (whitened[mask == 0] == 0).all()
    whitened.sum().backward()
    assert torch.isfinite(x.grad).all()
