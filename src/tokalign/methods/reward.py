"""Reward-model training (Bradley-Terry) with TRL's RewardTrainer on preference pairs.

The trained model (a sequence classifier with one output) scores on-policy pairs and serves
as the reward and critic initialisation for PPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tokalign.methods.common import run_trainer, trl_args

DATA_KIND = "preference"


@dataclass
class Config:
    name: str = "reward"
    center_rewards_coefficient: Optional[float] = None


def train(run) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    m = run.cfg.method
    model = AutoModelForSequenceClassification.from_pretrained(
        run.model_path, num_labels=1, dtype=torch.float32, trust_remote_code=run.cfg.model.trust_remote_code
    )
    model.config.pad_token_id = run.tokenizer.pad_token_id
    args = RewardConfig(**trl_args(run, center_rewards_coefficient=m.center_rewards_coefficient))
    trainer = RewardTrainer(model=model, args=args, train_dataset=run.train_data, processing_class=run.tokenizer)
    return run_trainer(run, trainer)
