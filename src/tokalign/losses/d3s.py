"""D³S dynamic dual-level down-sampling for GRPO (arXiv 2509.22115, ICLR 2026).

Sample level: keep the subset whose advantages have the largest variance (the PODS rule).
Token level: among kept samples, keep the tokens with the largest |A|·H. Schedule: (N, K)
move linearly with training progress. Every selection is deterministic (stable sorts), so
ranks holding the same gathered inputs agree.
"""

import math

import torch

# Smallest token keep ratio d3s_schedule returns: K must stay > 0.
MIN_KEEP_RATIO = 1e-6
# PODS's guard in (r − mean) / (std + eps), as TRL's GRPO.
PODS_STD_EPS = 1e-4
# Slack in ceil(K·n) so that floating error (0.3·10 = 3.0000000000000004) does not add a token.
_CEIL_SLACK = 1e-9


def max_variance_subset(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the size-k subset of 1-D ``values`` with the largest variance.

    The optimum is the top i plus the bottom k − i values for some i (PODS); after one sort,
    prefix sums give each candidate's variance in O(1), so the whole search is O(n log n).
    Ties are broken deterministically: values are ordered by (value, index), and among
    equally good candidates the one with fewer top values wins.
    """
    count = values.numel()
    if not 0 <= k <= count:
        raise ValueError(f"k must be in [0, {count}], got {k}")
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=values.device)
    order = torch.sort(values, stable=True).indices
    centred = values[order].double() - values.double().mean()  # centring keeps Σx² − (Σx)²/k accurate
    zero = centred.new_zeros(1)
    sums = torch.cat([zero, centred.cumsum(0)])
    squares = torch.cat([zero, (centred**2).cumsum(0)])
    top = torch.arange(k + 1, device=values.device)  # candidate i takes the i largest values
    total = sums[k - top] + sums[count] - sums[count - top]
    total_sq = squares[k - top] + squares[count] - squares[count - top]
    best = int(torch.argmax(total_sq / k - (total / k) ** 2))
    return torch.sort(torch.cat([order[: k - best], order[count - best :]])).values


def select_samples(
    advantages: torch.Tensor,
    n: int,
    *,
    group_size: int,
    scope: str = "group",
    renormalize: bool = False,
    rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D³S sample-level selection on flat advantages whose groups are consecutive (TRL layout).

    ``scope="group"`` keeps ``n`` samples per group; ``scope="batch"`` keeps ``n · num_groups``
    from the pooled batch (the same budget; all-tied groups tend to be dropped whole).
    Returns the kept indices (ascending) and their advantages: bit-identical to the input
    unless ``renormalize`` (the PODS baseline, Xu et al., arXiv 2504.13818) re-standardises
    within each group's kept samples, ``(x − mean) / (std + 1e-4)`` with the unbiased std.
    PODS (YixuanEvenXu/pods, ``trainer/maxvargrpo_trainer.py``) standardises the kept samples'
    raw ``rewards`` (flat, aligned with ``advantages``): pass them for exactly its advantages.
    Without them the already-standardised advantages are re-standardised, which moves the 1e-4
    guard (it then acts on std(A) instead of std(r)). A group with a single kept sample gets
    advantage 0 (PODS's unbiased std of one sample is NaN).
    """
    if advantages.dim() != 1 or advantages.numel() % group_size:
        raise ValueError("advantages must be 1-D with a whole number of groups of group_size")
    if rewards is not None and rewards.shape != advantages.shape:
        raise ValueError("rewards must be aligned with advantages")
    num_groups = advantages.numel() // group_size
    if scope == "group":
        groups = advantages.view(num_groups, group_size)
        kept = torch.cat([max_variance_subset(group, n) + g * group_size for g, group in enumerate(groups)])
    elif scope == "batch":
        kept = max_variance_subset(advantages, n * num_groups)
    else:
        raise ValueError(f"unknown selection scope {scope!r}")
    if not renormalize:
        return kept, advantages[kept]
    values = (advantages if rewards is None else rewards)[kept].to(advantages.dtype)
    group = kept // group_size
    counts = torch.bincount(group, minlength=num_groups).to(values.dtype)
    means = torch.zeros_like(counts).index_add(0, group, values) / counts.clamp(min=1)
    centred = values - means[group]
    variances = torch.zeros_like(counts).index_add(0, group, centred**2) / (counts - 1).clamp(min=1)
    return kept, centred / (variances.sqrt()[group] + PODS_STD_EPS)


def d3s_token_mask(
    advantages: torch.Tensor,
    entropies: torch.Tensor,
    mask: torch.Tensor,
    keep_ratio: float,
    *,
    scope: str = "batch",
) -> torch.Tensor:
    """Bool (B, T): the top ⌈keep_ratio · n_valid⌉ valid tokens by |A|·H within the scope.

    ``advantages`` is (B,) or (B, T); ``entropies`` (B, T) are full-vocabulary entropies of π_θ.
    ``scope="batch"`` ranks all valid tokens together (n_valid over the batch), ``"sequence"``
    ranks each row alone. Never keeps a position where mask is 0; keeps all at keep_ratio = 1.
    Ties: earlier positions (row-major) win. Unkept tokens should get zero loss weight.
    """
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    valid = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    scores = torch.where(valid, (advantages.abs() * entropies).detach(), -math.inf)
    if scope == "batch":
        return _keep_top(scores.reshape(1, -1), valid.reshape(1, -1), keep_ratio).view_as(valid)
    if scope == "sequence":
        return _keep_top(scores, valid, keep_ratio)
    raise ValueError(f"unknown token scope {scope!r}")


def _keep_top(scores: torch.Tensor, valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Per row, keep the ⌈keep_ratio · valid⌉ highest scores (stable: earlier wins ties)."""
    counts = valid.sum(-1)
    keep = torch.ceil(counts.double() * keep_ratio - _CEIL_SLACK).clamp(min=1).minimum(counts)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return valid & (rank < keep.unsqueeze(-1))


def d3s_schedule(
    progress: float, *, n_init: int, n_final: int, k_init: float, k_final: float, group_size: int
) -> tuple[int, float]:
    """(N, K) linear in progress ∈ [0, 1] (clamped): aggressive early, relaxed late.

    N is rounded half up and clamped to [2, group_size]; K is clamped to
    [MIN_KEEP_RATIO, 1]. The interpolation is exact at both ends.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    progress = min(max(float(progress), 0.0), 1.0)
    n = math.floor(_lerp(n_init, n_final, progress) + 0.5)
    k = _lerp(k_init, k_final, progress)
    return min(max(n, 2), group_size), min(max(k, MIN_KEEP_RATIO), 1.0)


def _lerp(start: float, end: float, weight: float) -> float:
    """``torch.lerp``'s formula, exact at weight 0 and 1 (``a + w(b − a)`` can miss b by an ulp)."""
    return start + weight * (end - start) if weight < 0.5 else end - (end - start) * (1 - weight)
