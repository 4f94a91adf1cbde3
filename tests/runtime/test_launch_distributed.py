"""Real 2-process runs (gloo, CPU) through the command a user types, against one process with the same global batch;
and a killed launch leaves no worker behind.

DPO's loss must match step for step. GRPO's cannot: TRL seeds each rank's sampler differently
(`set_seed(seed, device_specific=True)` in GRPOTrainer.__init__), so the two runs generate different
completions; there the global batch (completions trained per step, over all ranks) must be the
single process's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli
from tokalign.artifacts.rundir import LOCK, claim
from tokalign.artifacts.tracking import read_metrics
from tokalign.errors import UserError

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

DPO = ["method=dpo", "trainer.max_steps=3", "trainer.logging_steps=1", "eval.at_end=false"]
GRPO = [
    "method=grpo",
    "dataset=toy_math",
    "trainer.max_steps=2",
    "trainer.logging_steps=1",
    "eval.at_end=false",
    "method.num_generations=4",
    "method.max_completion_length=8",
]


def _run(root, name, *overrides):
    run_dir = root / name
    run_cli("train", f"hydra.run.dir={run_dir}", "logger=none", *overrides)
    return run_dir


def _losses(run_dir):
    return [(m["step"], m["train/loss"], m["train/grad_norm"]) for m in read_metrics(run_dir) if "train/loss" in m]


@pytest.fixture(scope="module")
def dpo_single(tmp_path_factory, cache_dir):
    return _run(tmp_path_factory.mktemp("single"), "dpo", *DPO, "trainer.per_device_batch_size=4")


@pytest.mark.parametrize(
    "launcher",
    [
        ["launcher=ddp"],
        ["launcher=deepspeed", "launcher.zero_stage=2"],
        ["launcher=deepspeed", "launcher.zero_stage=3", "eval.at_end=true", "eval.num_prompts=4"],
    ],
    ids=["ddp", "zero2", "zero3"],
)
def test_dpo_two_processes_match_one(tmp_path, dpo_single, launcher):
    run_dir = _run(tmp_path, "dpo2", *DPO, "trainer.per_device_batch_size=2", "launcher.num_gpus=2", *launcher)
    single, double = _losses(dpo_single), _losses(run_dir)
    assert [s for s, *_ in double] == [1, 2, 3]
    for (_, loss1, grad1), (_, loss2, grad2) in zip(single, double):
        assert loss2 == pytest.approx(loss1, rel=1e-5) and grad2 == pytest.approx(grad1, rel=1e-4)
    # the final weights are whole (ZeRO-3 gathers its shards) and equal to the single-process ones
    w1, w2 = load_file(dpo_single / "model" / "model.safetensors"), load_file(run_dir / "model" / "model.safetensors")
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    # one set of outputs, written by rank 0 only
    assert len([m for m in read_metrics(run_dir) if m.get("train/loss") is not None]) == 3
    if "launcher=deepspeed" in launcher:
        assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == int(
            launcher[1][-1]
        )
    if "eval.at_end=true" in launcher:
        assert json.loads((run_dir / "summary.json").read_text())["eval/num_prompts"] == 4


@pytest.mark.parametrize(
    "launcher", [["launcher=ddp"], ["launcher=deepspeed", "launcher.zero_stage=2"]], ids=["ddp", "zero2"]
)
def test_grpo_two_processes_train_the_global_batch(tmp_path, cache_dir, launcher):
    run_dir = _run(tmp_path, "grpo2", *GRPO, "trainer.per_device_batch_size=4", "launcher.num_gpus=2", *launcher)
    # completions trained per step, gathered over ranks: 2 x 4, what one process with batch 8 trains
    assert [m["train/usage/kept_samples"] for m in read_metrics(run_dir) if "train/usage/kept_samples" in m] == [8, 8]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss, _ in _losses(run_dir))
    assert (run_dir / "model" / "model.safetensors").exists()


def test_d3s_selection_is_global_across_two_processes(tmp_path, cache_dir):
    """N = 2 of G = 4 per group, 2 groups over 2 ranks: 4 completions trained per step in all."""
    run_dir = _run(
        tmp_path,
        "d3s2",
        *GRPO,
        "method=d3s_grpo",
        "method.n_init=2",
        "method.schedule=constant",
        "method.k_init=0.5",
        "trainer.per_device_batch_size=4",
        "launcher.num_gpus=2",
        "launcher=ddp",
    )
    assert [m["train/usage/kept_samples"] for m in read_metrics(run_dir) if "train/usage/kept_samples" in m] == [4, 4]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss, _ in _losses(run_dir))


def _processes(match) -> list[int]:
    """Live (not zombie) processes for which `match(pid)` holds; one that ends mid-scan is skipped."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" and match(pid):
                found.append(int(pid))
        except OSError:
            continue
    return found


def _workers(config: str) -> list[int]:
    """Processes started on this run's resolved config (spawner and workers)."""
    return _processes(lambda pid: config in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore"))


def _holders(path) -> list[int]:
    """Processes with `path` open, whatever their command line."""
    target = os.path.realpath(path)
    return _processes(
        lambda pid: any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd"))
    )


def test_killing_the_launching_process_leaves_no_worker_behind(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokalign.cli",
            "train",
            f"hydra.run.dir={run_dir}",
            "logger=none",
            "launcher=ddp",
            "launcher.num_gpus=2",
            "method=dpo",
            "trainer.max_steps=500",
            "trainer.logging_steps=1",
            "trainer.per_device_batch_size=2",
            "eval.at_end=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = str(run_dir / "resolved.yaml")
    deadline = time.time() + 300
    while not read_metrics(run_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = _workers(config)
    assert read_metrics(run_dir) and len(workers) >= 3  # the spawner and two ranks, training
    proc.send_signal(signal.SIGKILL)  # the parent alone, as an OOM killer or a lost terminal would
    proc.wait()
    # A process leaves /proc's command lines (its memory is released) a moment before the kernel
    # closes its files and drops the lock; wait for both, not the first only.
    lock = run_dir / LOCK
    deadline = time.time() + 150  # workers get up to 30 s to stop after SIGTERM; a loaded machine is slow
    while (_workers(config) or _holders(lock)) and time.time() < deadline:
        time.sleep(0.2)
    assert _workers(config) == [] and _holders(lock) == []
    for _ in range(300):  # the last descriptor's release runs just after /proc stops listing it
        try:
            with claim(run_dir):  # nobody holds the run directory any more
                break
        except UserError:
            time.sleep(0.1)
    else:
        pytest.fail(f"{run_dir} is still claimed though no process holds {LOCK}")
