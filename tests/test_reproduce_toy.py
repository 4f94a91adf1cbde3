"""A *_toy experiment row end to end at minimal size: train + eval (pass@k), table, token view."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.html_spans import parse


@pytest.mark.slow
def test_d3s_toy_row_trains_tabulates_and_renders(train, tmp_path, capsys):
    run_dir = train(
        "experiment=d3s_toy",
        "+arm=d3s/full",
        "trainer.max_steps=2",
        "trainer.per_device_batch_size=16",
        "method.num_generations=4",
        "method.max_completion_length=8",
        "method.n_init=2",
        "method.n_final=3",
        "eval.num_samples=4",
        "eval.pass_k=[1,2]",
        "eval.max_new_tokens=8",
    )
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert {"eval/accuracy", "eval/pass@1", "eval/pass@2", "eval/pass@4"} <= set(metrics)
    assert metrics["eval/pass@1"] == pytest.approx(metrics["eval/accuracy"])
    assert metrics["eval/pass@1"] <= metrics["eval/pass@2"] <= metrics["eval/pass@4"]

    run_cli("table", f"runs={run_dir}", f"out={tmp_path / 'table'}")
    md = (tmp_path / "table" / "table.md").read_text()
    assert md.splitlines()[0].startswith("| arm | n | eval/accuracy") and "| d3s/full | 1 |" in md

    run_cli("inspect", f"run_dir={run_dir}", "num_examples=1", "progress=0")
    spans = parse((run_dir / "inspect.html").read_text())
    assert spans and all({"data-a_h", "data-a", "data-h"} <= set(s) for s in spans)
    assert any("unkept" in s["class"] for s in spans)  # K = 0.2 at progress 0 leaves most tokens out
    assert "dropped" in (run_dir / "inspect.html").read_text()  # N = 2 of G = 4
    capsys.readouterr()
