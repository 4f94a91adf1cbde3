"""DPO (Rafailov et al., 2023) with TRL's DPOTrainer: the baseline the token-level methods compare to.

Its settings live in `tokalign.bases.dpo.config`, shared with the methods that build DPO models on demand.
"""

from __future__ import annotations

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.dpo.config import Config, swapped
from tokalign.config import option


def train(run) -> dict:
    from trl import DPOConfig, DPOTrainer

    from tokalign.bases.trl import peft_config, run_trainer, trl_args

    m = run.cfg.method
    args = DPOConfig(
        **trl_args(
            run,
            beta=m.beta,
            label_smoothing=m.label_smoothing,
            loss_type=[option(m.loss_type)],
            precompute_ref_log_probs=m.precompute_ref_log_probs,
        )
    )
    trainer = DPOTrainer(
        model=run.load_policy(),
        ref_model=None if run.cfg.model.lora.enabled else run.load_policy(),
        args=args,
        train_dataset=swapped(run.train_data) if m.reverse else run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )
    return run_trainer(run, trainer)


def view(ctx):
    from tokalign.bases.dpo.view import preference_view

    return preference_view(ctx)


METHOD = Method(
    name="dpo",
    config=Config,
    data=DataKind.preference,
    train=train,
    view=view,
    description="DPO (Rafailov et al., 2023) on TRL's DPOTrainer",
    lora=True,
)
