"""Update stage: clipped policy and value steps over a rollout, refusing to step on a non-finite gradient."""

from __future__ import annotations

import math

import torch

from tokalign.bases.ppo.config import logprob_temperature
from tokalign.bases.ppo.models import entropy, response_logits, token_logps
from tokalign.bases.ppo.rollout import Rollout
from tokalign.errors import DivergenceError
from tokalign.losses import masked_mean, ppo_policy_loss, ppo_value_loss

METRICS = {
    "policy/loss": "policy_loss",
    "value/loss": "value_loss",
    "policy/entropy": "entropy",
    "policy/clipfrac": "clipfrac",
    "policy/approx_kl": "approx_kl",
    "value/clipfrac": "value_clipfrac",
}


def losses(logps: torch.Tensor, values: torch.Tensor, part: Rollout, m) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Policy and value losses of a micro-batch and their metrics.

    `loss_normalization=token`: the loss functions' mean over all the micro-batch's tokens.
    `sequence`: the mean over responses of each response's own token mean, so neither batch-mates
    nor how a rollout is split into micro-batches and ranks change a response's share. The
    clipped policy term is positively homogeneous in Â, so weighting each token by N / (B · L_b)
    through its advantage turns the mean over N tokens into exactly that; the value loss is
    taken row by row (vmap).
    """
    mask, advantages = part.mask, part.advantages
    per_sequence = m.loss_normalization == "sequence"
    if per_sequence:
        advantages = advantages * (mask.sum() / (len(mask) * mask.sum(-1, keepdim=True).clamp(min=1)))
    policy_loss, stats = ppo_policy_loss(
        logps,
        part.old_logps,
        advantages,
        mask,
        clip_eps=m.clip_eps,
        segment_ids=part.segment_ids,
        level=m.policy_loss_level,
    )
    if per_sequence:

        def row_loss(v, old, returns, row_mask):
            return ppo_value_loss(v[None], old[None], returns[None], row_mask[None], clip_eps_value=m.clip_eps_value)

        value_losses, value_stats = torch.func.vmap(row_loss)(values, part.old_values, part.returns, mask)
        value_loss, value_stats = value_losses.mean(), {k: v.mean() for k, v in value_stats.items()}
    else:
        value_loss, value_stats = ppo_value_loss(
            values, part.old_values, part.returns, mask, clip_eps_value=m.clip_eps_value
        )
    return policy_loss, value_loss, {**stats, **value_stats}


def ppo_update(actor, critic, r: Rollout, m, *, micro_batch: int) -> dict[str, float]:
    """`num_ppo_epochs` passes over the rollout in `num_mini_batches` shuffled minibatches; `actor` and
    `critic` are `engines.Trained` (one optimizer step each per minibatch)."""
    size = len(r.input_ids)
    mini = size // m.num_mini_batches
    num_response = r.responses.shape[1]
    temperature = logprob_temperature(m)
    totals: dict[str, float] = {}
    count = 0
    norms: dict[str, list[float]] = {"policy_grad_norm": [], "value_grad_norm": []}
    for _ in range(m.num_ppo_epochs):
        order = torch.randperm(size, device=r.input_ids.device)
        for start in range(0, size, mini):
            for micro in range(start, start + mini, micro_batch):
                part = r.rows(order[micro : micro + micro_batch])
                inputs = (part.input_ids, part.attention_mask, part.position_ids)
                logits = response_logits(actor.model, *inputs, num_response)
                logps = token_logps(logits, part.responses, temperature)
                values = critic.model(*inputs, num_response)
                policy_loss, value_loss, stats = losses(logps, values, part, m)
                if not (math.isfinite(policy_loss.item()) and math.isfinite(value_loss.item())):
                    raise DivergenceError(
                        f"the PPO loss became non-finite (policy {policy_loss.item()}, value "
                        f"{value_loss.item()}); nothing was saved. Lower trainer.learning_rate"
                    )
                actor.backward(policy_loss)
                critic.backward(value_loss)
                stats = {
                    **stats,
                    "policy/loss": policy_loss.detach(),
                    "value/loss": value_loss.detach(),
                    "policy/entropy": masked_mean(entropy(logits.detach(), temperature), part.mask),
                }
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                count += 1
            norms["policy_grad_norm"].append(actor.step())
            norms["value_grad_norm"].append(critic.step())
    return {**{METRICS[key]: v / count for key, v in totals.items()}, **{k: sum(v) / len(v) for k, v in norms.items()}}
