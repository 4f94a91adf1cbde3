"""The token view of preference methods: the trained policy's token reward on evaluation pairs.

`preference_view` shows δ_t = β (log π_θ − log π_ref)(y_t) on the chosen and rejected response
of each pair; a method built on DPO passes `annotate` to add its own per-token values (it also
gets the evaluation row, e.g. for its prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokalign.bases.views import TokenSeq, View, ViewContext, first_response, pieces, response_ids, response_logps
from tokalign.data.chat import prompt_text

SIDES = ("chosen", "rejected")


@dataclass
class Side:
    """One response of a pair: its prompt and response ids, policy and reference log-probs."""

    prompt_ids: list[int]
    ids: list[int]
    policy: torch.Tensor
    ref: torch.Tensor


# annotate(sides, row) -> ({side: {name: values}}, colour key, note)
Annotate = Callable[[dict[str, Side], dict], tuple[dict[str, dict[str, list[float]]], str, str]]


def preference_view(ctx: ViewContext, legend: str = "", annotate: Annotate | None = None) -> View:
    m = ctx.cfg.method
    policy, ref = ctx.policy(), ctx.reference()
    view = View(
        f"{m.name} · {ctx.cfg.run_name}",
        legend or "Colour: delta = β (log π_θ − log π_ref), the trained policy's token reward.",
    )
    for i, ex in enumerate(ctx.eval_rows("preference")):
        sides = {}
        for side in SIDES:
            prompt_ids, ids = response_ids(ctx.tokenizer, ex["prompt"], first_response(ex[side]))
            sides[side] = Side(
                prompt_ids, ids, response_logps(policy, prompt_ids, ids)[0], response_logps(ref, prompt_ids, ids)[0]
            )
        extra, color, note = annotate(sides, ex) if annotate else ({}, "delta", "")
        for side in SIDES:
            s = sides[side]
            values = {**extra.get(side, {}), "delta": (m.beta * (s.policy - s.ref)).tolist()}
            view.seqs.append(
                TokenSeq(
                    f"example {i + 1} · {side}",
                    pieces(ctx.tokenizer, s.ids),
                    values,
                    color,
                    note=note if side == "chosen" else "",
                    prompt=prompt_text(ex["prompt"]),
                )
            )
    return view
