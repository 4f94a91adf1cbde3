"""Advantage stage: macro actions of each response and GAE over them (MA-RLHF; n=1 is token GAE)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tokalign.losses import macro_gae, segment_macro_actions, whiten

# whiten(x, mask, shift_mean) over the whole rollout: `losses.whiten` in one process, over every
# rank's rows under several (`engines.rollout_whiten`), so the process count never changes a result.
Whiten = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]
# (m, rewards, values, mask, segment_ids, whiten) -> (advantages, returns): the stage below, or a method's own.
Advantages = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def segments(
    m, mask: torch.Tensor, ref_logps: torch.Tensor, responses: torch.Tensor, tokenizer, seed: int, nlp=None
) -> torch.Tensor:
    """Macro actions of each response under `m.termination` and the MA-RLHF options of `m`."""
    texts = None
    if m.termination == "parsing":
        texts = [tokenizer.convert_ids_to_tokens(r[v.bool()].tolist()) for r, v in zip(responses, mask)]
    return segment_macro_actions(
        mask,
        m.termination,
        n=m.n,
        lengths=tuple(m.lengths),
        seed=seed,
        token_ppl=-ref_logps if m.termination == "ppl" else None,  # NLL: monotone in perplexity
        texts=texts,
        max_len=m.max_segment_len,
        nlp=nlp,
        isolate_last=m.last_token_alone,
        ppl_start=m.ppl_boundary,
        sampling=m.length_sampling,
        repeats=m.length_repeats,
    )


def advantages_and_returns(
    m,
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    segment_ids: torch.Tensor,
    whiten_fn: Whiten = whiten,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Macro GAE, with the optional whitening of rewards (before) and advantages (after)."""
    if m.whiten_rewards:
        rewards = whiten_fn(rewards, mask, False)
    advantages, returns = macro_gae(
        rewards,
        values,
        mask,
        segment_ids,
        gamma=m.gamma,
        lam=m.lam,
        value_weighting=m.value_weighting,
        reward_aggregation=m.reward_aggregation,
    )
    if m.whiten_advantages:
        advantages = whiten_fn(advantages, mask, True)
    return advantages, returns
