"""A real one-node SLURM for the tests marked `slurm`: scripts/slurm/start.sh brings it up once
per session (installing it when missing), scripts/slurm/stop.sh stops its daemons at the end.

Without SLURM (no sinfo/slurmctld) or without root the tests skip and say why; with
TOKALIGN_REQUIRE_SLURM=1 (CI: .ci/run) they fail instead, so a CI machine cannot pass silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "slurm"
REQUIRED = os.environ.get("TOKALIGN_REQUIRE_SLURM") == "1"


def _unavailable() -> str | None:
    if not (shutil.which("sinfo") and shutil.which("slurmctld")):
        return (
            "no SLURM on this machine (sinfo/slurmctld not found); scripts/slurm/start.sh installs one (root, Debian)"
        )
    if os.geteuid() != 0:
        return "the slurm tests run their own one-node SLURM, which needs root (scripts/slurm/start.sh)"
    return None


@dataclass
class Cluster:
    state: Path
    conf: Path
    setup_s: float
    prefix: tuple[str, ...] = ()  # how a client reaches the controller (the two-node one: its namespace)

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "SLURM_CONF": str(self.conf), "PYTHONPATH": path}

    def tokalign(self, *args: str, background: bool = False, timeout: float = 240):
        """`tokalign <args>` as a user types it; the finished process (or the running one)."""
        cmd = [*self.prefix, str(Path(sys.executable).parent / "tokalign"), *args]
        if background:
            return subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def run(self, *cmd: str) -> str:
        return subprocess.run(
            [*self.prefix, *cmd], env=self.env(), capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def jobs(self, sweep_dir: Path) -> list[str]:
        """Job ids of a sweep (`123_0`, ...; `123` when one job), from submitit's folders, oldest first."""
        folder = sweep_dir / ".submitit"
        ids = [p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)] if folder.is_dir() else []
        return sorted(ids, key=lambda j: tuple(int(x) for x in j.split("_")))

    def ended(self, job: str, *fields: str, timeout: float = 60) -> dict[str, str]:
        """sacct's fields once the job has left RUNNING/PENDING (its result can come first)."""
        end = time.time() + timeout
        while True:
            acct = self.sacct(job, "State", *fields)
            if acct and acct["State"] not in ("RUNNING", "PENDING", "REQUEUED", "COMPLETING") or time.time() > end:
                return acct
            time.sleep(0.5)

    def sacct(self, job: str, *fields: str) -> dict[str, str]:
        out = self.run("sacct", "-n", "-P", "-X", "-j", job, "-o", ",".join(fields)).strip().splitlines()
        return dict(zip(fields, out[-1].split("|"))) if out else {}

    def queue(self) -> str:
        return self.run("squeue", "-h", "-o", "%i %T %r")


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    reason = _unavailable()
    if reason and not REQUIRED:
        pytest.skip(reason)
    if reason and os.geteuid() != 0:
        pytest.fail(f"TOKALIGN_REQUIRE_SLURM=1 but {reason}")
    # One state dir per machine (the script's default): its database and configs are reused.
    state = Path(os.environ.get("TOKALIGN_SLURM_DIR") or "/tmp/tokalign-slurm")
    started = time.time()
    up = subprocess.run([str(SCRIPTS / "start.sh"), str(state)], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(state)], capture_output=True)
        pytest.fail(f"scripts/slurm/start.sh failed:\n{up.stderr[-3000:]}")
    cluster = Cluster(state=state, conf=state / "etc" / "slurm.conf", setup_s=time.time() - started)
    print(f"\nslurm: up in {cluster.setup_s:.1f}s ({up.stderr.strip().splitlines()[-1]})")
    try:
        yield cluster
    finally:
        subprocess.run([str(SCRIPTS / "stop.sh"), str(state)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Cluster:
    """Two nodes, `tka` and `tkb`, each slurmd in a network and UTS namespace of its own
    (scripts/slurm/two_nodes.sh); clients run in the controller's namespace. No accounting (sacct).
    It runs beside the one-node cluster (its own munged, no database)."""
    reason = _unavailable()
    if reason and not REQUIRED:
        pytest.skip(reason)
    if not shutil.which("slurmd"):
        subprocess.run([str(SCRIPTS / "start.sh"), "--install-only"], capture_output=True, text=True, timeout=900)
    missing = [tool for tool in ("ip", "nsenter", "unshare") if not shutil.which(tool)]
    if missing:
        (pytest.fail if REQUIRED else pytest.skip)(
            f"the two-node SLURM needs {', '.join(missing)} (iproute2, util-linux)"
        )
    state = Path(os.environ.get("TOKALIGN_SLURM2_DIR") or "/tmp/tokalign-slurm2")
    script = str(SCRIPTS / "two_nodes.sh")
    started = time.time()
    up = subprocess.run([script, "start", str(state)], capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        subprocess.run([script, "stop", str(state)], capture_output=True)
        (pytest.fail if REQUIRED else pytest.skip)(f"scripts/slurm/two_nodes.sh failed:\n{up.stderr[-3000:]}")
    cluster = Cluster(
        state=state,
        conf=state / "etc" / "slurm.conf",
        setup_s=time.time() - started,
        prefix=("nsenter", "--net=/run/netns/tokalign-a"),
    )
    print(f"\nslurm2: up in {cluster.setup_s:.1f}s ({up.stderr.strip().splitlines()[-1]})")
    try:
        yield cluster
    finally:
        subprocess.run([script, "stop", str(state)], capture_output=True, timeout=120)
