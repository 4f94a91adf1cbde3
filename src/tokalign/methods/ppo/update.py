"""Update stage: clipped policy and value steps over a rollout, refusing to step on a non-finite gradient."""

from __future__ import annotations

import math

import torch

from tokalign.errors import DivergenceError
from tokalign.losses import masked_mean, ppo_policy_loss, ppo_value_loss
from tokalign.methods.ppo.models import entropy, response_logits, token_logps
from tokalign.methods.ppo.rollout import Rollout

METRICS = {
    "policy/loss": "policy_loss", "value/loss": "value_loss", "policy/entropy": "entropy",
    "policy/clipfrac": "clipfrac", "policy/approx_kl": "approx_kl", "value/clipfrac": "value_clipfrac",
}


def _step(model, optimizer, max_grad_norm: float, accelerator, what: str) -> None:
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    if not math.isfinite(float(norm)):
        raise DivergenceError(f"the {what} gradient norm became {float(norm)}; the step was not taken and nothing was "
                              "saved. Lower trainer.learning_rate; resume=auto continues the last good checkpoint")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def ppo_update(policy, critic, actor_opt, critic_opt, r: Rollout, m, *, micro_batch: int, accumulation: int,
               max_grad_norm: float, accelerator) -> dict[str, float]:
    """`num_ppo_epochs` passes over the rollout in `num_mini_batches` shuffled minibatches."""
    size = len(r.input_ids)
    mini = size // m.num_mini_batches
    num_response = r.responses.shape[1]
    totals: dict[str, float] = {}
    count = 0
    for _ in range(m.num_ppo_epochs):
        order = torch.randperm(size, device=r.input_ids.device)
        for start in range(0, size, mini):
            for micro in range(start, start + mini, micro_batch):
                part = r.rows(order[micro : micro + micro_batch])
                inputs = (part.input_ids, part.attention_mask, part.position_ids)
                logits = response_logits(policy, *inputs, num_response)
                logps = token_logps(logits, part.responses, m.temperature)
                policy_loss, stats = ppo_policy_loss(
                    logps, part.old_logps, part.advantages, part.mask, clip_eps=m.clip_eps,
                    segment_ids=part.segment_ids, level=m.policy_loss_level,
                )
                values = critic(*inputs, num_response)
                value_loss, value_stats = ppo_value_loss(
                    values, part.old_values, part.returns, part.mask, clip_eps_value=m.clip_eps_value
                )
                if not (math.isfinite(policy_loss.item()) and math.isfinite(value_loss.item())):
                    raise DivergenceError(f"the PPO loss became non-finite (policy {policy_loss.item()}, value "
                                          f"{value_loss.item()}); nothing was saved. Lower trainer.learning_rate")
                accelerator.backward(policy_loss / accumulation)
                accelerator.backward(value_loss / accumulation)
                stats = {**stats, **value_stats, "policy/loss": policy_loss.detach(), "value/loss": value_loss.detach(),
                         "policy/entropy": masked_mean(entropy(logits.detach(), m.temperature), part.mask)}
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value)
                count += 1
            _step(policy, actor_opt, max_grad_norm, accelerator, "policy")
            _step(critic, critic_opt, max_grad_norm, accelerator, "critic")
    return {METRICS[key]: v / count for key, v in totals.items()}
