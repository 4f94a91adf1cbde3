"""Two nodes on one machine: two launchers (`launcher.node_rank` 0 and 1) over 127.0.0.1, one process
each, one shared run directory, as two hosts of a shared file system would run one job.

Their losses are those of one node with two processes and the same global batch; killing one node's
launcher ends the job on both, and `resume=auto` on both continues from the last sealed checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli
from tests.runtime.test_launch_distributed import _holders, _workers
from tokalign.artifacts.checkpoint import latest_checkpoint
from tokalign.artifacts.rundir import LOCK
from tokalign.artifacts.tracking import read_metrics
from tokalign.runtime.nodes import node_lock

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

DPO = [
    "method=dpo",
    "trainer.max_steps=6",
    "trainer.save_steps=2",
    "trainer.logging_steps=1",
    "trainer.per_device_batch_size=2",
    "eval.at_end=false",
    "logger=none",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node(subprocess.Popen):
    """A node's launcher; its output goes to a file (a pipe nobody reads while waiting on the other
    node would stall it)."""

    def __init__(self, cmd, log):
        self.log = log
        with open(log, "w") as out:
            super().__init__(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)

    def output(self, timeout: float = 400) -> str:
        self.wait(timeout=timeout)
        return self.log.read_text()


def _node(run_dir, rank: int, port: int, *overrides: str) -> Node:
    args = [
        f"hydra.run.dir={run_dir}",
        *DPO,
        "launcher.num_gpus=1",
        "launcher.num_nodes=2",
        f"launcher.node_rank={rank}",
        "launcher.master_addr=127.0.0.1",
        f"launcher.master_port={port}",
        *overrides,
    ]
    cmd = [sys.executable, "-m", "tokalign.cli", "train", *args]
    logs = run_dir.parent / "logs"
    logs.mkdir(exist_ok=True)
    return Node(cmd, logs / f"node{rank}-{len(list(logs.iterdir()))}.log")


def _both(run_dir, *overrides: str, port: int | None = None) -> list[str]:
    """Node 0 and node 1 of one job, to the end; their outputs."""
    port = port or _port()
    procs = [_node(run_dir, rank, port, *overrides) for rank in (0, 1)]
    try:
        outs = [p.output() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {rank} ended with {p.returncode}:\n{out[-3000:]}"
    return outs


def _losses(run_dir):
    return [(m["step"], m["train/loss"]) for m in read_metrics(run_dir) if "train/loss" in m]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, cache_dir):
    """One node, two processes, the same global batch (2 x 2)."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    run_cli("train", f"hydra.run.dir={run_dir}", *DPO, "launcher=ddp", "launcher.num_gpus=2")
    return _losses(run_dir)


def _same_losses(run_dir, one_node):
    losses = _losses(run_dir)
    assert [s for s, _ in losses] == [s for s, _ in one_node] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in losses] == pytest.approx([v for _, v in one_node], rel=1e-5, abs=1e-4)


@pytest.mark.parametrize(
    "launcher",
    [
        ["launcher=deepspeed", "launcher.zero_stage=2"],
        ["launcher=deepspeed", "launcher.zero_stage=3"],
        ["launcher=deepspeed", "launcher.zero_stage=2", "launcher.runner=deepspeed"],
    ],
    ids=["zero2-accelerate", "zero3-accelerate", "zero2-deepspeed-runner"],
)
def test_two_nodes_train_as_one_node_of_two_processes(tmp_path, one_node, launcher):
    run_dir = tmp_path / "run"
    outs = _both(run_dir, *launcher)
    _same_losses(run_dir, one_node)
    assert "node 1 joins the job of pid" in outs[1] and (run_dir / "model" / "model.safetensors").exists()
    assert {p.name for p in (run_dir / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "node_rank: 0" in (run_dir / "resolved.yaml").read_text()  # node 0's, not rewritten by node 1


def _live(proc, run_dir) -> bool:
    return proc.poll() is None or bool(_workers(str(run_dir / "resolved.yaml")))


def test_a_killed_node_ends_the_job_on_both_and_both_resume(tmp_path, one_node):
    run_dir, port = tmp_path / "run", _port()
    node0 = _node(run_dir, 0, port, "launcher=ddp", "launcher.runner=torchrun")
    # another run is refused the directory node 0 holds, as a second writer always is
    deadline = time.time() + 120
    while not (run_dir / "resolved.yaml").exists() and time.time() < deadline:
        time.sleep(0.1)
    other = _node(run_dir, 1, _port(), "launcher=ddp", "launcher.runner=torchrun")
    out = other.output(timeout=120)
    assert other.returncode == 2 and f"tokalign: error: run dir {run_dir} is in use by pid {node0.pid}" in out
    node1 = _node(run_dir, 1, port, "launcher=ddp", "launcher.runner=torchrun")
    try:
        while latest_checkpoint(run_dir / "checkpoints") is None and node0.poll() is None:
            time.sleep(0.02)
        node1.send_signal(signal.SIGKILL)  # node 1's launcher alone, as a lost host would
        node1.wait()
        out0 = node0.output(timeout=180)
    finally:
        for proc in (node0, node1):
            if proc.poll() is None:
                proc.kill()
    assert node0.returncode not in (0, None) and not (run_dir / "summary.json").exists(), out0[-3000:]
    deadline = time.time() + 150  # workers get up to 30 s to stop after SIGTERM
    while (_live(node0, run_dir) or _holders(run_dir / LOCK) or _holders(run_dir / node_lock(1))) and (
        time.time() < deadline
    ):
        time.sleep(0.2)
    assert not _workers(str(run_dir / "resolved.yaml")), "a worker outlived its node"
    assert not _holders(run_dir / LOCK) and not _holders(run_dir / node_lock(1))
    killed_at = max(s for s, _ in _losses(run_dir))

    outs = _both(run_dir, "launcher=ddp", "launcher.runner=torchrun", "resume=auto")

    assert "tokalign: resuming from" in outs[0] and killed_at < 6
    _same_losses(run_dir, one_node)  # rewound to the checkpoint: no step twice
    assert os.path.exists(run_dir / "summary.json")
