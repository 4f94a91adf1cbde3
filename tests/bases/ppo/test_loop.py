"""The PPO loop end to end: ppo ≡ ma_ppo with n=1, every option, exact resume (one and two processes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SMALL = (
    "logger=none",
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=12",
    "eval.at_end=false",
    "trainer.logging_steps=1",
)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ppo_equals_ma_ppo_with_n1_end_to_end(train):
    """Same seed, same code path: method=ppo and method=ma_ppo method.n=1 log identical metrics."""
    a = train("method=ppo", "trainer.max_steps=2", *SMALL)
    b = train("method=ma_ppo", "method.n=1", "trainer.max_steps=2", *SMALL)
    timing = ("time", "train/rollout_tokens_per_s", "train/train_tokens_per_s", "train/rollout_s", "train/update_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metrics(a)) == strip(metrics(b))
    first = metrics(a)[0]
    assert first["train/approx_kl"] == 0 and first["train/clipfrac"] == 0  # invariant 9: θ = θ_old ⇒ ρ = 1
    for key in (
        "reward",
        "kl",
        "entropy",
        "value_loss",
        "clipfrac",
        "approx_kl",
        "explained_variance",
        "macro_length",
        "rollout_tokens_per_s",
        "train_tokens_per_s",
    ):
        assert f"train/{key}" in first
    assert (a / "model" / "config.json").exists() and (a / "critic" / "config.json").exists()


@pytest.mark.slow
def test_ma_ppo_with_reward_model_parsing_and_segment_loss(train):
    """reward=model from a method=reward run dir (critic from the RM), parsing rule, every option on."""
    rm = train("method=reward", "trainer.max_steps=2", "trainer.per_device_batch_size=4", "eval.at_end=false")
    run = train(
        "method=ma_ppo",
        f"method.reward=model:{rm}",
        "method.termination=parsing",
        "method.policy_loss_level=segment",
        "method.value_weighting=last",
        "method.reward_aggregation=mean",
        "method.num_mini_batches=2",
        "method.num_ppo_epochs=2",
        "method.kl_estimator=k3",
        "method.score_clip=2.5",
        "method.whiten_rewards=true",
        "method.critic_learning_rate=5e-5",
        "trainer.max_steps=2",
        *SMALL,
    )
    rows = metrics(run)
    assert len(rows) == 2 and rows[0]["train/macro_length"] > 1
    assert all(abs(r["train/reward"]) <= 2.5 for r in rows)
    assert rows[0]["train/critic_lr"] < rows[0]["train/lr"]


@pytest.mark.slow
def test_resume_gives_the_same_next_step(train, tmp_path):
    from tests.conftest import run_cli

    args = ("method=ma_ppo", "trainer.max_steps=3", "trainer.save_steps=2", *SMALL)
    full = train(*args)
    assert [p.name for p in (full / "checkpoints").iterdir()] == ["checkpoint-2"]
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    run_cli("train", f"hydra.run.dir={resumed}", "resume=auto", "eval.num_prompts=8", *args)
    after = metrics(resumed)
    assert [r["step"] for r in after] == [3]
    for key in ("train/policy_loss", "train/value_loss", "train/reward", "train/kl"):
        assert after[0][key] == metrics(full)[-1][key], key


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_checkpoint_every_rank_and_resume_exactly(train, tmp_path):
    """DDP (gloo): each rank trains its own prompts, every rank's RNG is saved, resume is exact."""
    from tests.conftest import run_cli

    args = (
        "method=ma_ppo",
        "launcher=ddp",
        "launcher.num_gpus=2",
        "trainer.max_steps=3",
        "trainer.save_steps=2",
        *SMALL,
        "trainer.per_device_batch_size=2",
    )
    full = train(*args)
    checkpoint = full / "checkpoints" / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    assert [r["step"] for r in metrics(full)] == [1, 2, 3]
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / "checkpoints" / "checkpoint-2")
    run_cli("train", f"hydra.run.dir={resumed}", "resume=auto", *args)
    for key in ("train/policy_loss", "train/value_loss", "train/reward"):
        assert metrics(resumed)[0][key] == metrics(full)[-1][key], key
