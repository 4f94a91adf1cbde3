"""tokalign.cluster.preemption with real signals sent to a child process running a step loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tokalign.cluster import preemption

SRC = str(Path(__file__).resolve().parents[2] / "src")

# A training loop in miniature: 0.1 s steps; prints what it does at each boundary.
LOOP = """
import signal, sys, time
from tokalign.cluster import preemption

{before}
preemption.install()
print("ready", flush=True)
for step in range(1, 400):
    time.sleep({step_s})                  # a step: the signal must not cut it short
    print(f"step {{step}} done", flush=True)
    request = preemption.poll()
    if request.checkpoint:
        print(f"checkpoint at {{step}}", flush=True)
        preemption.hand_over()
    if request.stop:
        print(f"stopped at {{step}}", flush=True)
        raise SystemExit(3)
{after}
"""


def start(before: str = "", after: str = "", step_s: float = 0.1, end: int | None = None) -> subprocess.Popen:
    code = textwrap.dedent(LOOP).format(before=before, after=after, step_s=step_s)
    if end is not None:
        code = code.replace("range(1, 400)", f"range(1, {end})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def lines(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, list[str]]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.split("\n")


def test_sigterm_stops_at_the_next_step_boundary():
    proc = start()
    time.sleep(0.35)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    rc, out = lines(proc)
    assert rc == 3 and time.time() - sent < 5
    stopped = [line for line in out if line.startswith("stopped at")]
    assert len(stopped) == 1 and not any(line.startswith("checkpoint") for line in out)
    step = int(stopped[0].split()[-1])
    assert f"step {step} done" in out  # the step the signal arrived in ran to its end


def test_sigusr2_checkpoints_then_hands_over_to_the_previous_handler():
    before = """
def previous(signum, frame):
    print("previous handler: requeue", flush=True)
    sys.exit(-1)                  # what submitit's handler does after `scontrol requeue`
signal.signal(signal.SIGUSR2, previous)
"""
    proc = start(before=before)
    time.sleep(0.35)
    proc.send_signal(signal.SIGUSR2)
    rc, out = lines(proc)
    assert rc == 255
    ckpt = [i for i, line in enumerate(out) if line.startswith("checkpoint at")]
    handed = out.index("previous handler: requeue")
    assert len(ckpt) == 1 and ckpt[0] < handed  # checkpoint first, then the scheduler's handler


def test_sigusr2_without_a_previous_handler_exits_for_a_parent_to_requeue():
    proc = start()
    time.sleep(0.25)
    proc.send_signal(signal.SIGUSR2)
    rc, out = lines(proc)
    assert rc == preemption.EXIT_PREEMPTED and any(line.startswith("checkpoint at") for line in out)


def test_a_long_step_is_not_interrupted():
    proc = start(step_s=3.0)
    time.sleep(0.3)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    rc, out = lines(proc)
    assert rc == 3 and "step 1 done" in out and "stopped at 1" in out
    assert time.time() - sent > 1.0  # it waited for the boundary


def test_uninstall_passes_an_unseen_signal_on():
    before = """
import os
def previous(signum, frame):
    print("previous handler got it", flush=True)
    sys.exit(7)
signal.signal(signal.SIGUSR2, previous)
"""
    # The signal arrives after the last step boundary: uninstall() hands it to the previous handler.
    after = """
os.kill(os.getpid(), signal.SIGUSR2)
time.sleep(0.2)
preemption.uninstall()
print("not reached", flush=True)
"""
    rc, out = lines(start(before=before, after=after, step_s=0.01, end=2))
    assert rc == 7 and "previous handler got it" in out and "not reached" not in out
    # nothing pending: uninstall() only puts the handlers back
    rc, out = lines(start(before=before, after=after.replace("os.kill", "# os.kill"), step_s=0.01, end=2))
    assert rc == 0 and "not reached" in out


def test_poll_consumes_and_agrees_through_sync():
    preemption.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.05)
        assert preemption.requests().checkpoint
        assert preemption.poll(sync=lambda flags: flags) == preemption.Request(checkpoint=True)
        assert not preemption.requests()
        # another rank was signalled: the max over ranks says stop here too
        assert preemption.poll(sync=lambda flags: [1, 0]) == preemption.Request(stop=True)
    finally:
        preemption.uninstall()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


WORKER = """
import os, signal, sys, time
import torch.distributed as dist
from tokalign.cluster import preemption

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{sys.argv[2]}", rank=rank, world_size=2)
preemption.install()
if rank == 0:
    print("ready", flush=True)
for step in range(1, 400):
    time.sleep(0.05 + 0.05 * rank)       # ranks reach their boundaries at different times
    request = preemption.poll()
    if request.checkpoint:
        print(f"rank {rank} checkpoint at {step}", flush=True)
        dist.destroy_process_group()
        raise SystemExit(0)
"""


@pytest.mark.distributed
def test_ranks_agree_on_the_step_when_only_one_is_signalled(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    store = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(r), str(store)], stdout=subprocess.PIPE, text=True, env=env)
        for r in range(2)
    ]
    assert procs[0].stdout.readline().strip() == "ready"
    time.sleep(0.5)
    procs[1].send_signal(signal.SIGUSR2)  # only rank 1 hears it
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    steps = {line.split()[-1] for line in outs}
    assert len(steps) == 1, outs
