"""D³S selection, token mask and schedule (docs/methods.md, D³S: invariants 2–7 and the pure parts of 1, 8, 9)."""

import itertools
import math

import pytest
import torch

from tokalign.losses import (
    d3s_schedule,
    d3s_token_mask,
    max_variance_subset,
    select_samples,
)
from tokalign.losses.d3s import MIN_KEEP_RATIO

from .helpers import make_mask, randn


def _variance(values: torch.Tensor) -> float:
    return values.var(unbiased=False).item()


def _grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """TRL GRPO's group z-score: (r − mean) / (unbiased std + 1e-4)."""
    grouped = rewards.view(-1, group_size)
    return ((grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-4)).flatten()


@pytest.mark.parametrize("seed", range(4))
def test_subset_variance_is_the_brute_force_maximum(seed):  # invariant 2
    for size in (2, 5, 8, 10):
        continuous = randn(size, seed=seed * 100 + size)
        tied = torch.randint(-2, 3, (size,), generator=torch.Generator().manual_seed(seed)).double()
        for values, k in itertools.product((continuous, tied), range(1, size + 1)):
            chosen = max_variance_subset(values, k)
            assert chosen.dtype == torch.long and chosen.numel() == k and chosen.unique().numel() == k
            assert torch.equal(chosen, chosen.sort().values)
            best = max(_variance(values[list(subset)]) for subset in itertools.combinations(range(size), k))
            assert _variance(values[chosen]) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("scope", ["group", "batch"])
def test_selection_is_the_brute_force_maximum_within_a_group_and_pooled(scope):  # invariant 2
    group_size, n = 5, 3
    advantages = _grpo_advantages(randn(3 * group_size, seed=4), group_size)
    kept, kept_advantages = select_samples(advantages, n, group_size=group_size, scope=scope)
    if scope == "group":
        for g in range(3):
            members = kept[(kept >= g * group_size) & (kept < (g + 1) * group_size)]
            group = advantages[g * group_size : (g + 1) * group_size]
            best = max(_variance(group[list(s)]) for s in itertools.combinations(range(group_size), n))
            assert members.numel() == n and _variance(advantages[members]) == pytest.approx(best, abs=1e-12)
    else:
        best = max(_variance(advantages[list(s)]) for s in itertools.combinations(range(15), 3 * n))
        assert kept.numel() == 3 * n and _variance(kept_advantages) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_advantage_and_reward_optima_coincide_within_a_group(seed):  # invariant 3
    rewards = randn(8, seed=seed, scale=2.0) + 1.0
    advantages = _grpo_advantages(rewards, 8)
    for k in range(2, 8):
        assert torch.equal(max_variance_subset(advantages, k), max_variance_subset(rewards, k))


@pytest.mark.parametrize("scope", ["group", "batch"])
def test_kept_advantages_are_not_renormalised_unless_pods(scope):  # invariant 4
    group_size = 6
    advantages = _grpo_advantages(randn(4 * group_size, seed=11), group_size)
    kept, kept_advantages = select_samples(advantages, 3, group_size=group_size, scope=scope)
    assert torch.equal(kept_advantages, advantages[kept])
    same_kept, pods = select_samples(advantages, 3, group_size=group_size, scope=scope, renormalize=True)
    assert torch.equal(same_kept, kept)
    groups = kept // group_size
    for g in groups.unique():
        members = pods[groups == g]
        if members.numel() > 1:
            expected = advantages[kept][groups == g]
            expected = (expected - expected.mean()) / (expected.std() + 1e-4)
            torch.testing.assert_close(members, expected, rtol=0, atol=1e-12)
        else:
            assert members.tolist() == [0.0]


