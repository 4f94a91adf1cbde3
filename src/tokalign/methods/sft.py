"""Supervised fine-tuning with TRL's SFTTrainer on prompt/completion data."""

from __future__ import annotations

from dataclasses import dataclass

from tokalign.methods.common import peft_config, run_trainer, trl_args

DATA_KIND = "sft"


@dataclass
class Config:
    name: str = "sft"
    completion_only_loss: bool = True


def train(run) -> dict:
    from trl import SFTConfig, SFTTrainer

    m = run.cfg.method
    args = SFTConfig(**trl_args(run, completion_only_loss=m.completion_only_loss))
    trainer = SFTTrainer(
        model=run.load_policy(),
        args=args,
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )
    return run_trainer(run, trainer)
