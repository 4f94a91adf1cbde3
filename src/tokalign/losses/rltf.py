"""RLTF: RL from text feedback (Song, Chen et al., arXiv 2602.02482, 2026).

Two turns: an attempt y0 ~ π(·|x0); when it is wrong, a critique c0 and a revision
y1 ~ π(·|x1), x1 holding x0, y0 and c0. The feedback exists in training only; the test is
single-turn. On multi-turn GRPO (``rltf_turn_advantages``) RLTF adds self-distillation (SD:
the revision y1 trained as an answer to x0, ``rltf_sd_loss``) and feedback modelling (FM: the
policy learns to predict the critique, ``feedback_modeling_loss``). Follows the authors' release
(``tinker_cookbook/rl/data_processing.py`` and ``train.py``): token *sums*, no length
normalisation, γ = 0.1, advantages centred without std. Rewards are plain floats per turn.
"""

from __future__ import annotations

import torch

from tokalign.losses.masked import masked_fill_zero


def _group_mean(values: torch.Tensor, present: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """For each row, the mean of ``values`` over its group's rows where ``present`` (0 if none)."""
    _, index = torch.unique(group_ids, return_inverse=True)
    groups = int(index.max()) + 1 if index.numel() else 0
    values = masked_fill_zero(values, present)
    sums = values.new_zeros(groups).index_add_(0, index, values)
    counts = values.new_zeros(groups).index_add_(0, index, present.to(values.dtype))
    return (sums / counts.clamp(min=1))[index]


def rltf_turn_advantages(
    turn_rewards: torch.Tensor, turn_mask: torch.Tensor, group_ids: torch.Tensor, *, gamma: float = 0.1
) -> torch.Tensor:
    """(B, H) multi-turn GRPO advantages: ``A_h = R_h − mean_{j∈group, j reached h} R_h^j``.

    ``R_h = Σ_{k≥h} γ^{k−h} r_k`` over the turns a trajectory reached (``turn_mask``, (B, H) 0/1,
    a prefix per row); rewards of unreached turns are ignored (even NaN) and their advantage is 0.
    No division by the std (the release's ``compute_advantages``). ``group_ids`` (B,) names each
    row's prompt group; groups never see each other.
    """
    reached = turn_mask.bool()
    rewards = masked_fill_zero(turn_rewards, reached)
    returns = torch.zeros_like(rewards)
    running = rewards.new_zeros(rewards.shape[0])
    for h in reversed(range(rewards.shape[1])):
        running = rewards[:, h] + gamma * running
        returns[:, h] = running
    advantages = torch.stack(
        [returns[:, h] - _group_mean(returns[:, h], reached[:, h], group_ids) for h in range(rewards.shape[1])], -1
    )
    return masked_fill_zero(advantages, reached)


def rltf_first_turn_advantages(
    first_rewards: torch.Tensor,
    final_rewards: torch.Tensor,
    has_second_turn: torch.Tensor,
    group_ids: torch.Tensor,
) -> torch.Tensor:
    """(B,) SD advantages with the first-turn baseline: ``A⁽⁰⁾ = r1 − mean_{j∈group} r0^j``.

    The revision y1 is scored against what the group's first attempts earned (all of them, solved
    or not), so a revision that succeeds where attempts usually fail is rewarded even when every
    revision in the group succeeds. Rows without a second turn get 0 (their ``final_rewards`` are
    ignored, even NaN). Adding a constant to all rewards changes nothing.
    """
    baseline = _group_mean(first_rewards, torch.ones_like(has_second_turn, dtype=torch.bool), group_ids)
    return masked_fill_zero(final_rewards - baseline, has_second_turn)


def _reduce(per_token: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / mask.bool().sum().clamp(min=1)
    raise ValueError(f"reduction must be sum or mean, got {reduction!r}")


def rltf_sd_loss(
    policy_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float = 0.1,
    logprob_floor: float = -5.0,
    reduction: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLTF-SD: ``L = −Σ_t exp(log π_θ − sg[log π_s])(y1_t | x0, y1<t) · κ A m_t``.

    ``policy_logps`` (with grad) and ``sampler_logps`` are (B, T) log-probs of the revision y1
    under the *first-turn* context x0, by the trained policy and by the policy that sampled
    (equal at the first pass); ``sampler_logps`` never receives a gradient. ``m_t = [log π_s ≥
    logprob_floor]`` drops tokens the first-turn policy finds implausible (``-inf``: plain
    AWR). At θ = sampler, ``∂L/∂log π_θ(y1_t|x0) = −κ A m_t``: the paper's advantage-weighted
    regression with the weight π(y1|x0)/π(y1|x1) dropped. ``advantages`` is (B,) or (B, T)
    (``rltf_first_turn_advantages``, or the centred second-turn advantage the release's runs
    used). Rows without a second turn come with an all-zero mask and add nothing.
    ``reduction="sum"`` sums over every token of every row (the release's tinker loss);
    ``"mean"`` divides that by the number of valid tokens.
    Metrics: ``rltf/sd_mask_frac`` (share of valid tokens below the floor), ``rltf/sd_rows``,
    ``rltf/sd_advantage`` (mean over rows with tokens), ``rltf/sd_ratio`` (mean kept ratio).
    """
    valid = mask.bool()
    kept = valid & (masked_fill_zero(sampler_logps, valid) >= logprob_floor)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(policy_logps)
    log_ratio = masked_fill_zero(policy_logps - sampler_logps.detach(), kept)
    ratio = log_ratio.exp()
    per_token = masked_fill_zero(-ratio * coef * masked_fill_zero(advantages, kept).detach(), kept)
    loss = _reduce(per_token, mask, reduction)
    rows = valid.any(-1)
    zero = policy_logps.new_zeros(())
    metrics = {
        "rltf/sd_mask_frac": (valid & ~kept).sum() / valid.sum().clamp(min=1),
        "rltf/sd_rows": rows.sum().to(zero.dtype),
        "rltf/sd_advantage": masked_fill_zero(advantages, valid).sum(-1)[rows].div(valid.sum(-1)[rows]).mean()
        if rows.any()
        else zero,
        "rltf/sd_ratio": ratio[kept].mean() if kept.any() else zero,
    }
    return loss, {key: value.detach() for key, value in metrics.items()}


def feedback_modeling_loss(
    critique_logps: torch.Tensor,
    critique_mask: torch.Tensor,
    *,
    coef: float = 0.1,
    reduction: str = "sum",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RLTF-FM (Eq. 10): ``λ_FM · Σ −log p_π(c_h | x_h, y_h)`` over the critique tokens.

    ``critique_logps`` (B, T) are the policy's log-probs of the critique given the feedback
    prompt (the question and the attempt); ``critique_mask`` selects the critique tokens, so the
    prompt and the attempt get no gradient. ``reduction="sum"`` (the release: a token sum)
    or ``"mean"`` (per valid token). Metrics: ``rltf/fm_nll`` (mean per-token NLL),
    ``rltf/fm_tokens``.
    """
    valid = critique_mask.bool()
    nll = masked_fill_zero(-critique_logps, valid)
    loss = coef * _reduce(nll, critique_mask, reduction)
    count = valid.sum()
    metrics = {"rltf/fm_nll": nll.sum() / count.clamp(min=1), "rltf/fm_tokens": count.to(nll.dtype)}
    return loss, {key: value.detach() for key, value in metrics.items()}


def linear_coef(progress: float, start: float, end: float) -> float:
    """κ's schedule: ``start + (end − start)·progress``, progress clamped to [0, 1] (the release's
    ``compute_rl_coef`` for DeepMath and DAPO: 0 → 0.1 over training)."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress
