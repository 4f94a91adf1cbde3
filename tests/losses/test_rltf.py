"""RLTF invariants (docs/methods.md, RLTF: invariants 1–7) on small float64 tensors."""

import math

import pytest
import torch

from tokalign.losses import (
    feedback_modeling_loss,
    linear_coef,
    rltf_first_turn_advantages,
    rltf_sd_loss,
    rltf_turn_advantages,
)

from .helpers import logps, make_mask, randn, with_garbage

NAN = float("nan")
# Two groups of three: rows 1, 2 and 4 were wrong at first and got a second turn.
GROUPS = torch.tensor([7, 7, 7, 3, 3, 3])
REWARDS = torch.tensor([[1.0, NAN], [0.0, 1.0], [0.0, 0.0], [1.0, NAN], [0.0, 1.0], [1.0, NAN]], dtype=torch.float64)
REACHED = torch.tensor([[1, 0], [1, 1], [1, 1], [1, 0], [1, 1], [1, 0]])


def test_turn_advantages_by_hand():
    advantages = rltf_turn_advantages(REWARDS, REACHED, GROUPS, gamma=0.1)
    # group 7: R_0 = (1, 0.1, 0), mean 1.1/3; R_1 among rows 1, 2 = (1, 0), mean ½
    # group 3: R_0 = (1, 0.1, 1), mean 2.1/3; R_1 only row 4 = 1, mean 1
    expected = torch.tensor(
        [[1 - 1.1 / 3, 0], [0.1 - 1.1 / 3, 0.5], [-1.1 / 3, -0.5], [1 - 0.7, 0], [0.1 - 0.7, 0.0], [1 - 0.7, 0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-15)


def test_turn_advantages_sum_to_zero_per_turn_and_skip_unreached():  # invariant 2
    rewards, gamma = randn(12, 3, seed=0), 0.3
    reached = torch.ones(12, 3, dtype=torch.long)
    lengths = torch.randint(1, 4, (12,), generator=torch.Generator().manual_seed(1))
    reached = (torch.arange(3) < lengths.unsqueeze(-1)).long()
    groups = torch.arange(12) // 4
    advantages = rltf_turn_advantages(with_garbage(rewards, reached), reached, groups, gamma=gamma)
    assert (advantages[reached == 0] == 0).all()
    for g in range(3):
        for h in range(3):
            members = (groups == g) & reached[:, h].bool()
            assert abs(advantages[members, h].sum().item()) < 1e-12
    # R_0 = r0 + γ r1 + γ² r2 over the reached turns: centred within the group
    returns = (torch.where(reached.bool(), rewards, 0) * gamma ** torch.arange(3)).sum(-1)
    for g in range(3):
        members = groups == g
        torch.testing.assert_close(advantages[members, 0], returns[members] - returns[members].mean())


def test_one_turn_is_group_centred_without_std():  # invariant 1
    rewards = randn(8, 1, seed=2, scale=3.0)
    groups = torch.arange(8) // 4
    advantages = rltf_turn_advantages(rewards, torch.ones(8, 1), groups)
    expected = rewards.view(2, 4) - rewards.view(2, 4).mean(-1, keepdim=True)
    torch.testing.assert_close(advantages.view(2, 4), expected)


def test_groups_do_not_see_each_other():  # invariant 7
    full = rltf_turn_advantages(REWARDS, REACHED, GROUPS)
    first = GROUPS == 7
    torch.testing.assert_close(rltf_turn_advantages(REWARDS[first], REACHED[first], GROUPS[first]), full[first])
    permutation = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(rltf_turn_advantages(REWARDS[permutation], REACHED[permutation], GROUPS[permutation]),
                               full[permutation])  # fmt: skip
    sd = rltf_first_turn_advantages(REWARDS[:, 0], REWARDS[:, 1], REACHED[:, 1].bool(), GROUPS)
    torch.testing.assert_close(
        rltf_first_turn_advantages(REWARDS[first, 0], REWARDS[first, 1], REACHED[first, 1].bool(), GROUPS[first]),
        sd[first],
    )


def test_first_turn_advantages_by_hand_and_shift_invariant():  # invariant 3
    has_second = REACHED[:, 1].bool()
    advantages = rltf_first_turn_advantages(REWARDS[:, 0], REWARDS[:, 1], has_second, GROUPS)
    # group 7: mean r0 = ⅓ → rows 1, 2: 1 − ⅓, 0 − ⅓; group 3: mean r0 = ⅔ → row 4: 1 − ⅔
    expected = torch.tensor([0, 2 / 3, -1 / 3, 0, 1 / 3, 0], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-15)
    shifted = rltf_first_turn_advantages(REWARDS[:, 0] + 5.5, REWARDS[:, 1] + 5.5, has_second, GROUPS)
    torch.testing.assert_close(shifted, advantages, rtol=0, atol=1e-14)


def test_a_group_solved_at_first_has_no_sd_rows_and_no_nan():  # invariant 3
    first = torch.ones(4, dtype=torch.float64)
    final = torch.full((4,), NAN, dtype=torch.float64)
    none = torch.zeros(4, dtype=torch.bool)
    advantages = rltf_first_turn_advantages(first, final, none, torch.zeros(4, dtype=torch.long))
    assert torch.equal(advantages, torch.zeros(4, dtype=torch.float64))
    mask = torch.zeros(4, 5)
    loss, metrics = rltf_sd_loss(logps(4, 5, seed=0), logps(4, 5, seed=1), advantages, mask)
    assert loss.item() == 0 and metrics["rltf/sd_rows"].item() == 0
    assert all(math.isfinite(value.item()) for value in metrics.values())


def _sd_inputs(seed: int, lengths=(4, 0, 1, 6), width: int = 8, side: str = "right"):
    mask = make_mask(list(lengths), width, side)
    sampler = with_garbage(logps(len(lengths), width, seed=seed) * 2.5, mask)  # some below −5
    advantages = randn(len(lengths), seed=seed + 1)
    return sampler, advantages, mask


def test_sd_by_hand():
    # two tokens, sampler log-probs (−1, −6): the second is below the floor; A = 2, κ = 0.1, θ = sampler
    sampler = torch.tensor([[-1.0, -6.0]], dtype=torch.float64)
    policy = (sampler + torch.tensor([[0.5, 0.0]], dtype=torch.float64)).requires_grad_()
    loss, metrics = rltf_sd_loss(policy, sampler, torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-math.exp(0.5) * 0.1 * 2.0, rel=1e-12)
    assert metrics["rltf/sd_mask_frac"].item() == 0.5 and metrics["rltf/sd_rows"].item() == 1
    assert metrics["rltf/sd_ratio"].item() == pytest.approx(math.exp(0.5))
    mean, _ = rltf_sd_loss(
        policy, sampler, torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 2), reduction="mean"
    )
    assert mean.item() == pytest.approx(loss.item() / 2, rel=1e-12)  # divided by the valid tokens


@pytest.mark.parametrize("per_token", [False, True])
def test_sd_gradient_at_the_sampler(per_token):  # invariants 4 and 5
    sampler, advantages, mask = _sd_inputs(0)
    if per_token:
        advantages = randn(*mask.shape, seed=9)
    policy = sampler.clone().requires_grad_()
    sampler_leaf = sampler.clone().requires_grad_()
    loss, metrics = rltf_sd_loss(policy, sampler_leaf, advantages, mask, coef=0.3)
    grad, grad_sampler = torch.autograd.grad(loss, (policy, sampler_leaf), allow_unused=True)
    kept = mask.bool() & (torch.nan_to_num(sampler, nan=0.0) >= -5.0)
    a = advantages if per_token else advantages.unsqueeze(-1).expand_as(sampler)
    expected = torch.where(kept, -0.3 * a, 0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-15)
    assert grad_sampler is None or grad_sampler.abs().max().item() == 0  # the sampler never gets a gradient
    assert ((grad == 0) | kept).all()  # below the floor: zero gradient
    assert 0 < metrics["rltf/sd_mask_frac"].item() < 1
    assert metrics["rltf/sd_mask_frac"].item() == pytest.approx(1 - kept.sum().item() / mask.sum().item())
    loss_awr, metrics = rltf_sd_loss(policy, sampler, advantages, mask, coef=0.3, logprob_floor=-math.inf)
    (grad,) = torch.autograd.grad(loss_awr, policy)
    torch.testing.assert_close(grad, torch.where(mask.bool(), -0.3 * a, 0), rtol=0, atol=1e-15)  # plain AWR
    assert metrics["rltf/sd_mask_frac"].item() == 0


def test_sd_coef_zero_is_zero():  # invariant 1, the SD part
    sampler, advantages, mask = _sd_inputs(1)
    policy = sampler.clone().requires_grad_()
    loss, _ = rltf_sd_loss(policy, sampler, advantages, mask, coef=0.0)
    (grad,) = torch.autograd.grad(loss, policy)
    assert loss.item() == 0 and grad.abs().max().item() == 0


@pytest.mark.parametrize("side", ["right", "left", "middle"])
def test_sd_rows_do_not_depend_on_padding_or_batch_mates(side):  # invariant 7
    lengths = (4, 0, 1, 6)
    sampler, advantages, mask = _sd_inputs(2, lengths, side=side)
    policy = with_garbage(sampler + randn(*sampler.shape, seed=5, scale=0.2), mask)
    loss, _ = rltf_sd_loss(policy, sampler, advantages, mask)
    singles = []
    for row, length in enumerate(lengths):
        alone = make_mask([length], 11, "left")
        moved = []
        for x in (policy, sampler):
            y = torch.full((1, 11), NAN, dtype=torch.float64)
            y[alone.bool()] = x[row][mask[row].bool()]
            moved.append(y)
        singles.append(rltf_sd_loss(*moved, advantages[row : row + 1], alone)[0])
    torch.testing.assert_close(loss, torch.stack(singles).sum(), rtol=1e-13, atol=1e-15)  # "sum" sums rows
    mean, _ = rltf_sd_loss(policy, sampler, advantages, mask, reduction="mean")
    torch.testing.assert_close(mean, loss / mask.sum(), rtol=1e-13, atol=1e-15)


def test_feedback_modeling_is_coef_times_summed_nll():  # invariant 6
    lengths = (3, 0, 5)
    mask = make_mask(list(lengths), 7, "middle")
    critique = logps(3, 7, seed=3).requires_grad_()
    loss, metrics = feedback_modeling_loss(with_garbage(critique, mask), mask, coef=0.25)
    nll = -torch.where(mask.bool(), critique, 0).sum()
    torch.testing.assert_close(loss, 0.25 * nll)
    (grad,) = torch.autograd.grad(loss, critique)
    torch.testing.assert_close(grad, torch.where(mask.bool(), -0.25, 0.0).double())  # none at prompt or attempt tokens
    assert metrics["rltf/fm_tokens"].item() == 8
    assert metrics["rltf/fm_nll"].item() == pytest.approx(nll.item() / 8)
    mean, _ = feedback_modeling_loss(critique, mask, coef=0.25, reduction="mean")
    torch.testing.assert_close(mean, 0.25 * nll / 8)
    zero, _ = feedback_modeling_loss(critique, mask, coef=0.0)
    assert zero.item() == 0
    with pytest.raises(ValueError, match="reduction"):
        feedback_modeling_loss(critique, mask, reduction="max")


def test_linear_coef_hits_its_endpoints_and_clamps():
    assert linear_coef(0.0, 0.0, 0.1) == 0.0 and linear_coef(1.0, 0.0, 0.1) == pytest.approx(0.1)
    assert linear_coef(0.5, 0.0, 0.1) == pytest.approx(0.05)
    assert linear_coef(-1.0, 0.2, 0.4) == 0.2 and linear_coef(3.0, 0.2, 0.4) == pytest.approx(0.4)
    values = [linear_coef(p / 10, 0.0, 0.1) for p in range(11)]
    assert values == sorted(values)


def test_public_signatures():
    import inspect

    def keywords(fn):
        return {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind.name == "KEYWORD_ONLY"}

    def positional(fn):
        return [p.name for p in inspect.signature(fn).parameters.values() if p.kind.name != "KEYWORD_ONLY"]

    assert positional(rltf_turn_advantages) == ["turn_rewards", "turn_mask", "group_ids"]
    assert keywords(rltf_turn_advantages) == {"gamma": 0.1}
    assert positional(rltf_first_turn_advantages) == ["first_rewards", "final_rewards", "has_second_turn", "group_ids"]
    assert positional(rltf_sd_loss) == ["policy_logps", "sampler_logps", "advantages", "mask"]
    assert keywords(rltf_sd_loss) == {"coef": 0.1, "logprob_floor": -5.0, "reduction": "sum"}
    assert positional(feedback_modeling_loss) == ["critique_logps", "critique_mask"]
    assert keywords(feedback_modeling_loss) == {"coef": 0.1, "reduction": "sum"}
    assert positional(linear_coef) == ["progress", "start", "end"]
