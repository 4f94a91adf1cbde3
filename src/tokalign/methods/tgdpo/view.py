"""TGDPO's token view: the guidance reward r̂ and token weight f beside the trained policy's reward."""

from __future__ import annotations

import torch

from tokalign.bases.dpo.dpo_models import cached_path
from tokalign.bases.dpo.view import SIDES, Side, preference_view
from tokalign.bases.views import ViewContext, response_logps
from tokalign.losses import tgdpo_loss
from tokalign.methods.tgdpo import dpo_model, guidance_beta
from tokalign.modeling.lora import is_model_dir

LEGEND = (
    "Colour: guidance token reward r̂ = β_g (log π_g − log π_ref); f = token weight in the loss "
    "(chosen 1 + α r̂, rejected 1 − α r̂); delta = β (log π_θ − log π_ref) of the trained policy."
)


def _guidance(ctx: ViewContext):
    m = ctx.cfg.method
    configured = dpo_model(m)
    path = configured or cached_path(ctx.cfg, beta=guidance_beta(m))
    if not configured and not is_model_dir(path):
        raise FileNotFoundError(
            f"the run's guidance model is not in the cache ({path}); pass its path as method.dpo_model"
        )
    return ctx.load(path)


def tgdpo_view(ctx: ViewContext):
    m = ctx.cfg.method
    guide = _guidance(ctx)
    beta_g = guidance_beta(m)

    def annotate(sides: dict[str, Side], row: dict):
        g = {s: response_logps(guide, sides[s].prompt_ids, sides[s].ids)[0] for s in SIDES}
        length = max(len(sides[s].ids) for s in SIDES)

        def pad(t):
            return torch.nn.functional.pad(t, (0, length - len(t)))[None]

        c, r = sides["chosen"], sides["rejected"]
        loss, metrics = tgdpo_loss(
            pad(c.policy),
            pad(r.policy),
            pad(c.ref),
            pad(r.ref),
            pad(g["chosen"]),
            pad(g["rejected"]),
            pad(torch.ones(len(c.ids))),
            pad(torch.ones(len(r.ids))),
            beta=m.beta,
            alpha=m.alpha,
            guidance_beta=m.guidance_beta,
            f_min=m.f_min,
        )
        values = {}
        for side, sign in zip(SIDES, (1.0, -1.0)):
            r_hat = beta_g * (g[side] - sides[side].ref)
            f = 1 + sign * m.alpha * r_hat
            values[side] = {"r_hat": r_hat.tolist(), "f": (f if m.f_min is None else f.clamp(min=m.f_min)).tolist()}
        note = (
            f"pair loss {loss.item():.4f} · min f {metrics['f/min'].item():.3g} · mean f {metrics['f/mean'].item():.3g}"
        )
        return values, "r_hat", note

    return preference_view(ctx, LEGEND, annotate)
