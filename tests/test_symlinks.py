"""Writes never follow a link out: every file tokalign writes into a run dir, a table dir or the
cache replaces a planted link or refuses it in one line, never writes through it; and a run dir
that is (or resolves to) a system directory is refused before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import FINISHED, copy_run, run_cli
from tests.test_bad_input import _probe
from tokalign.artifacts.files import append_line, atomic_bytes, atomic_text, links_out
from tokalign.errors import StorageError


def test_an_atomic_write_replaces_a_planted_link_and_leaves_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for write in (lambda p: atomic_text(p, "new"), lambda p: atomic_bytes(p, b"new")):
        (tmp_path / "file").unlink(missing_ok=True)
        (tmp_path / "file").symlink_to(victim)
        write(tmp_path / "file")
        assert not (tmp_path / "file").is_symlink() and (tmp_path / "file").read_text() == "new"
        assert victim.read_text() == "keep me"


def test_an_append_refuses_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"):
        append_line(tmp_path / "metrics.jsonl", "{}\n")
    assert victim.read_text() == "keep me"


def test_links_out_finds_only_links_that_leave(tmp_path):
    (tmp_path / "run" / "wandb" / "offline-run-1").mkdir(parents=True)
    (tmp_path / "run" / "wandb" / "latest-run").symlink_to(tmp_path / "run" / "wandb" / "offline-run-1")
    assert links_out(tmp_path / "run") is None  # W&B's own link stays inside
    (tmp_path / "run" / "model").symlink_to("/etc")
    assert links_out(tmp_path / "run") == tmp_path / "run" / "model"


@pytest.mark.parametrize("target", ["/", "/etc", "/usr/lib"])
def test_a_run_dir_that_resolves_to_a_system_directory_is_refused(tmp_path, capsys, target):
    link = tmp_path / "innocent"
    link.symlink_to(target)
    line = _probe(capsys, "train", f"hydra.run.dir={link}", "logger=none")
    assert "a system directory" in line and f"resolves to {target}" in line
    assert not Path(target, "resolved.yaml").exists() and not Path(target, ".hydra").exists()
    assert "a system directory" in _probe(capsys, "train", "hydra.run.dir=/etc/tokalign-run", "logger=none")
    assert not Path("/etc/tokalign-run").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", ".tokalign.lock", ".hydra", "checkpoints", "wandb"])
def test_train_refuses_a_run_dir_holding_a_link_out(tmp_path, capsys, name):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.mkdir() if name in (".hydra", "checkpoints", "wandb") else victim.write_text("keep me")
    (run / name).symlink_to(victim)
    line = _probe(capsys, "train", f"hydra.run.dir={run}", *FINISHED)
    assert f"{run / name} is a symbolic link to {victim}, outside it" in line
    assert (list(victim.iterdir()) == []) if victim.is_dir() else victim.read_text() == "keep me"
    assert sorted(os.listdir(run)) == [name]


def test_table_writes_no_file_through_a_link(finished_run, tmp_path, capsys):
    runs = tmp_path / "sweep"
    copy_run(finished_run, runs / "a")
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").symlink_to(victim)
    run_cli("table", f"runs={runs}", f"out={out}")
    assert victim.read_text() == "keep me" and not (out / "table.md").is_symlink()
    (runs / "table").symlink_to(tmp_path / "elsewhere")
    assert "is a symbolic link" in _probe(capsys, "table", f"runs={runs}")
    assert not (tmp_path / "elsewhere").exists()
