"""Faults lose nothing: a killed run resumes to the uninterrupted result in the same W&B run (a TRL
method and the PPO loop), divergence never seals a non-finite checkpoint and resume skips one, a
finished run is left alone, a run killed during its evaluation re-runs only that, and an earlier
run's directory is not reused by accident."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import run_cli
from tokalign.artifacts.checkpoint import (
    complete_checkpoints,
    is_complete,
    latest_checkpoint,
    seal,
)
from tokalign.artifacts.tracking import read_metrics

pytestmark = pytest.mark.slow

DPO = [
    "method=dpo",
    "trainer.max_steps=16",
    "trainer.save_steps=2",
    "trainer.logging_steps=1",
    "trainer.per_device_batch_size=2",
    "eval.num_prompts=4",
]
MA_PPO = [
    "method=ma_ppo",
    "trainer.max_steps=6",
    "trainer.save_steps=2",
    "trainer.logging_steps=1",
    "trainer.per_device_batch_size=4",
    "method.max_new_tokens=12",
    "eval.num_prompts=4",
]


def _rows(run_dir, key):
    return [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]


def _kill_after_first_checkpoint(run_dir, args) -> None:
    # Its own W&B service, as a separate job has: this process's would keep the killed run registered.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_SERVICE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokalign.cli", "train", f"hydra.run.dir={run_dir}", "logger=wandb", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        while latest_checkpoint(run_dir / "checkpoints") is None and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists(), (
        "the run ended before the kill"
    )


@pytest.mark.parametrize(
    "args,key,summary_keys",
    [
        (
            DPO,
            "train/loss",
            ("train/loss_first", "train/loss_last", "train/steps", "eval/gold_reward", "eval/win_rate"),
        ),
        (
            MA_PPO,
            "train/reward",
            ("train/reward_first", "train/reward_last", "train/kl_last", "train/steps", "eval/gold_reward"),
        ),
    ],
    ids=["dpo", "ma_ppo"],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path, cache_dir, tiny_model, args, key, summary_keys, capsys
):
    ref, run_dir = tmp_path / "ref", tmp_path / "killed"
    run_cli("train", f"hydra.run.dir={ref}", "logger=none", *args)
    _kill_after_first_checkpoint(run_dir, args)
    wandb_id = (run_dir / "wandb_id.txt").read_text()
    killed_at = max(s for s, _ in _rows(run_dir, key))
    capsys.readouterr()

    run_cli("train", f"hydra.run.dir={run_dir}", "logger=wandb", "resume=auto", *args)

    assert "tokalign: resuming from" in capsys.readouterr().out
    steps = [s for s, _ in _rows(ref, key)]
    assert [s for s, _ in _rows(run_dir, key)] == steps and killed_at < steps[
        -1
    ]  # metrics.jsonl rewound, no duplicates
    assert [v for _, v in _rows(run_dir, key)] == pytest.approx([v for _, v in _rows(ref, key)], rel=1e-6, abs=1e-7)
    w_ref, w_run = load_file(ref / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.allclose(w_ref[k], w_run[k], atol=1e-6) for k in w_ref)
    final_ref, final_run = (json.loads((d / "summary.json").read_text()) for d in (ref, run_dir))
    for name in summary_keys:
        assert final_run[name] == pytest.approx(final_ref[name], rel=1e-5), name
    assert final_run["train/attempts"] == 2 and final_run["train/wall_s"] > 0
    # the same W&B run continues: one id, one offline directory per attempt, both under that id
    assert (run_dir / "wandb_id.txt").read_text() == wandb_id
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(wandb_id) for p in offline)
    assert all(is_complete(p) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def test_finished_runs_are_left_alone_and_earlier_runs_are_not_reused(tmp_path, cache_dir, tiny_model, capsys):
    run_dir = tmp_path / "run"
    args = ["method=dpo", "trainer.max_steps=2", "trainer.per_device_batch_size=2", "logger=none", "eval.num_prompts=4"]
    run_cli("train", f"hydra.run.dir={run_dir}", *args)
    summary, rows = (run_dir / "summary.json").read_text(), (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    run_cli("train", f"hydra.run.dir={run_dir}", "resume=auto", *args)  # a requeued job whose run had finished
    assert "already finished (summary.json); nothing to do" in capsys.readouterr().out
    assert (run_dir / "summary.json").read_text() == summary and (run_dir / "metrics.jsonl").read_text() == rows
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", f"hydra.run.dir={run_dir}", *args)
    assert exit_.value.code == 2 and "holds an earlier run" in capsys.readouterr().err

    (run_dir / "summary.json").unlink()  # killed during the final evaluation
    (run_dir / "eval.json").unlink()
    run_cli("train", f"hydra.run.dir={run_dir}", "resume=auto", *args)
    assert "running only what is missing" in capsys.readouterr().out
    assert json.loads((run_dir / "summary.json").read_text())["eval/num_prompts"] == 4
    assert (run_dir / "metrics.jsonl").read_text().startswith(rows)  # no training step was added


def _poison(monkeypatch, at_step: int, weights: bool) -> None:
    """From the step after `at_step`, the loss (or, keeping the loss finite, the updated weights) becomes NaN."""
    from trl import DPOTrainer

    if weights:
        step = torch.optim.AdamW.step

        def poisoned_step(self, *args, **kwargs):
            out = step(self, *args, **kwargs)
            if poisoned_step.calls >= at_step:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            poisoned_step.calls += 1
            return out

        poisoned_step.calls = 0
        monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
        return
    compute_loss = DPOTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        out = compute_loss(self, *args, **kwargs)
        if self.state.global_step >= at_step:
            return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        return out

    monkeypatch.setattr(DPOTrainer, "compute_loss", poisoned)


@pytest.mark.parametrize("weights", [False, True], ids=["nan_loss", "nan_weights_finite_loss"])
def test_divergence_stops_before_a_bad_save_in_one_line(tmp_path, cache_dir, tiny_model, monkeypatch, capsys, weights):
    _poison(monkeypatch, at_step=5, weights=weights)
    run_dir = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_:
        run_cli(
            "train",
            f"hydra.run.dir={run_dir}",
            "logger=none",
            "method=dpo",
            "trainer.max_steps=20",
            "trainer.save_steps=2",
            "trainer.logging_steps=10",
            "trainer.per_device_batch_size=2",
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "nothing was saved" in err
    done = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in done] == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "checkpoints" / "checkpoint-6").exists() and not (run_dir / "model").exists()
    assert all(torch.isfinite(w).all() for w in load_file(done[-1] / "model.safetensors").values())


def test_resume_skips_a_checkpoint_with_non_finite_weights(tmp_path, cache_dir, tiny_model, capsys):
    run_dir = tmp_path / "run"
    args = [
        "method=dpo",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.per_device_batch_size=2",
        "logger=none",
        "eval.at_end=false",
        "trainer.save_total_limit=3",
    ]
    run_cli("train", f"hydra.run.dir={run_dir}", *args)
    for name in ("summary.json", "train.json"):
        (run_dir / name).unlink()
    bad = run_dir / "checkpoints" / "checkpoint-4"
    weights = load_file(bad / "model.safetensors")
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    seal(bad)  # sealed as if a (pre-guard) run had saved it
    capsys.readouterr()
    run_cli("train", f"hydra.run.dir={run_dir}", "resume=auto", *args)
    out = capsys.readouterr().out
    assert f"not resuming from {bad}: model.safetensors: {first} is not finite" in out
    assert "resuming from" in out and "checkpoint-2 (step 2)" in out


def nan_reward(prompts, completions, **_):
    """A reward model gone wrong: every score NaN."""
    return [float("nan")] * len(completions)


def test_the_ppo_loop_stops_on_a_diverged_rollout_in_one_line(tmp_path, cache_dir, tiny_model, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(
            "train",
            f"hydra.run.dir={tmp_path / 'nan'}",
            "logger=none",
            "method=ppo",
            f"method.reward={__name__}:nan_reward",
            "trainer.max_steps=2",
            "trainer.per_device_batch_size=4",
            "method.max_new_tokens=8",
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"method.reward={__name__}:nan_reward returned nan for row 0" in err  # the reward's guard stops it first
    with pytest.raises(SystemExit):  # a KL past its bound stops the second iteration; the first checkpoint stays
        run_cli(
            "train",
            f"hydra.run.dir={tmp_path / 'kl'}",
            "logger=none",
            "method=ppo",
            "method.kl_limit=1e-12",
            "trainer.max_steps=3",
            "trainer.save_steps=1",
            "trainer.per_device_batch_size=4",
            "method.max_new_tokens=8",
            "trainer.learning_rate=1e-2",
        )
    err = capsys.readouterr().err
    assert "> method.kl_limit=1e-12" in err
    stopped = int(re.search(r"the rollout of iteration (\d+) diverged", err).group(1))
    saved = [p.name for p in complete_checkpoints(tmp_path / "kl" / "checkpoints")]
    assert stopped > 1 and saved == [f"checkpoint-{i}" for i in range(1, stopped)]  # nothing from the bad iteration
