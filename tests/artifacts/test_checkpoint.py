"""Only sealed checkpoints whose files are all still there are resumed from; the one resumed from matches its hashes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tokalign.artifacts.checkpoint import (
    SEAL,
    complete_checkpoints,
    discard_incomplete,
    is_complete,
    latest_checkpoint,
    save_checkpoint_dir,
    seal,
    verify,
)
from tokalign.artifacts.files import atomic_dir


def _ckpt(root, step, files=("model.safetensors", "optimizer.pt", "trainer_state.json"), sealed=True):
    path = root / f"checkpoint-{step}"
    (path / "global_step").mkdir(parents=True)
    for name in files:
        (path / name).write_text(name * 10)
    (path / "global_step" / "rank1_optim.pt").write_text("shard")
    if sealed:
        seal(path)
    return path


def test_latest_skips_unsealed_truncated_and_half_deleted(tmp_path):
    good = _ckpt(tmp_path, 2)
    _ckpt(tmp_path, 4, sealed=False)  # killed before every rank finished
    cut = _ckpt(tmp_path, 6)
    (cut / "optimizer.pt").write_text("x")  # rewritten shorter after sealing
    gone = _ckpt(tmp_path, 8)
    (gone / "global_step" / "rank1_optim.pt").unlink()  # rotation killed half-way
    _ckpt(tmp_path, 10)
    (tmp_path / "checkpoint-10" / SEAL).write_text("{not json")
    assert complete_checkpoints(tmp_path) == [good]
    assert latest_checkpoint(tmp_path) == good
    assert not is_complete(tmp_path / "checkpoint-4")


def test_discard_incomplete_keeps_only_sealed_and_clears_temporaries(tmp_path):
    good = _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 12, sealed=False)
    (tmp_path / ".checkpoint-14-abc123").mkdir()  # a single-process save killed mid-write
    assert [p.name for p in discard_incomplete(tmp_path)] == ["checkpoint-12", ".checkpoint-14-abc123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]


def test_verify_catches_same_size_tampering_and_planted_files(tmp_path):
    good = _ckpt(tmp_path, 2)
    assert verify(good) is None
    (good / "optimizer.pt").write_text("X" * len("optimizer.pt" * 10))  # same size, other bytes
    assert is_complete(good) and "optimizer.pt does not match its sealed hash" in verify(good)
    other = _ckpt(tmp_path, 4)
    (other / "rng_state.pth").write_text("planted")
    assert "files added or missing" in verify(other)


def test_steps_sort_numerically_and_missing_root_is_empty(tmp_path):
    for step in (9, 10, 100):
        _ckpt(tmp_path, step)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert latest_checkpoint(tmp_path / "absent") is None


def test_atomic_checkpoint_saves_are_sealed(tmp_path):
    dest = save_checkpoint_dir(tmp_path / "checkpoint-3", lambda d: (d / "state.pt").write_text("s"))
    assert is_complete(dest) and verify(dest) is None and latest_checkpoint(tmp_path) == dest
    model = atomic_dir(tmp_path / "model", lambda d: (d / "w").write_text("w"))
    assert not (model / SEAL).exists()


def test_a_checkpoint_resealed_without_this_accounts_key_is_refused(tmp_path, monkeypatch):
    ckpt = _ckpt(tmp_path / "run", 2)
    (ckpt / "optimizer.pt").write_text("payload that unpickles to code")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    seal(ckpt)  # a writer with another key rewrites the seal to match
    monkeypatch.undo()
    assert is_complete(ckpt) and "not made with this account's key" in verify(ckpt)


def test_first_checkpoints_sealed_at_once_share_one_whole_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no key yet: every sealer may create it
    ready = threading.Barrier(8)

    def sealed(i):
        path = tmp_path / f"run{i}" / "checkpoint-1"
        path.mkdir(parents=True)
        (path / "w").write_text("w")
        ready.wait()
        seal(path)
        return path

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(sealed, range(8)))
    assert [verify(p) for p in paths] == [None] * 8
    keys = list((tmp_path / "config" / "tokalign").iterdir())
    assert [k.name for k in keys] == ["seal.key"] and len(keys[0].read_text()) == 64
