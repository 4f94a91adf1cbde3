"""DPO (Rafailov et al., 2023) with TRL's DPOTrainer: the baseline the token-level methods compare to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tokalign.config import knob, option
from tokalign.methods.base import DataKind, Method, MethodConfig


class LossType(StrEnum):
    """TRL 1.16's DPO loss types (a test keeps them equal to TRL's)."""

    sigmoid = "sigmoid"
    hinge = "hinge"
    ipo = "ipo"
    exo_pair = "exo_pair"
    nca_pair = "nca_pair"
    robust = "robust"
    bco_pair = "bco_pair"
    sppo_hard = "sppo_hard"
    aot = "aot"
    aot_unpaired = "aot_unpaired"
    apo_zero = "apo_zero"
    apo_down = "apo_down"
    discopop = "discopop"
    sft = "sft"
    sigmoid_norm = "sigmoid_norm"


@dataclass
class Config(MethodConfig):
    algorithm: str = "dpo"
    name: str = "dpo"
    beta: float = knob(0.1, gt=0, help="KL coefficient: the temperature of the implicit reward")
    label_smoothing: float = knob(0.0, ge=0, lt=0.5, help="conservative DPO's label noise (sigmoid loss)")
    loss_type: LossType = knob(LossType.sigmoid, help="TRL's DPO loss")
    precompute_ref_log_probs: bool = knob(False, help="reference log-probs computed once before training")
    reverse: bool = knob(False, help="train on swapped pairs: a reverse-DPO model (a contrastive teacher)")


def train(run) -> dict:
    from trl import DPOConfig, DPOTrainer

    from tokalign.methods.trl_support import peft_config, run_trainer, trl_args

    m = run.cfg.method
    args = DPOConfig(**trl_args(
        run, beta=m.beta, label_smoothing=m.label_smoothing, loss_type=[option(m.loss_type)],
        precompute_ref_log_probs=m.precompute_ref_log_probs,
    ))
    trainer = DPOTrainer(
        model=run.load_policy(),
        ref_model=None if run.cfg.model.lora.enabled else run.load_policy(),
        args=args,
        train_dataset=swapped(run.train_data) if m.reverse else run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )
    return run_trainer(run, trainer)


def swapped(data):
    """Preference rows with chosen and rejected exchanged."""
    return data.rename_columns({"chosen": "rejected", "rejected": "chosen"})


def view(ctx):
    from tokalign.methods.dpo.view import preference_view

    return preference_view(ctx)


METHOD = Method(
    name="dpo", config=Config, data=DataKind.preference, train=train, view=view,
    summary="DPO (Rafailov et al., 2023) on TRL's DPOTrainer",
)
