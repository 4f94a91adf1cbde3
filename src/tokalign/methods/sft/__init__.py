"""Supervised fine-tuning with TRL's SFTTrainer on prompt/completion data.

`packing` puts several rows into each sequence of trainer.max_length tokens (TRL's best-fit
decreasing packing, padding-free: each row keeps its own positions and attends only to itself),
so that no compute goes to padding when lengths are uneven; `padding_free` alone concatenates a
batch's rows without padding. Both need an attention implementation that reads the rows'
boundaries from position ids (flash attention on GPUs; transformers' SDPA and eager masks do too).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob


@dataclass
class Config(MethodConfig):
    algorithm: str = "sft"
    name: str = "sft"
    completion_only_loss: bool = knob(True, help="train on completion tokens only (not the prompt)")
    packing: bool = knob(False, help="pack rows into sequences of trainer.max_length tokens (padding-free)")
    padding_free: bool = knob(False, help="concatenate each batch's rows without padding (implied by packing)")


def train(run) -> dict:
    from trl import SFTConfig, SFTTrainer

    from tokalign.bases.trl import peft_config, run_trainer, trl_args

    m = run.cfg.method
    trainer = SFTTrainer(
        model=run.load_policy(),
        args=SFTConfig(
            **trl_args(run, completion_only_loss=m.completion_only_loss, packing=m.packing, padding_free=m.padding_free)
        ),
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
