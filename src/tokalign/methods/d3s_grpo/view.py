"""D³S's token view: GRPO's group view with the samples and tokens D³S keeps at a training progress."""

from __future__ import annotations

import torch

from tokalign.bases.grpo.view import group_view
from tokalign.bases.views import ViewContext
from tokalign.config import option
from tokalign.losses import d3s_schedule, d3s_token_mask, max_variance_subset


def d3s_view(ctx: ViewContext):
    m = ctx.cfg.method
    G = m.num_generations
    if option(m.schedule) == "linear":
        n, k = d3s_schedule(
            ctx.progress, n_init=m.n_init, n_final=m.n_final, k_init=m.k_init, k_final=m.k_final, group_size=G
        )
    else:
        n, k = min(max(m.n_init, 2), G), m.k_init
    legend = (
        f"Colour: |A|·H (group advantage × policy entropy). At progress {ctx.progress:g}: N={n} of G={G} samples "
        f"kept (max Var(A)), top K={k:.3g} of their tokens by |A|·H; struck-through tokens and faded samples get "
        "no gradient."
    )

    def select(adv, ent, mask):
        keep = max_variance_subset(adv, n)
        token_mask = torch.zeros_like(mask, dtype=torch.bool)
        token_mask[keep] = d3s_token_mask(adv[keep], ent[keep], mask[keep], k, scope=option(m.token_scope))
        return keep.tolist(), token_mask, legend

    return group_view(ctx, select)
