"""Supervised fine-tuning with TRL's SFTTrainer on prompt/completion data."""

from __future__ import annotations

from dataclasses import dataclass

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob


@dataclass
class Config(MethodConfig):
    algorithm: str = "sft"
    name: str = "sft"
    completion_only_loss: bool = knob(True, help="train on completion tokens only (not the prompt)")


def train(run) -> dict:
    from trl import SFTConfig, SFTTrainer

    from tokalign.bases.trl import peft_config, run_trainer, trl_args

    m = run.cfg.method
    trainer = SFTTrainer(
        model=run.load_policy(),
        args=SFTConfig(**trl_args(run, completion_only_loss=m.completion_only_loss)),
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run),
    )
    return run_trainer(run, trainer)


METHOD = Method(
    name="sft",
    config=Config,
    data=DataKind.sft,
    train=train,
    description="supervised fine-tuning on TRL's SFTTrainer",
    lora=True,
)
