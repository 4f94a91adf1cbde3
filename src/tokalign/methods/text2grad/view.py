"""Text2Grad's token view: PPO's (advantages, rewards, values) with the critic's label δ_t of each token."""

from __future__ import annotations

import torch

from tokalign.bases.ppo.scoring import Scored
from tokalign.bases.ppo.view import macro_view
from tokalign.bases.views import ViewContext
from tokalign.data import toy_pref
from tokalign.methods.text2grad import Config
from tokalign.methods.text2grad.loop import Critiques

LEGEND = (
    "Colour: the critic's label δ_t of each token (+1 in a good span, −1 in a poor one); reward r_t = w_t δ_t − "
    "β_KL KL_t; advantage Â_t from GAE over those rewards."
)


def text2grad_view(ctx: ViewContext):
    m = ctx.cfg.method
    if m.critic_model is None:
        critic = toy_pref.critique
    else:
        from tokalign.methods.text2grad.critic import GenerativeCritic
        from tokalign.modeling.models import load_tokenizer

        critic_model = str(m.critic_model)
        critic = GenerativeCritic(ctx.load(critic_model), load_tokenizer(critic_model), m.critic_max_new_tokens)
    critiques = Critiques(ctx.tokenizer, critic)

    def labels(s: Scored, mask: torch.Tensor, m) -> dict[str, torch.Tensor]:
        return {"label": critiques.read(s, mask)[0].to(s.old_logps.dtype)}

    return macro_view(
        ctx, schema=Config, token_rewards=critiques.rewards, extra_values=labels, color="label", legend=LEGEND
    )
