"""End-to-end tiny runs of the TRL baselines: the loss falls and the saved model reloads."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tokalign.artifacts.tracking import read_metrics

STEPS = ("trainer.max_steps=30", "trainer.logging_steps=3", "trainer.learning_rate=2e-3")
# A reward model's new score head needs ~60 steps before the pairs separate.
REWARD_STEPS = ("trainer.max_steps=100", "trainer.logging_steps=10", "trainer.learning_rate=1e-3")


def _losses(run_dir):
    return [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,loader",
    [
        ("sft", AutoModelForCausalLM),
        ("dpo", AutoModelForCausalLM),
        ("reward", AutoModelForSequenceClassification),
    ],
)
def test_loss_falls_and_model_reloads(train, method, loader):
    run_dir = train(f"method={method}", *(REWARD_STEPS if method == "reward" else STEPS))
    losses = _losses(run_dir)
    assert len(losses) == 11  # the first step, then every logging_steps-th
    assert sum(losses[-3:]) < sum(losses[:3])
    assert loader.from_pretrained(run_dir / "model") is not None
    assert (run_dir / "resolved.yaml").exists() and (run_dir / "summary.json").exists()
    assert json.loads((run_dir / "eval.json").read_text())
