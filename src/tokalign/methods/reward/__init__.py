"""Reward-model training (Bradley-Terry) with TRL's RewardTrainer on preference pairs.

The trained model (a sequence classifier with one output) scores on-policy pairs, serves as
PPO's reward (`reward=model:<run dir>`) and initialises its critic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from tokalign.bases.contract import DataKind, Method, MethodConfig
from tokalign.config import knob


@dataclass
class Config(MethodConfig):
    algorithm: str = "reward"
    name: str = "reward"
    center_rewards_coefficient: Optional[float] = knob(None, ge=0, help="pulls the mean reward towards 0 (TRL)")


def train(run) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tokalign.bases.trl import peft_config, run_trainer, trl_args

    m = run.cfg.method
    from tokalign.modeling import quantization

    model = AutoModelForSequenceClassification.from_pretrained(
        run.model_path,
        num_labels=1,
        dtype=torch.float32,
        trust_remote_code=run.cfg.model.trust_remote_code,
        **quantization.load_kwargs(run.cfg.model),
    )
    model.config.pad_token_id = run.tokenizer.pad_token_id
    args = RewardConfig(**trl_args(run, center_rewards_coefficient=m.center_rewards_coefficient))
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=run.train_data,
        processing_class=run.tokenizer,
        peft_config=peft_config(run, task="SEQ_CLS"),  # the new score head trains whole beside the adapter
    )
    return run_trainer(run, trainer)


def evaluate(cfg: DictConfig, run_dir: Path) -> tuple[dict, list[str], list[list[Any]]]:
    """Pairwise accuracy and mean margin of the trained reward model on held-out pairs."""
    from tokalign.data.chat import prompt_text
    from tokalign.data.loading import load_split
    from tokalign.rewards import RewardModelScorer

    data = load_split(cfg.dataset, DataKind.preference, "eval", method=cfg.method.name)
    scorer = RewardModelScorer(str(run_dir / "model"), batch_size=cfg.eval.batch_size)
    chosen = scorer(data["prompt"], data["chosen"])
    rejected = scorer(data["prompt"], data["rejected"])
    n = max(1, len(chosen))
    metrics = {
        "eval/pairwise_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
        "eval/mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
    }
    rows = [
        [prompt_text(p), c[-1]["content"], r[-1]["content"], sc - sr]
        for p, c, r, sc, sr in zip(data["prompt"], data["chosen"], data["rejected"], chosen, rejected)
    ]
    return metrics, ["prompt", "chosen", "rejected", "score_margin"], rows[: cfg.eval.num_table_rows]


METHOD = Method(
    name="reward",
    config=Config,
    data=DataKind.preference,
    train=train,
    evaluate=evaluate,
    description="Bradley-Terry reward model on TRL's RewardTrainer",
    lora=True,
)
