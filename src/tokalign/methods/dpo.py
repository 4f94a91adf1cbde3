"""DPO (Rafailov et al., 2023) with TRL's DPOTrainer: the baseline token-level methods compare to."""

from __future__ import annotations

from dataclasses import dataclass

from tokalign.methods.common import peft_config, run_trainer, trl_args

DATA_KIND = "preference"


@dataclass
class Config:
    name: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    precompute_ref_log_probs: bool = False


def train(run) -> dict:
    from trl import DPOConfig, DPOTrainer

    m = run.cfg.method
    args = DPOConfig(**trl_args(
        run, beta=m.beta, label_smoothing=m.label_smoothing, loss_type=[m.loss_type],
        precompute_ref_log_probs=m.precompute_ref_log_probs,
    ))
    trainer = DPOTrainer(
        model=run.load_policy(),
        ref_model=None if run.cfg.model.lora.enabled else run.load_policy(),
        args=args,
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )
    return run_trainer(run, trainer)