def test_pods_renormalises_the_kept_raw_rewards_by_hand():
    rewards = torch.tensor([3.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    kept, pods = select_samples(_grpo_advantages(rewards, 4), 2, group_size=4, renormalize=True, rewards=rewards)
    # keeps rewards 3 and 0: mean 1.5, unbiased std √4.5; PODS: (r − 1.5) / (√4.5 + 1e-4)
    assert kept.tolist() == [0, 2]
    assert pods.tolist() == pytest.approx([1.5 / (math.sqrt(4.5) + 1e-4), -1.5 / (math.sqrt(4.5) + 1e-4)], abs=1e-15)

    # A tiny spread shows where the 1e-4 guard sits. Rewards (0, 0, 0, 2e-4): std 1e-4, so GRPO's
    # advantages are (r − 5e-5) / 2e-4 = (−¼, −¼, −¼, ¾). PODS keeps rewards 0 and 2e-4 (std √2·1e-4):
    # ∓1e-4 / (√2·1e-4 + 1e-4) = ∓(√2 − 1); re-standardising the advantages −¼, ¾ instead gives
    # ∓½ / (√2/2 + 1e-4) ≈ ∓0.7070.
    rewards = torch.tensor([0.0, 0.0, 0.0, 2e-4], dtype=torch.float64)
    advantages = _grpo_advantages(rewards, 4)
    assert advantages.tolist() == pytest.approx([-0.25, -0.25, -0.25, 0.75], abs=1e-12)
    kept, pods = select_samples(advantages, 2, group_size=4, renormalize=True, rewards=rewards)
    assert kept.tolist() == [0, 3]
    assert pods.tolist() == pytest.approx([1 - math.sqrt(2), math.sqrt(2) - 1], abs=1e-12)
    _, from_advantages = select_samples(advantages, 2, group_size=4, renormalize=True)
    assert from_advantages.tolist() == pytest.approx([-0.5 / (0.5**0.5 + 1e-4), 0.5 / (0.5**0.5 + 1e-4)], abs=1e-12)

    tied = torch.full((4,), 0.7, dtype=torch.float64)  # an all-tied group stays at 0
    _, pods = select_samples(_grpo_advantages(tied, 4), 2, group_size=4, renormalize=True, rewards=tied)
    assert pods.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("scope", ["group", "batch"])
def test_pods_mode_matches_pods_formula_per_group(scope):  # invariant 4, PODS side
    group_size = 6
    rewards = (randn(4 * group_size, seed=12, scale=2.0) + 1.0).float()  # float32, as rewards arrive
    advantages = _grpo_advantages(rewards.double(), group_size)
    kept, plain = select_samples(advantages, 3, group_size=group_size, scope=scope, rewards=rewards)
    assert torch.equal(plain, advantages[kept])  # rewards matter only to the PODS mode
    same_kept, pods = select_samples(
        advantages, 3, group_size=group_size, scope=scope, renormalize=True, rewards=rewards
    )
    assert torch.equal(same_kept, kept) and pods.dtype == advantages.dtype
    groups = kept // group_size
    for g in groups.unique():
        members = pods[groups == g]
        raw = rewards[kept][groups == g].double()
        if raw.numel() > 1:
            torch.testing.assert_close(members, (raw - raw.mean()) / (raw.std() + 1e-4), rtol=0, atol=1e-12)
        else:  # PODS would divide by a NaN std here
            assert members.tolist() == [0.0]
    with pytest.raises(ValueError, match="aligned"):
        select_samples(advantages, 3, group_size=group_size, renormalize=True, rewards=rewards[:-1])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_zero_advantage_kept_when_enough_signed_ones_exist(n):  # invariant 5
    # two groups of 8, each with 3 positive, 3 negative and 2 zero advantages
    values = torch.tensor(
        [0.0, 0.7, -0.2, 0.0, 1.5, -0.9, 0.4, -1.1, 0.3, 0.0, -0.6, 2.0, 0.0, -0.1, 0.8, -1.3], dtype=torch.float64
    )
    assert (values[max_variance_subset(values[:8], n)] != 0).all()
    for scope in ("group", "batch"):
        kept, _ = select_samples(values, n, group_size=8, scope=scope)
        assert (values[kept] != 0).all()


def test_batch_scope_drops_tied_groups_and_keeps_the_budget():
    advantages = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.8, -0.8, 2.0, -2.0, 0.5, -0.5], dtype=torch.float64)
    kept, _ = select_samples(advantages, 2, group_size=4, scope="batch")
    assert kept.numel() == 6 and (kept >= 4).all()
    kept, _ = select_samples(advantages, 2, group_size=4, scope="group")
    assert kept.numel() == 6 and ((kept // 4).bincount() == 2).all()


def test_selection_is_deterministic_even_with_ties():  # invariant 9, pure part
    assert max_variance_subset(torch.zeros(6), 3).tolist() == [0, 1, 2]
    tied = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0])
    advantages = torch.cat([tied, _grpo_advantages(randn(16, seed=3), 8)])
    for scope in ("group", "batch"):
        runs = [select_samples(advantages.clone(), 4, group_size=8, scope=scope)[0] for _ in range(3)]
        assert all(torch.equal(run, runs[0]) for run in runs)
    chosen = max_variance_subset(tied, 4)
    assert sorted(tied[chosen].tolist()) == [-1.0, -1.0, 1.0, 1.0]


def test_full_selection_and_full_token_mask_change_nothing():  # invariant 1, pure part
    group_size = 4
    advantages = _grpo_advantages(randn(3 * group_size, seed=5), group_size)
    for scope in ("group", "batch"):
        kept, kept_advantages = select_samples(advantages, group_size, group_size=group_size, scope=scope)
        assert torch.equal(kept, torch.arange(3 * group_size)) and torch.equal(kept_advantages, advantages)
    mask = make_mask([5, 0, 3], 6, "left")
    for scope in ("batch", "sequence"):
        token_mask = d3s_token_mask(advantages[:3], randn(3, 6, seed=6).abs(), mask, 1.0, scope=scope)
        assert torch.equal(token_mask, mask.bool())


