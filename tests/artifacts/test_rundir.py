"""One writer per run directory (the kernel drops the lock however its holder dies), the
parent-death signal, and reading someone else's run directory without running its code."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from tokalign.artifacts.rundir import claim, load_run_config, record_holder
from tokalign.errors import UserError

HOLD = textwrap.dedent("""
    import sys, time
    from tokalign.artifacts.rundir import claim
    with claim(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def _holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_who_holds_it_and_a_killed_holder_frees_it(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=rf"is in use by pid {proc.pid} on .* \(since"), claim(tmp_path):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with claim(tmp_path):  # the kernel released the lock of the killed holder: never stale
        pass


def test_die_with_parent_ends_a_child_when_its_parent_is_killed(tmp_path):
    marker = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import subprocess, sys, time
        from tokalign.artifacts.rundir import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent)
        open({str(marker)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """),
        ]
    )
    while not marker.exists() or not marker.read_text():
        time.sleep(0.05)
    child = int(marker.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_run_directory_never_turns_on_remote_code(tmp_path, capsys):
    (tmp_path / "resolved.yaml").write_text(
        OmegaConf.to_yaml({"model": {"trust_remote_code": True}, "method": {"name": "dpo"}})
    )
    assert load_run_config(tmp_path).model.trust_remote_code is False
    assert "its model code runs here only with trust_remote_code=true" in capsys.readouterr().err
    assert load_run_config(tmp_path, trust_remote_code=True).model.trust_remote_code is True


def test_a_lock_kept_by_the_workers_of_an_ended_launcher_says_so(tmp_path):
    gone = subprocess.Popen(["true"])  # a pid that existed and is gone
    gone.wait()
    with claim(tmp_path) as fd:
        record_holder(fd, gone.pid)
        ended = rf"in use by pid {gone.pid} .*, which has ended; its workers are still stopping"
        with pytest.raises(UserError, match=ended), claim(tmp_path):
            pass
