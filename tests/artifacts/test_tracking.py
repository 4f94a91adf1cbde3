"""Reading a run's metrics while its writer is still at work, or after it was killed mid-line."""

from __future__ import annotations

from tokalign.artifacts.tracking import read_metrics


def test_a_line_cut_short_is_skipped(tmp_path):
    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.5}\n\n{"step": 2, "train/lo')
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 0.5}]
