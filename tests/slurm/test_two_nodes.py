"""A `launcher.num_nodes=2` job through `hydra/launcher=slurm` on a real two-node SLURM (conftest.py:
`slurm_two_nodes`, two slurmd in network namespaces of their own): one process on each node, one
run directory, node 0's results; scancel stops both nodes at one step boundary and resubmitting
continues from the last sealed checkpoint."""

from __future__ import annotations

import json
import re

import pytest

from tests.slurm.test_slurm import TINY, last_step, run_dirs, summary, sweep, wait_for
from tokalign.artifacts.checkpoint import complete_checkpoints, step_of
from tokalign.artifacts.tracking import read_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.parametrize(
    "launcher", [["launcher=ddp"], ["launcher=deepspeed", "launcher.zero_stage=2"]], ids=["ddp", "zero2"]
)
def test_a_two_node_job_runs_one_process_on_each_node(slurm_two_nodes, tmp_path, tiny_model, launcher):
    out = tmp_path / "sweep"
    r = sweep(
        slurm_two_nodes,
        out,
        *launcher,
        "launcher.num_nodes=2",
        "launcher.num_gpus=1",
        "method=dpo",
        "trainer.max_steps=3",
        "trainer.logging_steps=1",
        *TINY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    assert summary(run_dir)["train/steps"] == 3 and [m["step"] for m in read_metrics(run_dir)][:3] == [1, 2, 3]
    node0, node1 = (json.loads((run_dir / lock).read_text()) for lock in (".tokalign.lock", ".tokalign.node1.lock"))
    assert (node0["host"], node1["host"]) == ("tka", "tkb")  # each node's launcher on its own host
    assert node0["job"] == node1["job"] and node0["job"].startswith("tka:29500 x2 slurm job ")
    assert node0["attempt"] == node1["attempt"] and node0["exit"] == node1["exit"] == 0


def test_scancel_stops_both_nodes_at_a_step_and_resubmitting_continues(slurm_two_nodes, tmp_path, tiny_model):
    out = tmp_path / "sweep"
    args = (
        "launcher=ddp",
        "launcher.num_nodes=2",
        "launcher.num_gpus=1",
        "method=dpo",
        "trainer.max_steps=200",
        "trainer.save_steps=4",
        "trainer.logging_steps=1",
        *TINY,
    )
    proc = sweep(slurm_two_nodes, out, *args, background=True)
    run_dir = wait_for("the run dir", lambda: next(iter(run_dirs(out)), None) if out.is_dir() else None, proc=proc)
    wait_for("a sealed checkpoint", lambda: complete_checkpoints(run_dir / "checkpoints"), proc=proc)
    (job,) = slurm_two_nodes.jobs(out)
    slurm_two_nodes.run("scancel", job)
    proc.wait(timeout=240)
    err = proc.stderr.read()
    assert proc.returncode == 1 and "failed: Stopped: stopped by SIGTERM" in err, err[-3000:]
    node0, node1 = (json.loads((run_dir / lock).read_text()) for lock in (".tokalign.lock", ".tokalign.node1.lock"))
    assert node0["stopped"] and node1["stopped"]  # both stopped by the signal, neither taken down as lost
    sealed = complete_checkpoints(run_dir / "checkpoints")
    assert sealed and step_of(sealed[-1]) < 200 and not (run_dir / "summary.json").exists()

    r = sweep(slurm_two_nodes, out, *args, "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    final = summary(run_dir)
    assert final["train/steps"] == 200 and final["train/attempts"] == 2
    steps = [m["step"] for m in read_metrics(run_dir) if "train/loss" in m]
    assert steps == list(range(1, 201))  # rewound to the checkpoint: no step twice, none missing


def test_usr2_checkpoints_both_nodes_requeues_and_resumes(slurm_two_nodes, tmp_path, tiny_model):
    out = tmp_path / "sweep"
    args = ("launcher=ddp", "launcher.num_nodes=2", "launcher.num_gpus=1", "method=dpo", "trainer.max_steps=300")
    proc = sweep(slurm_two_nodes, out, *args, "trainer.save_steps=250", *TINY, background=True)
    run_dir = wait_for("the run dir", lambda: next(iter(run_dirs(out)), None) if out.is_dir() else None, proc=proc)
    wait_for("training steps", lambda: last_step(run_dir) >= 20, proc=proc)
    (job,) = slurm_two_nodes.jobs(out)
    slurm_two_nodes.run("scancel", "--signal=USR2", job)
    proc.wait(timeout=300)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    final = summary(run_dir)
    assert final["train/steps"] == 300 and final["train/attempts"] == 2
    # checkpointed when signalled (not at the scheduled save), then continued from there (rank 0's log)
    log = (run_dir / "tokalign.log").read_text()
    saved = re.search(r"preempted: saved checkpoint-(\d+), handing over for requeue", log)
    assert saved and 20 <= int(saved.group(1)) < 250, log[-3000:]
    step = int(saved.group(1))
    assert f"resuming from {run_dir / 'checkpoints' / f'checkpoint-{step}'} (step {step})" in log
