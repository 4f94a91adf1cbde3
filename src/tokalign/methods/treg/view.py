"""T-REG's token view: the self-generated token reward r̂ beside the trained policy's DPO token reward."""

from __future__ import annotations

import torch

from tokalign.bases.dpo.view import SIDES, Side, preference_view
from tokalign.bases.views import ViewContext, response_ids, response_logps
from tokalign.config import option
from tokalign.losses import contrastive_token_rewards, treg_loss
from tokalign.methods.treg.prompts import revise

LEGEND = (
    "Colour: self-generated token reward r̂ = σ(log π_0(y_t | x⁺) − log π_0(y_t | x⁻)) − ½ from the better (x⁺) "
    "and worse (x⁻) revisions of the prompt; delta = β (log π_θ − log π_ref), the trained policy's DPO token reward."
)


def treg_view(ctx: ViewContext):
    m = ctx.cfg.method
    scorer = ctx.load(m.token_reward_model) if m.token_reward_model else ctx.reference()

    def annotate(sides: dict[str, Side], row: dict):
        scores = {}
        for kind, template in (("better", m.better_prompt), ("worse", m.worse_prompt)):
            prompt_ids, _ = response_ids(ctx.tokenizer, revise(row["prompt"], template), "")
            scores[kind] = {s: response_logps(scorer, prompt_ids, sides[s].ids)[0] for s in SIDES}
        r_hat = {
            s: contrastive_token_rewards(
                scores["better"][s][None], scores["worse"][s][None], torch.ones(1, len(sides[s].ids))
            )[0]
            for s in SIDES
        }
        length = max(len(sides[s].ids) for s in SIDES)

        def pad(t):
            return torch.nn.functional.pad(t, (0, length - len(t)))[None]

        c, r = sides["chosen"], sides["rejected"]
        loss, metrics = treg_loss(
            pad(c.policy),
            pad(r.policy),
            pad(c.ref),
            pad(r.ref),
            pad(r_hat["chosen"]),
            pad(r_hat["rejected"]),
            pad(torch.ones(len(c.ids))),
            pad(torch.ones(len(r.ids))),
            beta=m.beta,
            alpha=m.alpha,
            weighting=option(m.weighting),
        )
        note = (
            f"pair loss {loss.item():.4f} (DPO {metrics['loss/dpo'].item():.4f}, regulariser "
            f"{metrics['loss/reg'].item():.4f}) · w {metrics['treg/weight'].item():.3g} · "
            f"mean r̂ {metrics['treg/token_reward'].item():.3g}"
        )
        return {s: {"r_hat": r_hat[s].tolist()} for s in SIDES}, "r_hat", note

    return preference_view(ctx, LEGEND, annotate)
