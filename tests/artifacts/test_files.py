"""Atomic writes leave a file or directory whole or absent; a full disk is named as such."""

from __future__ import annotations

import pytest

from tokalign.artifacts.files import atomic_dir, atomic_text, storage_errors
from tokalign.errors import StorageError


def test_a_failed_write_leaves_nothing_and_an_existing_cache_entry_wins(tmp_path):
    def broken(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_dir(tmp_path / "model", broken)
    assert list(tmp_path.iterdir()) == []
    atomic_dir(tmp_path / "cache", lambda tmp: (tmp / "a").write_text("first"), replace=False)
    atomic_dir(tmp_path / "cache", lambda tmp: (tmp / "a").write_text("second"), replace=False)
    assert (tmp_path / "cache" / "a").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    atomic_text(tmp_path / "summary.json", "{}")
    assert (tmp_path / "summary.json").read_text() == "{}"
    atomic_text(tmp_path / "key", "first", replace=False)
    atomic_text(tmp_path / "key", "second", replace=False)
    assert (tmp_path / "key").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "key", "summary.json"]


def test_a_full_disk_is_named(tmp_path):
    import torch

    with pytest.raises(StorageError, match="cannot write /dev/full: no space left on the device"):
        with storage_errors("/dev/full"), open("/dev/full", "w") as f:
            f.write("x" * 100_000)
    with pytest.raises(StorageError, match="no space left"):
        with storage_errors("/dev/full"):
            torch.save(torch.zeros(1000), "/dev/full")  # torch's zip writer: "unexpected pos"


def test_run_files_are_strict_json():
    """No NaN or Infinity tokens, which strict readers refuse: a non-finite or missing value is null."""
    import json

    import torch

    from tokalign.artifacts.files import strict_json

    text = strict_json(
        {"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.tensor(float("-inf")), "d": None, "e": 2}
    )
    assert json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in {text}")) == {
        "a": None,
        "b": [None, 1.5],
        "c": None,
        "d": None,
        "e": 2,
    }
