"""AlignDistil (Zhang et al., ACL 2025, arXiv 2503.02832): RLHF as token-level distillation.

The policy is distilled (reverse KL over the vocabulary, `tokalign.losses.aligndistil_loss`) toward
a per-token teacher that extrapolates a DPO model away from a reverse-DPO model (or mixes it with
the reference), both built on demand by `tokalign.bases.dpo.dpo_models` when their paths are
empty. Defaults follow the authors' released scripts (songmzhang/AlignDistil). See docs/aligndistil.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob, option, require


class Variant(StrEnum):
    """The teachers of `aligndistil_loss` (their --reward_boost_type)."""

    basic = "basic"  # theorem1
    contrast = "contrast"  # theorem1_contrast
    aligndistil = "aligndistil"  # aligndistil
    adaptive = "adaptive"  # theorem1_adaptive


CONTRASTIVE = (Variant.contrast, Variant.aligndistil)  # base = the reverse-DPO model; else the reference
PER_TOKEN = (Variant.aligndistil, Variant.adaptive)  # α_t from ‖π_dpo − π_base‖₁; else fixed β₀/β


@dataclass
class Config(MethodConfig):
    algorithm: str = "aligndistil"
    name: str = "aligndistil"
    variant: Variant = knob(
        Variant.aligndistil,
        help="basic: π_dpo mixed with π_ref (Thm 1) | contrast: π_dpo extrapolated "
        "from the reverse DPO | aligndistil: contrast with a per-token weight "
        "(Eq. 16-17) | adaptive: basic with a per-token weight",
    )
    beta0: float = knob(
        0.1, gt=0, help="β₀: scale of the DPO token reward and the β both DPO models train with (their --beta)"
    )
    kl_coef: Optional[float] = knob(
        None, gt=0, help="β, the KL coefficient of basic / contrast (their --beta2 there); null: beta0"
    )
    tvd_scale: Optional[float] = knob(
        None,
        ge=0,
        help="r in α_t = r‖π_dpo − π_base‖₁ + eps, aligndistil / adaptive (their "
        "--beta2 there); null: 10 off-policy, 15 on-policy (their scripts)",
    )
    eps: float = knob(
        1e-3, gt=0, help="ε in α_t (hard-coded in their code); where the models agree β_t = β₀/α_t → β₀/ε"
    )
    temperature: float = knob(
        1.0, gt=0, help="τ dividing the teacher's and the policy's logits (their --kd_temperature)"
    )
    length_norm: bool = knob(
        True, help="average each response's token losses (their --reward_len_norm); false: sum them"
    )
    chunk_size: Optional[int] = knob(
        512,
        ge=1,
        help="positions per chunk of the vocabulary-wide loss: memory O(chunk × V); null: all positions at once",
    )
    shift_positions: bool = knob(
        False, help="their off-by-one: the distributions predicting y_2 … y_{L+1}, not y_1 … y_L"
    )
    on_policy: bool = knob(
        False,
        help="distil on responses sampled from the policy, one optimiser step per rollout batch "
        "(false: on the chosen responses, the paper's main setting)",
    )
    max_new_tokens: Optional[int] = knob(None, ge=1, help="on-policy response length; null: up to trainer.max_length")
    sampling_temperature: float = knob(1.0, gt=0, help="on-policy sampling temperature, top-p 1 (their scripts)")
    dpo_model: Optional[str] = knob(
        None, help="π_dpo (path or hub id); null: a DPO run of this setting at beta0, cached"
    )
    reverse_dpo_model: Optional[str] = knob(
        None,
        help="the reverse-DPO model of contrast / aligndistil (path or hub id); "
        "null: a DPO run on swapped pairs at beta0, cached",
    )


def tvd_scale(m) -> float:
    if m.tvd_scale is not None:
        return m.tvd_scale
    return 15.0 if m.on_policy else 10.0


def check(cfg: DictConfig) -> None:
    m = cfg.method
    variant = Variant(option(m.variant))
    require(
        m.kl_coef is None or variant not in PER_TOKEN,
        f"method.kl_coef={m.kl_coef} is unused by variant={variant}, whose β_t = beta0 / α_t; it serves basic and contrast",
    )
    require(
        m.tvd_scale is None or variant in PER_TOKEN,
        f"method.tvd_scale={m.tvd_scale} is unused by variant={variant}; it serves aligndistil and adaptive",
    )
    require(
        not m.reverse_dpo_model or variant in CONTRASTIVE,
        f"method.reverse_dpo_model is unused by variant={variant}, whose base is the reference; "
        "it serves contrast and aligndistil",
    )
    require(m.max_new_tokens is None or m.on_policy, "method.max_new_tokens is for method.on_policy=true")


def train(run) -> dict:
    from trl import SFTConfig

    from tokalign.bases.dpo.dpo_models import dpo_model_path, load_frozen
    from tokalign.bases.trl import peft_config, run_trainer, trl_args
    from tokalign.methods.aligndistil.trainer import AlignDistilTrainer

    m = run.cfg.method
    variant = Variant(option(m.variant))
    dpo = m.dpo_model or dpo_model_path(run, beta=m.beta0, knob="method.dpo_model")
    reverse = None
    if variant in CONTRASTIVE:
        reverse = m.reverse_dpo_model or dpo_model_path(
            run, beta=m.beta0, reverse=True, knob="method.reverse_dpo_model"
        )
    # The training arguments first: under ZeRO-3 every model below is then loaded sharded.
    args = SFTConfig(**trl_args(run, completion_only_loss=True))
    if reverse:
        base = load_frozen(run, reverse, "reverse-DPO model")
    else:
        base = None if run.cfg.model.lora.enabled else run.load_policy()
    trainer = AlignDistilTrainer(
        model=run.load_policy(),
        args=args,
        train_dataset=chosen_completions(run.train_data),
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
        dpo_model=load_frozen(run, dpo, "DPO model"),
        base_model=base,
        variant=variant.value,
        beta0=m.beta0,
        kl_coef=m.kl_coef,
        tvd_scale=tvd_scale(m),
        eps=m.eps,
        temperature=m.temperature,
        length_norm=m.length_norm,
        chunk_size=m.chunk_size,
        shift_positions=m.shift_positions,
        on_policy=m.on_policy,
        max_new_tokens=m.max_new_tokens,
        sampling_temperature=m.sampling_temperature,
    )
    return run_trainer(run, trainer)


def chosen_completions(data):
    """Preference rows as prompt/completion rows of their chosen responses (rejected ones are unused)."""
    return data.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")


def view(ctx):
    from tokalign.methods.aligndistil.view import aligndistil_view

    return aligndistil_view(ctx)


METHOD = Method(
    name="aligndistil",
    config=Config,
    data=DataKind.preference,
    train=train,
    check=check,
    view=view,
    description="AlignDistil (Zhang et al., ACL 2025): token-level distillation toward a DPO / reverse-DPO teacher",
    lora=True,
)
