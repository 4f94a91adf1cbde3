"""AlignDistil's token view: the extrapolation weight α_t and the token KL weight β_t on chosen responses."""

from __future__ import annotations

import torch

from tokalign.bases.dpo.dpo_models import cached_path
from tokalign.bases.views import (
    TokenSeq,
    View,
    ViewContext,
    first_response,
    pieces,
    response_ids,
)
from tokalign.config import option
from tokalign.data.chat import prompt_text
from tokalign.losses import aligndistil_loss
from tokalign.methods.aligndistil import CONTRASTIVE, Variant, tvd_scale
from tokalign.modeling.lora import is_model_dir

LEGEND = (
    "Colour: α_t, how far the teacher π*_t moves from its anchor (aligndistil: r‖π_dpo − π_rdpo‖₁ + ε, "
    "extrapolating π_dpo away from the reverse DPO); beta = β_t, the weight of the token's KL; kl = KL(π_θ ‖ π*_t) "
    "of the trained policy. On the chosen responses of evaluation pairs (the off-policy training data)."
)


def _model(ctx: ViewContext, path, *, reverse: bool):
    m = ctx.cfg.method
    if path:
        return ctx.load(path)
    cached = cached_path(ctx.cfg, beta=m.beta0, reverse=reverse)
    if not is_model_dir(cached):
        knob = "reverse_dpo_model" if reverse else "dpo_model"
        raise FileNotFoundError(
            f"the run's {knob.replace('_', ' ')} is not in the cache ({cached}); pass its path as method.{knob}"
        )
    return ctx.load(cached)


@torch.no_grad()
def _logits(model, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """(len(ids), V) logits of the positions that predict `ids`."""
    return model(input_ids=torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].float()


def aligndistil_view(ctx: ViewContext) -> View:
    m = ctx.cfg.method
    variant = Variant(option(m.variant))
    policy, dpo = ctx.policy(), _model(ctx, m.dpo_model, reverse=False)
    base = _model(ctx, m.reverse_dpo_model, reverse=True) if variant in CONTRASTIVE else ctx.reference()
    settings = dict(
        variant=variant.value,
        beta0=m.beta0,
        beta=m.kl_coef,
        tvd_scale=tvd_scale(m),
        eps=m.eps,
        temperature=m.temperature,
    )
    view = View(f"{m.name} ({variant.value}) · {ctx.cfg.run_name}", LEGEND)
    for i, ex in enumerate(ctx.eval_rows("preference")):
        prompt_ids, ids = response_ids(ctx.tokenizer, ex["prompt"], first_response(ex["chosen"]))
        logits = [_logits(model, prompt_ids, ids) for model in (policy, dpo, base)]
        values: dict[str, list[float]] = {"alpha": [], "beta": [], "kl": []}
        for t in range(len(ids)):  # one position at a time: the loss reports per-position α_t, β_t as its mean
            _, metrics = aligndistil_loss(*(x[None, t : t + 1] for x in logits), torch.ones(1, 1), **settings)
            for name in values:
                values[name].append(metrics[f"aligndistil/{name}" + ("" if name == "kl" else "_mean")].item())
        loss, _ = aligndistil_loss(*(x[None] for x in logits), torch.ones(1, len(ids)), **settings)
        view.seqs.append(
            TokenSeq(
                f"example {i + 1} · chosen",
                pieces(ctx.tokenizer, ids),
                values,
                "alpha",
                note=f"response loss {loss.item():.4g} (β_t-weighted, length-normalised KL to π*)",
                prompt=prompt_text(ex["prompt"]),
            )
        )
    return view
