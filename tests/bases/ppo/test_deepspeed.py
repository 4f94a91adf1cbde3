"""The PPO loop under DeepSpeed ZeRO-2 and ZeRO-3, 2 CPU processes (gloo), against one process.

Policy and critic are DeepSpeed engines, the reference an inference engine (sharded under
ZeRO-3), generation runs on gathered weights. With the same global batch (2 × 2 prompts against
4), near-greedy sampling (so each response does not depend on how a batch is split) and
per-response losses with rollout-wide whitening, every iteration's losses and gradient norms
match one process; a resumed run repeats the next iteration exactly; the final policy and
critic are saved whole. RTO's extra frozen models (its DPO model, sharded like the reference) give
each token the same dense reward in both.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tokalign.artifacts.tracking import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ARGS = (
    "trainer.max_steps=3",
    "trainer.save_steps=2",
    "trainer.logging_steps=1",
    "eval.at_end=false",
    "method.max_new_tokens=8",
    "method.temperature=0.00001",
    "trainer.learning_rate=1e-4",
    "trainer.lr_scheduler=constant",
    "trainer.warmup_ratio=0",
    "logger=none",
)
MATCH = ("value_loss", "reward", "kl", "policy_grad_norm", "value_grad_norm", "response_length")


def _train(run_dir, *overrides, method="ma_ppo"):
    run_cli("train", f"hydra.run.dir={run_dir}", f"method={method}", *ARGS, *overrides)
    return [m for m in read_metrics(run_dir) if "train/policy_loss" in m]


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("single") / "run"
    return run_dir, _train(run_dir, "trainer.per_device_batch_size=4")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_two_processes_match_one_and_resume_exactly(tmp_path, single, stage):
    single_dir, one = single
    launcher = (
        "trainer.per_device_batch_size=2",
        "launcher=deepspeed",
        "launcher.num_gpus=2",
        f"launcher.zero_stage={stage}",
    )
    two = _train(tmp_path / "full", *launcher)
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["train/policy_loss"] == pytest.approx(a["train/policy_loss"], abs=1e-5)
        for key in MATCH:
            assert b[f"train/{key}"] == pytest.approx(a[f"train/{key}"], rel=1e-4, abs=1e-6), (a["step"], key)
    assert json.loads((tmp_path / "full" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == stage
    for part in ("model", "critic"):  # gathered whole, equal to the single process's
        w1, w2 = (
            load_file(single_dir / part / "model.safetensors"),
            load_file(tmp_path / "full" / part / "model.safetensors"),
        )
        assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1), part

    checkpoint = tmp_path / "full" / "checkpoints" / "checkpoint-2"
    assert {"pytorch_model", "pytorch_model_1", "random_states_0.pkl", "random_states_1.pkl"} <= {
        p.name for p in checkpoint.iterdir()
    }
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    resumed = _train(tmp_path / "resumed", *launcher, "resume=auto")
    assert [m["step"] for m in resumed] == [3]
    for key in ("policy_loss", *MATCH):
        assert resumed[0][f"train/{key}"] == two[-1][f"train/{key}"], key


def test_rto_dense_rewards_under_zero3_match_one_process(tmp_path, single):
    """The DPO model is the single run's trained policy, so the dense rewards are not zero."""
    dpo = f"method.dpo_model={single[0] / 'model'}"
    one = _train(tmp_path / "one", dpo, "trainer.per_device_batch_size=4", method="rto")
    two = _train(
        tmp_path / "two",
        dpo,
        "trainer.per_device_batch_size=2",
        "launcher=deepspeed",
        "launcher.num_gpus=2",
        "launcher.zero_stage=3",
        method="rto",
    )
    assert [m["step"] for m in two] == [1, 2, 3] and any(m["train/rto/dpo_reward"] != 0 for m in one)
    for a, b in zip(one, two):
        for key in ("policy_loss", "rto/dpo_reward", "rto/dpo_clipfrac", *MATCH):
            assert b[f"train/{key}"] == pytest.approx(a[f"train/{key}"], rel=1e-4, abs=1e-6), (a["step"], key)
