"""Scoring stage: per-token log-probs of the sampling policy and the frozen models, values, the
score of each response, and the per-token rewards GAE runs on.

`token_rewards` turns those into rewards and the metrics it logs; PPO's is the KL penalty plus
the score on the last real token (`kl_score_rewards`). A method built on this loop passes its
own (e.g. a dense reward from another frozen model, whose log-probs it asks for through `frozen`).
Log-probs are of the model's own logits or of the sampling distribution (`logprob_temperature`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokalign.bases.ppo.config import logprob_temperature
from tokalign.bases.ppo.models import response_logits, token_logps
from tokalign.bases.ppo.rollout import position_ids
from tokalign.losses import kl_penalty_rewards


@dataclass
class Scored:
    """(B, R) log-probs of the sampling policy (`old`) and of each frozen model by name, values, (B,) scores;
    the prompts and (B, R) response tokens, for rewards that read the text (a critic's)."""

    old_logps: torch.Tensor
    logps: dict[str, torch.Tensor]
    values: torch.Tensor
    scores: torch.Tensor
    prompts: list | None = None
    responses: torch.Tensor | None = None


# token_rewards(scored, mask, m) -> ((B, R) rewards, {metric name: 0-dim tensor})
TokenRewards = Callable[[Scored, torch.Tensor, object], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def kl_score_rewards(s: Scored, mask: torch.Tensor, m) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's reward: −β_KL · KL_t (k1 or k3) on every token, the score on the last real one."""
    rewards = kl_penalty_rewards(
        s.old_logps, s.logps["ref"], mask, s.scores, kl_coef=m.kl_coef, estimator=m.kl_estimator
    )
    return rewards, {}


@torch.no_grad()
def score(
    policy,
    frozen: dict,
    critic,
    reward_fn,
    tokenizer,
    batch: dict,
    input_ids,
    attention_mask,
    responses,
    mask,
    m,
    *,
    forward_batch: int,
) -> Scored:
    """Forward passes in chunks of `forward_batch` rows, then the reward function on decoded responses."""
    positions = position_ids(attention_mask)
    num_response = responses.shape[1]
    temperature = logprob_temperature(m)
    old, logps, values = [], {name: [] for name in frozen}, []
    for i in range(0, len(input_ids), forward_batch):
        part = (
            input_ids[i : i + forward_batch],
            attention_mask[i : i + forward_batch],
            positions[i : i + forward_batch],
        )
        tokens = responses[i : i + forward_batch]
        old.append(token_logps(response_logits(policy, *part, num_response), tokens, temperature))
        for name, model in frozen.items():
            logps[name].append(token_logps(response_logits(model, *part, num_response), tokens, temperature))
        values.append(critic(*part, num_response))
    completions = tokenizer.batch_decode(responses, skip_special_tokens=True)
    columns = {k: v for k, v in batch.items() if k != "prompt"}
    scores = torch.tensor(
        reward_fn(list(batch["prompt"]), completions, **columns), dtype=torch.float32, device=input_ids.device
    )
    if m.score_clip is not None:
        scores = scores.clamp(-m.score_clip, m.score_clip)
    return Scored(
        torch.cat(old),
        {name: torch.cat(v) for name, v in logps.items()},
        torch.cat(values),
        scores,
        list(batch["prompt"]),
        responses,
    )