def _token_inputs(seed: int):
    mask = make_mask([10, 0, 7, 1, 4], 12, "right")
    mask[3] = make_mask([1], 12, "left")[0]
    advantages = randn(5, seed=seed)
    entropies = randn(5, 12, seed=seed + 1).abs()
    return advantages, entropies, mask


@pytest.mark.parametrize("keep_ratio", [0.05, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("per_token_advantages", [False, True])
def test_token_mask_keeps_ceil_k_of_valid_tokens_by_score(keep_ratio, per_token_advantages):  # invariant 7
    advantages, entropies, mask = _token_inputs(int(keep_ratio * 100))
    if per_token_advantages:
        advantages = advantages.unsqueeze(-1).expand(-1, 12).clone()
    valid = mask.bool()
    scores = (advantages.abs().view(5, -1) * entropies)[valid]
    for scope in ("batch", "sequence"):
        token_mask = d3s_token_mask(advantages, entropies, mask, keep_ratio, scope=scope)
        assert token_mask.dtype == torch.bool and not (token_mask & ~valid).any()
        assert not token_mask[1].any()  # a row with no valid token (a dropped sample) keeps nothing
        if scope == "batch":
            assert int(token_mask.sum()) == math.ceil(round(keep_ratio * int(valid.sum()), 9))
            threshold = scores.sort(descending=True).values[int(token_mask.sum()) - 1]
            assert ((advantages.abs().view(5, -1) * entropies)[token_mask] >= threshold).all()
        else:
            for row in range(5):
                assert int(token_mask[row].sum()) == math.ceil(round(keep_ratio * int(valid[row].sum()), 9))
        for scale in (3.7, -0.25):
            assert torch.equal(d3s_token_mask(advantages * scale, entropies, mask, keep_ratio, scope=scope), token_mask)


def test_token_mask_counts_are_exact_for_round_products_and_ties_go_to_earlier_tokens():
    mask = torch.ones(1, 10, dtype=torch.long)
    token_mask = d3s_token_mask(torch.ones(1), torch.ones(1, 10), mask, 0.3)
    assert token_mask.tolist() == [[True] * 3 + [False] * 7]  # 0.3 · 10 is 3, not 4
    mask = make_mask([3, 3], 4, "left")
    token_mask = d3s_token_mask(torch.ones(2), torch.ones(2, 4), mask, 0.5)
    assert token_mask.tolist() == [[False, True, True, True], [False, False, False, False]]


def test_unkept_tokens_get_exactly_zero_gradient():  # invariant 8, pure part
    advantages, entropies, mask = _token_inputs(3)
    token_mask = d3s_token_mask(advantages, entropies, mask, 0.4)
    logps = randn(5, 12, seed=9).requires_grad_()
    per_token_loss = -advantages.unsqueeze(-1) * logps
    loss = torch.where(token_mask, per_token_loss, 0).sum() / token_mask.sum()  # normalised over kept tokens
    loss.backward()
    assert (logps.grad[~token_mask] == 0).all() and (logps.grad[token_mask] != 0).all()


def test_invalid_keep_ratio_is_rejected():
    advantages, entropies, mask = _token_inputs(0)
    for keep_ratio in (0.0, 1.5):
        with pytest.raises(ValueError):
            d3s_token_mask(advantages, entropies, mask, keep_ratio)


def test_schedule_hits_endpoints_is_monotone_and_clamped():  # invariant 6
    settings = dict(n_init=3, n_final=8, k_init=0.1, k_final=0.7, group_size=8)
    assert d3s_schedule(0.0, **settings) == (3, 0.1)
    assert d3s_schedule(1.0, **settings) == (8, 0.7)
    assert d3s_schedule(-2.0, **settings) == (3, 0.1) and d3s_schedule(5.0, **settings) == (8, 0.7)
    points = [d3s_schedule(p / 100, **settings) for p in range(101)]
    assert all(isinstance(n, int) for n, _ in points)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))
    assert d3s_schedule(0.5, **settings) == (6, pytest.approx(0.4))  # 5.5 rounds half up

    decreasing = [d3s_schedule(p / 10, n_init=8, n_final=3, k_init=1.0, k_final=0.2, group_size=8) for p in range(11)]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(decreasing, decreasing[1:]))
    for p in (0.0, 0.4, 1.0):
        n, k = d3s_schedule(p, n_init=0, n_final=20, k_init=-1.0, k_final=3.0, group_size=6)
        assert 2 <= n <= 6 and MIN_KEEP_RATIO <= k <= 1.0
    assert d3s_schedule(0.0, n_init=0, n_final=20, k_init=0.0, k_final=3.0, group_size=6) == (2, MIN_KEEP_RATIO)
    assert d3s_schedule(1.0, n_init=0, n_final=20, k_init=0.0, k_final=3.0, group_size=6) == (6, 1.0)
