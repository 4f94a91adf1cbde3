"""GRPO (Shao et al., 2024) on TRL's GRPOTrainer: the baseline D³S and PODS compare to.

Its settings and trainer live in `tokalign.bases.grpo`, which the GRPO family shares.
"""

from __future__ import annotations

from tokalign.bases.contract import DataKind, Method
from tokalign.bases.grpo.config import Config, build_trainer, check


def train(run) -> dict:
    from tokalign.bases.trl import run_trainer

    trainer = build_trainer(run)
    return run_trainer(run, trainer) | trainer.usage_summary()


def view(ctx):
    from tokalign.bases.grpo.view import group_view

    return group_view(ctx)


METHOD = Method(
    name="grpo",
    config=Config,
    data=DataKind.prompt,
    train=train,
    check=check,
    view=view,
    description="GRPO / GSPO (Shao et al., 2024) on TRL's GRPOTrainer",
    lora=True,
)
