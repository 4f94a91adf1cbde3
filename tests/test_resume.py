"""resume=auto after SIGKILL ends where an uninterrupted run ends, in the same W&B run; NaN stops before a bad save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tokalign.checkpoint import complete_checkpoints, is_complete, latest_checkpoint
from tokalign.tracking import read_metrics

pytestmark = pytest.mark.slow

RUN = ["method=dpo", "trainer.max_steps=16", "trainer.save_steps=2", "trainer.logging_steps=1",
       "trainer.per_device_batch_size=2", "eval.num_prompts=4"]


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir) if "train/loss" in m]


def _kill_after_first_checkpoint(run_dir) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokalign.cli", "train", f"hydra.run.dir={run_dir}", "logger=wandb", *RUN],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        while latest_checkpoint(run_dir / "checkpoints") is None and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists(), "the run ended before the kill"


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, cache_dir, tiny_model):
    ref, run_dir = tmp_path / "ref", tmp_path / "killed"
    run_cli("train", f"hydra.run.dir={ref}", "logger=none", *RUN)
    _kill_after_first_checkpoint(run_dir)
    wandb_id = (run_dir / "wandb_id.txt").read_text()
    killed_at = max(s for s, _ in _losses(run_dir))

    run_cli("train", f"hydra.run.dir={run_dir}", "logger=wandb", "resume=auto", *RUN)

    assert [s for s, _ in _losses(run_dir)] == [s for s, _ in _losses(ref)] == list(range(1, 17)) and killed_at < 16
    assert [v for _, v in _losses(run_dir)] == pytest.approx([v for _, v in _losses(ref)], rel=1e-6, abs=1e-7)
    w_ref, w_run = load_file(ref / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.allclose(w_ref[k], w_run[k], atol=1e-6) for k in w_ref)
    final_ref, final_run = (json.loads((d / "summary.json").read_text()) for d in (ref, run_dir))
    for key in ("train/loss_first", "train/loss_last", "train/steps", "eval/gold_reward", "eval/win_rate"):
        assert final_run[key] == pytest.approx(final_ref[key], rel=1e-5), key
    # the same W&B run continues: one id, one offline directory per attempt, both under that id
    assert (run_dir / "wandb_id.txt").read_text() == wandb_id
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(wandb_id) for p in offline)
    assert all(is_complete(p) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def test_nan_loss_stops_before_saving_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir, tiny_model, monkeypatch, capsys):
    from trl import DPOTrainer

    compute_loss = DPOTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        out = compute_loss(self, *args, **kwargs)
        if self.state.global_step >= 5:  # the 6th optimisation step
            return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        return out

    monkeypatch.setattr(DPOTrainer, "compute_loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(SystemExit):  # Hydra reports the error and exits non-zero
        run_cli("train", f"hydra.run.dir={run_dir}", "logger=none", "method=dpo", "trainer.max_steps=20",
                "trainer.save_steps=2", "trainer.logging_steps=10", "trainer.per_device_batch_size=2")
    assert "NonFiniteLossError" in capsys.readouterr().err
    done = complete_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in done] == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "checkpoints" / "checkpoint-6").exists() and not (run_dir / "model").exists()
    weights = load_file(done[-1] / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
