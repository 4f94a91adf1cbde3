"""`tokalign train -m hydra/launcher=slurm ...` against a real one-node SLURM (see conftest.py).

Every job runs with the launcher's default resources: the node is the CI machine (2 CPUs).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from tokalign.artifacts.checkpoint import complete_checkpoints, step_of
from tokalign.artifacts.tracking import read_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ("logger=none", "trainer.per_device_batch_size=2", "eval.at_end=false")


def sweep(slurm, sweep_dir: Path, *overrides: str, **kw):
    return slurm.tokalign("train", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", *overrides, **kw)


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The points' run directories (not the sweep's own table/ or .submitit/)."""
    return sorted(d for d in sweep_dir.iterdir() if (d / "resolved.yaml").exists())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def job_log(slurm, sweep_dir: Path, job: str) -> str:
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit" / job).glob("*_log.*")))


def wait_for(what: str, predicate, timeout: float = 120, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def last_step(run_dir: Path) -> int:
    return max((r.get("step", 0) for r in read_metrics(run_dir)), default=0)


def test_ppo_sweep(slurm, tmp_path, tiny_model):
    out = tmp_path / "sweep"
    r = sweep(
        slurm,
        out,
        "method=ppo",
        "method.kl_coef=0.02,0.1",
        "trainer.max_steps=2",
        "method.max_new_tokens=12",
        "logger=none",
        "trainer.per_device_batch_size=4",
        "eval.at_end=false",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = run_dirs(out)
    assert [d.name.split(",")[0] for d in dirs] == ["method.kl_coef=0.02", "method.kl_coef=0.1"]
    assert all(summary(d)["train/steps"] == 2 and (d / "critic").is_dir() for d in dirs)


def test_two_process_ddp_job(slurm, tmp_path, tiny_model):
    out = tmp_path / "sweep"
    r = sweep(slurm, out, "launcher=ddp", "launcher.num_gpus=2", "method=dpo", "trainer.max_steps=3", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    (run_dir,) = run_dirs(out)
    assert summary(run_dir)["train/steps"] == 3
    (job,) = slurm.jobs(out)
    acct = slurm.ended(job, "AllocCPUS", "ReqTRES")
    assert acct["State"] == "COMPLETED" and acct["AllocCPUS"] == "2" and "gpu" not in acct["ReqTRES"], acct
    assert "--num_processes=2" in job_log(slurm, out, job)


def test_a_job_that_can_never_start_fails_the_sweep_in_one_line(slurm, tmp_path, tiny_model):
    started = time.time()
    r = sweep(slurm, tmp_path / "cpus", "hydra.launcher.cpus_per_task=64", "method=dpo", "trainer.max_steps=2", *TINY)
    took = time.time() - started
    assert r.returncode != 0 and took < 120, (took, r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("tokalign: SLURM job") and "can never start (PartitionConfig)" in line, line
    assert "64 CPUs" in line and "at most 2 CPUs" in line, line
    ours = set(slurm.jobs(tmp_path / "cpus"))
    assert ours and not [
        line for line in slurm.queue().splitlines() if line.split()[0] in ours
    ]  # cancelled, not pending
    # memory no node has: sbatch refuses at submission
    r = sweep(slurm, tmp_path / "mem", "hydra.launcher.mem_gb=4096", "method=dpo", "trainer.max_steps=2", *TINY)
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and line.startswith("tokalign: sbatch refused") and "4096 GB" in line, line
    assert "Memory specification can not be satisfied" in line, line


def test_dpo_sweep_from_submit_to_table_with_a_cancelled_point_resubmitted(slurm, tmp_path, tiny_model):
    """docs/scale_out.md, "A sweep on SLURM, from submit to table": a 2-point DPO sweep with the
    default resources; scancel stops one point promptly; resubmitting continues it; the table."""
    out = tmp_path / "sweep"
    args = ("method=dpo", "seed=0,1", "trainer.max_steps=100", "trainer.save_steps=20", *TINY)
    proc = sweep(slurm, out, *args, background=True)
    # run directories are named by the point's overrides, not by job number
    lost = out / "method=dpo,seed=1,trainer.max_steps=100,trainer.per_device_batch_size=2,trainer.save_steps=20"
    kept = out / lost.name.replace("seed=1", "seed=0")
    wait_for("a sealed checkpoint of seed=1", lambda: complete_checkpoints(lost / "checkpoints"), proc=proc)
    job = next(j for j in slurm.jobs(out) if j.endswith("_1"))
    cancelled_at = time.time()
    slurm.run("scancel", job)
    proc.wait(timeout=240)
    err = proc.stderr.read()
    assert proc.returncode == 1, err[-3000:]
    # the cancelled job stopped at a step boundary well before SLURM's SIGKILL (KillWait 30 s)
    acct = slurm.ended(job, "End")
    ended = datetime.fromisoformat(acct["End"]).timestamp()
    assert acct["State"].startswith("CANCELLED") and ended - cancelled_at < 20, (acct, cancelled_at)
    assert f"tokalign: point {lost.name} failed: Stopped: stopped by SIGTERM at step" in err, err[-3000:]
    assert "1 of 2 points failed" in err.strip().splitlines()[-1]
    assert not (lost / "summary.json").exists() and not (lost / "model").exists()
    sealed = complete_checkpoints(lost / "checkpoints")
    assert sealed and step_of(sealed[-1]) < 100
    assert summary(kept)["train/steps"] == 100 and [d.name for d in run_dirs(out)] == [kept.name, lost.name]
    acct = slurm.ended(next(j for j in slurm.jobs(out) if j.endswith("_0")), "AllocCPUS", "ReqMem", "ReqTRES")
    # one worker: one CPU, 8 GB (not the whole node), no GPU on a node without GPUs
    assert acct["State"] == "COMPLETED" and acct["AllocCPUS"] == "1" and acct["ReqMem"] == "8G", acct
    assert "gpu" not in acct["ReqTRES"]
    kept_mtime = (kept / "summary.json").stat().st_mtime

    # the same command with resume=auto: the finished point is left alone, the lost one continues
    r = sweep(slurm, out, *args, "resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{kept.name} finished already, left as it is" in r.stdout + r.stderr
    assert (kept / "summary.json").stat().st_mtime == kept_mtime
    (again,) = [j for j in slurm.jobs(out) if j.split("_")[0] != job.split("_")[0]]  # seed=1 alone
    assert f"tokalign: resuming from {sealed[-1]} (step {step_of(sealed[-1])})" in job_log(slurm, out, again)
    assert summary(lost)["train/steps"] == 100

    table = slurm.tokalign("table", f"runs={out}")
    assert table.returncode == 0, table.stderr[-2000:]
    assert re.search(r"\|\s*2\s*\|", table.stdout) or "n=2" in table.stdout, table.stdout


def test_usr2_checkpoints_requeues_and_resumes(slurm, tmp_path, tiny_model):
    out = tmp_path / "sweep"
    proc = sweep(slurm, out, "method=dpo", "trainer.max_steps=300", "trainer.save_steps=250", *TINY, background=True)
    run_dir = wait_for("the run dir", lambda: next(iter(run_dirs(out)), None) if out.is_dir() else None, proc=proc)
    wait_for("training steps", lambda: last_step(run_dir) >= 20, proc=proc)
    (job,) = slurm.jobs(out)
    slurm.run("scancel", "--signal=USR2", job)
    proc.wait(timeout=240)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    log = job_log(slurm, out, job)
    saved = re.search(r"tokalign: preempted: saved checkpoint-(\d+), handing over for requeue", log)
    assert saved, log[-3000:]
    step = int(saved.group(1))
    assert 20 <= step < 250  # checkpointed when signalled, not at the next scheduled save
    assert f"tokalign: resuming from {run_dir / 'checkpoints' / f'checkpoint-{step}'} (step {step})" in log
    assert "Requeued job" in log  # submitit's requeue, after our checkpoint
    assert slurm.ended(job)["State"] == "COMPLETED"
    states = slurm.run("sacct", "-n", "-P", "-X", "-D", "-j", job, "-o", "State").split()
    assert states == ["REQUEUED", "COMPLETED"], states  # one job, two attempts
    assert summary(run_dir)["train/steps"] == 300
