"""RTO token rewards (docs/methods.md, RTO: invariants 1–6) on small float64 tensors."""

import pytest
import torch

from tokalign.losses import (
    gae,
    kl_penalty_rewards,
    macro_gae,
    ppo_policy_loss,
    rto_token_rewards,
    segment_macro_actions,
)

from .helpers import logps, make_mask, randn, with_garbage

NAN = float("nan")
SIDES = ["right", "left", "middle"]


def _f64(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _batch(seed: int, side: str = "right"):
    """Old, reference and DPO log-probs (garbage at masked positions) and scores for 4 rows, one empty."""
    mask = make_mask([5, 0, 1, 8], 9, side)
    old, ref = (with_garbage(logps(4, 9, seed=10 * seed + i), mask) for i in range(2))
    dpo = with_garbage(ref + randn(4, 9, seed=10 * seed + 2, scale=1.5), mask)
    scores = _f64([2.0, 7.0, -12.0, 0.5])
    return old, ref, dpo, scores, mask


def test_rewards_by_hand():
    mask = torch.tensor([[1, 1, 1, 0]])
    old, ref = _f64([[-1.0, -2.0, -0.5, NAN]]), _f64([[-1.5, -1.0, -0.5, 9.0]])
    dpo = _f64([[0.0, -1.2, -0.1, NAN]])
    rewards, metrics = rto_token_rewards(old, ref, dpo, _f64([12.0]), mask)
    # d = clip(0.05 · (1.5, −0.2, 0.4), ±0.05) = (0.05, −0.01, 0.02); −0.01 · (0.5, −1, 0); score clip(12) = 10
    expected = [0.05 - 0.005, -0.01 + 0.01, 0.02 + 10.0, 0.0]
    assert rewards[0].tolist() == pytest.approx(expected, abs=1e-15)
    assert metrics["rto/dpo_reward"].item() == pytest.approx(0.06 / 3, abs=1e-15)
    assert metrics["rto/dpo_return"].item() == pytest.approx(0.06, abs=1e-15)
    assert metrics["rto/dpo_clipfrac"].item() == pytest.approx(1 / 3)
    assert metrics["rto/kl"].item() == pytest.approx(-0.5 / 3, abs=1e-15)
    assert metrics["rto/score"].item() == 10.0 and metrics["rto/empty_responses"].item() == 0
    separate, _ = rto_token_rewards(
        old, ref, dpo, _f64([12.0]), mask, dpo_ref_logps=_f64([[0.0, 0.0, 0.0, NAN]]), dpo_clip=None, score_clip=None
    )
    # d = 0.05 · (0, −1.2, −0.1) against the DPO model's own reference; no clips
    assert separate[0].tolist() == pytest.approx([-0.005, -0.06 + 0.01, -0.005 + 12.0, 0.0], abs=1e-15)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_no_dpo_term_is_ppo_exactly(side, kl_estimator):  # invariant 1
    old, ref, dpo, scores, mask = _batch(0, side)
    ppo_rewards = kl_penalty_rewards(old, ref, mask, scores.clamp(-10, 10), kl_coef=0.01, estimator=kl_estimator)
    ids = segment_macro_actions(mask, "fixed", n=1)
    values = randn(4, 9, seed=3)
    new = (old + randn(4, 9, seed=4, scale=0.1)).detach().requires_grad_()
    ppo_advantages, _ = macro_gae(ppo_rewards, values, mask, ids)
    ppo_loss, _ = ppo_policy_loss(new, old, ppo_advantages, mask)
    for kwargs in (dict(dpo_scale=0.0), dict(dpo_logps=ref.clone())):
        inputs = dict(old_logps=old, ref_logps=ref, dpo_logps=dpo, scores=scores, mask=mask) | kwargs
        rewards, _ = rto_token_rewards(**inputs, kl_estimator=kl_estimator)
        assert torch.equal(rewards, ppo_rewards)
        advantages, _ = macro_gae(rewards, values, mask, ids)
        assert torch.equal(advantages, ppo_advantages)
        assert torch.equal(ppo_policy_loss(new, old, advantages, mask)[0], ppo_loss)


@pytest.mark.parametrize("seed", range(3))
def test_dpo_term_alone_sums_to_the_sequence_dpo_reward(seed):  # invariant 2
    old, ref, dpo, scores, mask = _batch(seed)
    rewards, _ = rto_token_rewards(old, ref, dpo, scores, mask, kl_coef=0.0, score_coef=0.0, dpo_clip=None)
    expected = 0.05 * torch.where(mask.bool(), dpo - ref, 0).sum(-1)
    torch.testing.assert_close(rewards.sum(-1), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("clip", [0.01, 0.05, 0.2])
def test_clip_bounds_the_dpo_term_and_a_wide_clip_changes_nothing(clip):  # invariant 3
    old, ref, dpo, scores, mask = _batch(1)
    kwargs = dict(kl_coef=0.0, score_coef=0.0)
    clipped, metrics = rto_token_rewards(old, ref, dpo, scores, mask, dpo_clip=clip, **kwargs)
    assert (clipped.abs() <= clip).all()
    unclipped, _ = rto_token_rewards(old, ref, dpo, scores, mask, dpo_clip=None, **kwargs)
    assert metrics["rto/dpo_clipfrac"].item() == pytest.approx(
        (clipped != unclipped)[mask.bool()].double().mean().item()
    )
    widest = float(unclipped.abs().max())
    assert torch.equal(rto_token_rewards(old, ref, dpo, scores, mask, dpo_clip=widest, **kwargs)[0], unclipped)
    assert torch.equal(rto_token_rewards(old, ref, dpo, scores, mask, dpo_clip=0.0, **kwargs)[0], unclipped)


@pytest.mark.parametrize("side", SIDES)
def test_score_lands_once_and_padding_and_batch_mates_do_not_matter(side):  # invariant 4
    old, ref, dpo, scores, mask = _batch(2, side)
    rewards, metrics = rto_token_rewards(old, ref, dpo, scores, mask)
    without, _ = rto_token_rewards(old, ref, dpo, scores, mask, score_coef=0.0)
    added = rewards - without
    for row in range(4):
        positions = mask[row].nonzero().flatten().tolist()
        expected = torch.zeros(9, dtype=torch.float64)
        if positions:
            expected[positions[-1]] = scores[row].clamp(-10, 10)
        torch.testing.assert_close(added[row], expected, rtol=0, atol=1e-15)
    assert (rewards[mask == 0] == 0).all() and (rewards[1] == 0).all()  # row 1 is empty: no score anywhere
    assert metrics["rto/empty_responses"].item() == 1
    assert metrics["rto/score"].item() == pytest.approx((2.0 - 10.0 + 0.5) / 3)
    for row in range(4):  # alone, left-padded to width 12
        length = int(mask[row].sum())
        alone = make_mask([length], 12, "left")
        moved = []
        for x in (old, ref, dpo):
            y = torch.full((1, 12), NAN, dtype=torch.float64)
            y[alone.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        single, _ = rto_token_rewards(*moved, scores[row : row + 1], alone)
        assert torch.equal(single[alone.bool()], rewards[row][mask[row].bool()])


def test_rewards_are_linear_in_the_coefficients_without_clips():  # invariant 5
    old, ref, dpo, scores, mask = _batch(3)

    def rewards(b1, b2, b3):
        return rto_token_rewards(
            old, ref, dpo, scores, mask, dpo_scale=b1, kl_coef=b2, score_coef=b3, dpo_clip=None, score_clip=None
        )[0]

    parts = rewards(1, 0, 0), rewards(0, 1, 0), rewards(0, 0, 1)
    for b1, b2, b3 in ((0.05, 0.01, 1.0), (0.3, 0.2, 2.5), (0.0, 0.7, 0.1)):
        expected = b1 * parts[0] + b2 * parts[1] + b3 * parts[2]
        torch.testing.assert_close(rewards(b1, b2, b3), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("side", SIDES)
def test_undiscounted_advantage_without_critic_is_the_reward_to_go(side):  # invariant 6
    old, ref, dpo, scores, mask = _batch(4, side)
    rewards, _ = rto_token_rewards(old, ref, dpo, scores, mask)
    advantages, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    torch.testing.assert_close(advantages, torch.where(mask.bool(), to_go, 0), rtol=0, atol=1e-13)


def test_rewards_are_detached_and_negative_coefficients_fail():
    old, ref, dpo, scores, mask = (t.requires_grad_() if t.is_floating_point() else t for t in _batch(0))
    rewards, metrics = rto_token_rewards(old, ref, dpo, scores, mask)
    assert not rewards.requires_grad and not any(value.requires_grad for value in metrics.values())
    for name in ("kl_coef", "dpo_scale", "dpo_clip", "score_coef", "score_clip"):
        with pytest.raises(ValueError, match=name):
            rto_token_rewards(old, ref, dpo, scores, mask, **{name: -0.1})
