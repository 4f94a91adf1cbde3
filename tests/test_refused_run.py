"""A refused run touches nothing: a second `train` into a used or busy run dir leaves every file
of the first run (Hydra's .hydra/ included) as it was; a name too long for the file system is one
line; and a resume names every checkpoint it skips or deletes, with why."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tests.conftest import FINISHED, copy_run, run_cli
from tests.test_bad_input import _probe
from tokalign.artifacts.rundir import claim


def _snapshot(root: Path) -> dict:
    """Every entry under root: kind, size, modification time and content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def test_a_second_train_into_a_used_run_dir_writes_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    before = _snapshot(run)
    line = _probe(capsys, "train", f"hydra.run.dir={run}", *FINISHED, "method=dpo")
    assert "holds an earlier run" in line
    assert _snapshot(run) == before


def test_a_train_into_a_busy_run_dir_writes_nothing(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    with claim(run):
        before = _snapshot(run)
        line = _probe(capsys, "train", f"hydra.run.dir={run}", *FINISHED, "resume=auto")
        assert f"run dir {run} is in use by pid {os.getpid()}" in line
        assert _snapshot(run) == before


def test_a_run_dir_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    line = _probe(capsys, "train", f"hydra.run.dir={tmp_path / ('x' * 300)}", "logger=none")
    assert "as a run directory: File name too long" in line and "(300" not in line


def test_resume_names_every_checkpoint_it_deletes(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    for name in ("summary.json", "train.json", "eval.json"):
        (run / name).unlink()
    half = run / "checkpoints" / "checkpoint-7"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"cut short")
    (run / "checkpoints" / ".checkpoint-9-tmp").mkdir()
    shutil.rmtree(run / "model")
    run_cli("train", f"hydra.run.dir={run}", *FINISHED, "resume=auto")
    out = capsys.readouterr().out
    assert f"deleted {half}: not sealed" in out and ".checkpoint-9-tmp: not sealed" in out
    assert not half.exists() and (run / "summary.json").exists()
