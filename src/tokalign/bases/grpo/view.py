"""The token view of GRPO-family methods: one group of G samples per prompt.

Each token shows the group advantage A of its sample, the policy's full-vocabulary entropy H
and |A|·H; GRPO trains every token of every sample. A method that selects (D³S, PODS) passes
`select`, which returns the kept rows, the kept-token mask and a legend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tokalign import rewards
from tokalign.bases.contract import DataKind
from tokalign.bases.views import (
    TokenSeq,
    View,
    ViewContext,
    pieces,
    response_ids,
    response_logps,
)
from tokalign.config import option
from tokalign.data.chat import prompt_text
from tokalign.modeling.generation import generate

# select(advantages (G,), entropies (G, T), mask (G, T)) -> (kept rows, kept-token mask (G, T), legend)
Select = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[list[int], torch.Tensor, str]]


def group_view(ctx: ViewContext, select: Select | None = None) -> View:
    m = ctx.cfg.method
    data = ctx.eval_rows(DataKind.prompt)
    policy = ctx.policy()
    spec = rewards.configured(m, "method.reward")
    funcs, weights = rewards.functions(spec, ctx.cfg.dataset, "method.reward")
    G = m.num_generations
    view = View(f"{m.name} · {ctx.cfg.run_name}", "")
    samples = generate(
        policy,
        ctx.tokenizer,
        list(data["prompt"]),
        max_new_tokens=m.max_completion_length,
        temperature=m.temperature,
        top_p=m.top_p,
        num_samples=G,
        batch_size=8,
        seed=ctx.cfg.seed,
    )
    for p_i, (ex, group) in enumerate(zip(data, samples)):
        columns = {c: [ex[c]] * G for c in data.column_names if c != "prompt"}
        scores = sum(
            w * torch.tensor(f([ex["prompt"]] * G, group, **columns), dtype=torch.float32)
            for f, w in zip(funcs, weights)
        )
        adv = scores - scores.mean()
        if option(m.scale_rewards) != "none":
            adv = adv / (scores.std() + 1e-4)
        rows = []
        for text in group:
            prompt_ids, ids = response_ids(ctx.tokenizer, ex["prompt"], text)
            rows.append((ids, response_logps(policy, prompt_ids, ids, m.temperature)[1]))
        length = max(len(ids) for ids, _ in rows)
        mask, ent = torch.zeros(G, length), torch.zeros(G, length)
        for j, (ids, e) in enumerate(rows):
            mask[j, : len(ids)], ent[j, : len(ids)] = 1, e
        if select is None:
            keep_rows, token_mask = list(range(G)), mask.bool()
            view.legend = "Colour: |A|·H (group advantage × policy entropy); GRPO trains every token of every sample."
        else:
            keep_rows, token_mask, view.legend = select(adv, ent, mask)
        for j, (ids, e) in enumerate(rows):
            n = len(ids)
            view.seqs.append(
                TokenSeq(
                    f"prompt {p_i + 1} · sample {j + 1}",
                    pieces(ctx.tokenizer, ids),
                    {"A_H": (adv[j].abs() * e).tolist(), "A": [adv[j].item()] * n, "H": e.tolist()},
                    "A_H",
                    kept=token_mask[j, :n].tolist(),
                    dropped=j not in keep_rows,
                    note=f"reward {scores[j].item():.3g} · A {adv[j].item():.3g}"
                    + ("" if j in keep_rows else " · dropped"),
                    prompt=prompt_text(ex["prompt"]),
                )
            )
    return view
