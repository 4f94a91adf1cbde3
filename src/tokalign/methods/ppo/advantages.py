"""Advantage stage: macro actions of each response and GAE over them (MA-RLHF; n=1 is token GAE)."""

from __future__ import annotations

import torch

from tokalign.losses import macro_gae, segment_macro_actions, whiten


def segments(m, mask: torch.Tensor, ref_logps: torch.Tensor, responses: torch.Tensor, tokenizer, seed: int,
             nlp=None) -> torch.Tensor:
    """Macro actions of each response under `m.termination`."""
    texts = None
    if m.termination == "parsing":
        texts = [tokenizer.convert_ids_to_tokens(r[v.bool()].tolist()) for r, v in zip(responses, mask)]
    return segment_macro_actions(
        mask, m.termination, n=m.n, lengths=tuple(m.lengths), seed=seed,
        token_ppl=-ref_logps if m.termination == "ppl" else None,  # NLL: monotone in perplexity
        texts=texts, max_len=m.max_segment_len, nlp=nlp,
    )


def advantages_and_returns(m, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                           segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Macro GAE, with the optional whitening of rewards (before) and advantages (after)."""
    if m.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = macro_gae(
        rewards, values, mask, segment_ids, gamma=m.gamma, lam=m.lam,
        value_weighting=m.value_weighting, reward_aggregation=m.reward_aggregation,
    )
    if m.whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns
