"""Text2Grad on the PPO loop: the critic reads each sampled response, its spans become token labels,
and the labels (with the KL penalty) are the per-token reward."""

from __future__ import annotations

import os

import torch

from tokalign.bases.ppo import loop as ppo_loop
from tokalign.bases.ppo.advantages import Whiten, advantages_and_returns
from tokalign.bases.ppo.scoring import Scored
from tokalign.data import toy_pref
from tokalign.data.chat import prompt_text
from tokalign.losses import clause_gae, clause_mask, kl_penalty_rewards, text2grad_token_rewards
from tokalign.methods.text2grad.spans import critique_labels, punctuation_tokens, token_offsets


class Critiques:
    """The critic's labels of one rollout, computed once on the sampled mask and read by both hooks:
    `train_mask` (rows whose critique did not parse, and with `gae_restart=punctuation` the token after
    each punctuation mark, are not trained) and `rewards`."""

    def __init__(self, tokenizer, critic=toy_pref.critique):
        self.tokenizer, self.critic = tokenizer, critic
        self._last: tuple | None = None

    def read(self, s: Scored, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._last is None or self._last[0] is not s:
            assert s.responses is not None and s.prompts is not None
            cpu_mask = mask.cpu()
            texts, offsets = token_offsets(self.tokenizer, s.responses.cpu(), cpu_mask)
            prompts = [prompt_text(p) for p in s.prompts]
            labels, parsed = critique_labels(self.critic, prompts, texts, offsets, cpu_mask)
            punctuation = punctuation_tokens(texts, offsets, cpu_mask)
            self._last = (s, labels.to(mask.device), parsed.to(mask.device), punctuation.to(mask.device))
        return self._last[1:]

    def train_mask(self, s: Scored, mask: torch.Tensor, m) -> torch.Tensor:
        _, parsed, punctuation = self.read(s, mask)
        kept = mask * parsed.unsqueeze(-1).to(mask.dtype)
        return clause_mask(kept, punctuation) if m.gae_restart == "punctuation" else kept

    def rewards(self, s: Scored, mask: torch.Tensor, m) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels, parsed, _ = self.read(s, mask)
        zeros = torch.zeros_like(s.scores)
        kl = -kl_penalty_rewards(s.old_logps, s.logps["ref"], mask, zeros, kl_coef=1.0, estimator=m.kl_estimator)
        rewards, metrics = text2grad_token_rewards(
            m.label_coef * labels.to(s.old_logps.dtype),
            mask,
            kl=kl,
            kl_coef=m.kl_coef,
            length_weighting=m.length_weighting,
            target_length=m.target_length,
            alpha=m.length_alpha,
            score=s.scores,
            score_coef=m.score_coef,
        )
        return rewards, {**metrics, "text2grad/dropped_rows": (~parsed).sum().to(rewards.dtype)}


def advantages(
    m, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, segment_ids: torch.Tensor, whiten_fn: Whiten
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's advantage stage, or with `gae_restart=punctuation` their code's GAE that restarts at every hole
    of the training mask (so after each punctuation mark); whitening as PPO's."""
    if m.gae_restart != "punctuation":
        return advantages_and_returns(m, rewards, values, mask, segment_ids, whiten_fn)
    if m.whiten_rewards:
        rewards = whiten_fn(rewards, mask, False)
    adv, returns = clause_gae(rewards, values, mask, gamma=m.gamma, lam=m.lam)
    return (whiten_fn(adv, mask, True) if m.whiten_advantages else adv), returns


def no_labels(prompt: str, response: str) -> dict:
    return {"text": "", "good_words": [], "poor_words": []}


def critic(run):
    """The oracle of the toy task, or the generative critic `method.critic_model` on this process's device;
    none with `label_coef=0`."""
    m = run.cfg.method
    if m.label_coef == 0:
        return no_labels
    if m.critic_model is None:
        return toy_pref.critique
    from tokalign.methods.text2grad.critic import GenerativeCritic
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(str(m.critic_model)).to(device)
    return GenerativeCritic(model, load_tokenizer(str(m.critic_model)), m.critic_max_new_tokens)


def fit(run) -> dict:
    critiques = Critiques(run.tokenizer, critic(run))
    return ppo_loop.fit(run, token_rewards=critiques.rewards, advantages=advantages, train_mask=critiques.train_mask)
