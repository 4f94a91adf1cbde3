"""Text2Grad token rewards and clause GAE (docs/methods.md, Text2Grad: invariants 1–3, 5, 6)."""

import math

import pytest
import torch

from tokalign.losses import (
    clause_gae,
    clause_mask,
    gae,
    kl_penalty_rewards,
    ppo_policy_loss,
    text2grad_length_weights,
    text2grad_token_rewards,
)

from .helpers import logps, make_mask, randn, reference_token_gae, with_garbage

NAN = float("nan")
SIDES = ["right", "left", "middle"]


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _labels(seed: int, mask: torch.Tensor) -> torch.Tensor:
    """Labels in {−1, 0, 1} (about a third each), NaN where mask is 0."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 2, mask.shape, generator=gen).to(torch.float64)
    return with_garbage(labels, mask)


def _batch(seed: int, side: str = "right"):
    mask = make_mask([5, 0, 1, 8], 9, side)
    old, ref = (with_garbage(logps(4, 9, seed=10 * seed + i), mask) for i in range(2))
    return _labels(seed, mask), old - ref, mask


def test_rewards_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    labels = _f64([[0.0, 1.0, -1.0, 0.0, NAN]])
    kl = _f64([[0.5, -1.0, 0.25, 2.0, NAN]])
    rewards, metrics = text2grad_token_rewards(labels, mask, kl=kl, kl_coef=0.1)
    assert rewards[0].tolist() == pytest.approx([-0.05, 1.1, -1.025, -0.2, 0.0], abs=1e-15)
    assert metrics["text2grad/positive_share"].item() == 0.25
    assert metrics["text2grad/negative_share"].item() == 0.25
    assert metrics["text2grad/label_return"].item() == 0.0
    assert metrics["text2grad/kl"].item() == pytest.approx(1.75 / 4)
    scored, _ = text2grad_token_rewards(labels, mask, score=_f64([3.0]), score_coef=0.5)
    assert scored[0].tolist() == [0.0, 1.0, -1.0, 1.5, 0.0]


def test_length_weights_by_hand():
    mask = torch.ones(1, 60, dtype=torch.long)
    labels = torch.zeros(1, 60, dtype=torch.float64)
    labels[0, 3] = 1.0  # ℓ = 1 at position 3, so ℓ = 54 = L* + 6 at position 56
    weights = text2grad_length_weights(labels, mask)
    assert weights[0, :3].tolist() == [1.0, 1.0, 1.0]
    assert weights[0, 3].item() == pytest.approx(1 / (1 + math.exp(-10)))  # clipped at −10
    assert weights[0, 56].item() == pytest.approx(0.5)
    assert weights[0, 59].item() == pytest.approx(1 / (1 + math.exp(3)))


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_no_labels_is_ppo_kl_reward_and_a_last_token_label_is_the_score(side, estimator):  # invariant 1
    _, _, mask = _batch(0, side)
    old, ref = (with_garbage(logps(4, 9, seed=i), mask) for i in range(2))
    kl = -kl_penalty_rewards(old, ref, mask, torch.zeros(4, dtype=torch.float64), kl_coef=1.0, estimator=estimator)
    zeros = with_garbage(torch.zeros(4, 9, dtype=torch.float64), mask)
    rewards, _ = text2grad_token_rewards(zeros, mask, kl=kl, kl_coef=0.05)
    ppo = kl_penalty_rewards(old, ref, mask, torch.zeros(4, dtype=torch.float64), kl_coef=0.05, estimator=estimator)
    assert torch.equal(rewards, ppo)
    scores = _f64([2.0, 7.0, -1.5, 0.5])
    valid = mask.bool()
    last = valid & (valid.cumsum(-1) == valid.sum(-1, keepdim=True))
    labels = torch.where(last, scores.unsqueeze(-1), 0.0)
    rewards, _ = text2grad_token_rewards(labels, mask, kl=kl, kl_coef=0.05)
    assert torch.equal(rewards, kl_penalty_rewards(old, ref, mask, scores, kl_coef=0.05, estimator=estimator))


def test_rewards_are_linear_in_labels_and_kl_coef_and_zero_off_mask():  # invariant 2
    labels, kl, mask = _batch(1)
    other = _labels(7, mask)

    def rewards(lab, coef):
        return text2grad_token_rewards(lab, mask, kl=kl, kl_coef=coef)[0]

    both = with_garbage(torch.where(mask.bool(), 2.0 * labels - 0.5 * other, 0), mask)
    expected = 2.0 * rewards(labels, 0.0) - 0.5 * rewards(other, 0.0) + 0.3 * (rewards(0 * labels, 1.0))
    torch.testing.assert_close(rewards(both, 0.3), expected, rtol=0, atol=1e-14)
    assert (rewards(labels, 0.3)[mask == 0] == 0).all()
    plain, _ = text2grad_token_rewards(labels, mask, kl=kl, kl_coef=0.3, length_weighting=False)
    assert torch.equal(plain, rewards(labels, 0.3))  # length weighting off: weight 1


@pytest.mark.parametrize("side", SIDES)
def test_undiscounted_advantage_is_reward_to_go_and_a_label_reaches_back_discounted(side):  # invariant 3
    labels, kl, mask = _batch(2, side)
    rewards, _ = text2grad_token_rewards(labels, mask, kl=kl, kl_coef=0.1)
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    to_go = torch.where(mask.bool(), rewards, 0).flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(advantages, torch.where(mask.bool(), to_go, 0), rtol=0, atol=1e-13)

    mask = torch.ones(1, 8, dtype=torch.long)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8)):
        base = text2grad_token_rewards(torch.zeros(1, 8, dtype=torch.float64), mask)[0]
        one = torch.zeros(1, 8, dtype=torch.float64)
        one[0, 6] = -1.0  # a poor token at t + k = 6
        added = text2grad_token_rewards(one, mask)[0]
        values = torch.zeros(1, 8, dtype=torch.float64)
        gap = gae(added, values, mask, gamma=gamma, lam=lam)[0] - gae(base, values, mask, gamma=gamma, lam=lam)[0]
        expected = [-((gamma * lam) ** (6 - t)) if t <= 6 else 0.0 for t in range(8)]
        assert gap[0].tolist() == pytest.approx(expected, abs=1e-14)


def test_length_weights_lie_in_0_1_and_do_not_increase():  # invariant 5
    mask = make_mask([100, 70, 3], 100)
    labels = _labels(3, mask)
    for target, alpha in ((48, 1.0), (10, 0.5), (0, 2.0)):
        weights = text2grad_length_weights(labels, mask, target_length=target, alpha=alpha)
        assert ((weights > 0) & (weights <= 1)).all()
        assert (weights[:, 1:] <= weights[:, :-1]).all()
        rows = torch.zeros(1, 120, dtype=torch.float64)
        rows[0, 0] = 1.0
        half = text2grad_length_weights(rows, torch.ones(1, 120), target_length=target, alpha=alpha)
        assert half[0, target + round(6 / alpha) - 1].item() == pytest.approx(0.5)  # ℓ = L* + 6/α
    weighted, _ = text2grad_token_rewards(labels, mask, length_weighting=True)
    plain, _ = text2grad_token_rewards(labels, mask)
    assert (weighted.abs() <= plain.abs()).all()


@pytest.mark.parametrize("side", SIDES)
def test_padding_and_batch_mates_do_not_matter(side):  # invariant 6
    labels, kl, mask = _batch(4, side)
    scores = _f64([1.0, 2.0, 3.0, 4.0])
    kwargs = dict(kl_coef=0.2, length_weighting=True, target_length=2, score_coef=0.5)
    rewards, _ = text2grad_token_rewards(labels, mask, kl=kl, score=scores, **kwargs)
    for row in range(4):
        length = int(mask[row].sum())
        alone = make_mask([length], 12, "left")
        moved = []
        for x in (labels, kl):
            y = torch.full((1, 12), NAN, dtype=torch.float64)
            y[alone.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        single, _ = text2grad_token_rewards(moved[0], alone, kl=moved[1], score=scores[row : row + 1], **kwargs)
        assert torch.equal(single[alone.bool()], rewards[row][mask[row].bool()])


def test_rewards_are_detached_and_negative_coefficients_fail():
    labels, kl, mask = _batch(5)
    kl = kl.clone().requires_grad_()
    rewards, metrics = text2grad_token_rewards(labels, mask, kl=kl, kl_coef=0.1)
    assert not rewards.requires_grad and not any(v.requires_grad for v in metrics.values())
    for name in ("kl_coef", "score_coef", "alpha"):
        with pytest.raises(ValueError, match=name):
            text2grad_token_rewards(labels, mask, **{name: -0.1})


def test_policy_gradient_at_old_policy_carries_the_label():
    """At θ = θ_old the PPO gradient is −(1/N) Σ_t Â_t ∇log π_t: a poor label pushes earlier tokens down."""
    mask = torch.ones(1, 4, dtype=torch.long)
    labels = _f64([[0.0, 0.0, -1.0, 0.0]])
    rewards, _ = text2grad_token_rewards(labels, mask)
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    old = logps(1, 4, seed=0)
    new = old.clone().requires_grad_()
    loss, _ = ppo_policy_loss(new, old, advantages, mask)
    loss.backward()
    assert new.grad[0].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.0])


@pytest.mark.parametrize("side", SIDES)
def test_clause_gae_without_holes_is_gae(side):
    _, _, mask = _batch(6, side)
    rewards, values = randn(4, 9, seed=1), randn(4, 9, seed=2)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.7)):  # no interior holes: the paper's GAE
        got = clause_gae(rewards, values, mask, gamma=gamma, lam=lam)
        for mine, want, ppo in zip(
            got,
            reference_token_gae(rewards, values, mask, gamma, lam),
            gae(rewards, values, mask, gamma=gamma, lam=lam),
        ):
            torch.testing.assert_close(mine, want, rtol=0, atol=1e-12)
            torch.testing.assert_close(mine, ppo, rtol=0, atol=1e-12)


def test_clause_mask_and_gae_restart_after_punctuation_by_hand():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0]])
    punctuation = torch.tensor([[True, False, True, False, False, True, False]])  # position 0 is prompt
    clauses = clause_mask(mask, punctuation)
    assert clauses.tolist() == [[0, 1, 1, 0, 1, 1, 0]]  # the token after the comma at 2 loses its place
    rewards = _f64([[NAN, 1.0, 2.0, 4.0, 8.0, 16.0, NAN]])
    values = _f64([[NAN, 0.5, 0.25, 9.0, 0.0, 1.0, NAN]])
    advantages, returns = clause_gae(rewards, values, clauses, gamma=1.0, lam=1.0)
    # clause 1: tokens 1–2, episode ends at 2 (V_3 = 0); clause 2: tokens 4–5
    # δ = (1 + 0.25 − 0.5, 2 − 0.25, ·, 8 + 1 − 0, 16 − 1)
    assert advantages[0].tolist() == [0.0, 0.75 + 1.75, 1.75, 0.0, 9.0 + 15.0, 15.0, 0.0]
    assert returns[0].tolist() == [0.0, 3.0, 2.0, 0.0, 24.0, 16.0, 0.0]
    plain, _ = clause_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert plain[0, 1].item() == 1 + 2 + 4 + 8 + 16 - 0.5  # without holes a label reaches every earlier token
