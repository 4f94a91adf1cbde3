"""`tokalign table` on hand-written run directories: grouping, mean ± std, failures listed, files, mixed evaluations, short curves."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import yaml

from tests.conftest import run_cli
from tokalign.analysis.table import build_table, find_run_dirs, load_run, make_report


def fake_run(
    root: Path,
    name: str,
    method: dict,
    seed: int,
    *,
    arm: str | None = None,
    summary: dict | None = None,
    evals: dict | None = None,
    losses=(1.0, 0.5),
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"seed": seed, "run_name": name, "method": method, "model": {"name": "tiny"}, "dataset": {"name": "toy_pref"}}
    (d / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": 10 * (i + 1), "train/loss": v}) + "\n" for i, v in enumerate(losses))
    )
    if arm:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "hydra.yaml").write_text(
            yaml.safe_dump({"hydra": {"runtime": {"choices": {"arm": arm, "method": method["name"]}}}})
        )
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    if evals is not None:
        (d / "eval.json").write_text(json.dumps(evals))
    return d


def sweep(root: Path) -> Path:
    wins = {("dpo", None): [0.50, 0.60, 0.70], ("tgdpo", 0.5): [0.70, 0.80, 0.90], ("tgdpo", 2.0): [0.40, 0.60]}
    for (name, alpha), values in wins.items():
        method = {"name": name, "beta": 0.1, **({"alpha": alpha} if alpha is not None else {})}
        for seed, w in enumerate(values):
            fake_run(
                root,
                f"{name}{alpha}_s{seed}",
                method,
                seed,
                summary={"eval/win_rate": 0.0, "train/steps": 20},
                evals={"eval/win_rate": w, "eval/gold_reward": 10 * w},
            )
    fake_run(root, "tgdpo2.0_s2", {"name": "tgdpo", "beta": 0.1, "alpha": 2.0}, 2)  # killed: no summary.json
    fake_run(
        root, "tgdpo0.5_s9", {"name": "tgdpo", "beta": 0.1, "alpha": 0.5}, 9, summary={"train/steps": 20}
    )  # no eval
    return root


def test_groups_average_over_seeds_and_list_failures(tmp_path):
    records = [load_run(d) for d in find_run_dirs([sweep(tmp_path)])]
    table = build_table(records, ["method.name", "method.alpha"], ["eval/win_rate", "eval/gold_reward"])
    rows = {row["group"]: row for row in table.rows}
    assert set(rows) == {("dpo", "-"), ("tgdpo", 0.5), ("tgdpo", 2.0)}
    mean, std, n = rows[("tgdpo", 0.5)]["eval/win_rate"]
    assert (round(mean, 6), round(std, 6), n) == (0.8, round(statistics.stdev([0.7, 0.8, 0.9]), 6), 3)  # eval.json wins
    assert rows[("tgdpo", 0.5)]["n"] == 4 and rows[("tgdpo", 0.5)]["seeds"] == [0, 1, 2, 9]
    assert rows[("tgdpo", 2.0)]["eval/gold_reward"][:1] == (5.0,) and rows[("tgdpo", 2.0)]["n"] == 2
    reasons = dict(table.excluded)
    assert reasons[str(tmp_path / "tgdpo2.0_s2")].startswith("incomplete: no summary.json (last logged step 20)")
    assert "without eval/win_rate" in reasons[str(tmp_path / "tgdpo0.5_s9")]
    md = table.markdown()
    assert "| tgdpo | 0.5 | 4 | 0.8 ± 0.1 (n=3) |" in md and "tgdpo2.0_s2" in md


def test_cli_writes_markdown_csv_and_plots(tmp_path, capsys):
    root = sweep(tmp_path / "multirun")
    out = tmp_path / "table"
    run_cli("table", f"runs={root}", "group_by=[method.name,method.alpha]", "metrics=[eval/win_rate]", f"out={out}")
    printed = capsys.readouterr().out
    assert "| dpo | - | 3 | 0.6 ± 0.1 |" in printed
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    dpo = next(r for r in rows if r["method.name"] == "dpo")
    assert abs(float(dpo["eval/win_rate_mean"]) - 0.6) < 1e-9 and dpo["seeds"] == "0 1 2"
    png = out / "curve_train_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curve_train_loss.pdf").read_bytes()[:5] == b"%PDF-"


def test_curves_are_paste_ready(tmp_path):
    """Markers (a one-point run still shows), seeds in the legend, integer steps, a panel per method for a loss."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from tokalign.analysis.table import axis_label, plot_curves

    for seed in (0, 1):
        fake_run(tmp_path / "runs", f"sft{seed}", {"name": "sft", "algorithm": "sft"}, seed, summary={}, losses=(2.0,))
        fake_run(
            tmp_path / "runs",
            f"dpo{seed}",
            {"name": "dpo", "algorithm": "dpo"},
            seed,
            summary={},
            losses=(0.7, 0.6, 0.5),
        )
    records = [load_run(d) for d in find_run_dirs([tmp_path / "runs"])]
    figures = []
    real_savefig = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (figures.append(fig), real_savefig(fig, *a, **k))[1]
    try:
        written = plot_curves(records, ["method.name"], ["train/loss"], tmp_path)
    finally:
        plt.Figure.savefig = real_savefig
    assert sorted(p.suffix for p in written) == [".pdf", ".png"]
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["loss (train) · dpo", "loss (train) · sft"]
    sft = axes[1].get_lines()[0]
    assert sft.get_marker() == "o" and list(sft.get_xdata()) == [10]  # one logged point, drawn
    assert axes[0].get_legend().get_texts()[0].get_text() == "dpo (n=2)" and axes[0].get_ylabel() == "loss (train)"
    assert axis_label("train/rewards/margins") == "rewards margins (train)"


def test_default_grouping_uses_the_sweep_arms(tmp_path):
    for arm, w in (("baseline/dpo", 0.5), ("tgdpo/a1", 0.7)):
        for seed in (0, 1):
            fake_run(
                tmp_path,
                f"{arm.replace('/', '_')}{seed}",
                {"name": "dpo" if arm == "baseline/dpo" else "tgdpo"},
                seed,
                arm=arm,
                summary={"eval/win_rate": w + seed / 10},
            )
    table, files = make_report([str(tmp_path)])
    assert table.group_by == ["arm"] and table.metrics == ["eval/win_rate"]
    assert [(r["group"], round(r["eval/win_rate"][0], 6)) for r in table.rows] == [
        (("baseline/dpo",), 0.55),
        (("tgdpo/a1",), 0.75),
    ]
    assert files["markdown"] == tmp_path / "table" / "table.md"


def test_wandb_runs_join_the_table(tmp_path, monkeypatch):
    import sys
    import types

    class FakeRun:
        def __init__(self, rid, state, alpha, win):
            self.path, self.state = ["me", "proj", rid], state
            self.config = {"seed": 0, "method": {"name": "tgdpo", "alpha": alpha}}
            self.summary = {"eval/win_rate": win, "_runtime": 3}

        def scan_history(self):
            return [{"_step": 1, "step": 1, "train/loss": 0.7}]

    calls = {}

    class Api:
        def runs(self, path, filters=None):
            calls["args"] = (path, filters)
            return [FakeRun("a", "finished", 1.0, 0.6), FakeRun("b", "crashed", 1.0, 0.1)]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    table, _ = make_report([], out=tmp_path, group_by=["method.alpha"], wandb="me/proj", wandb_group="tgdpo")
    assert calls["args"] == ("me/proj", {"group": "tgdpo"})
    assert [(r["group"], r["eval/win_rate"][0]) for r in table.rows] == [((1.0,), 0.6)]
    assert table.excluded == [("wandb:b", "W&B state crashed")]


def test_replace_marked_block_rewrites_only_its_block(tmp_path):
    from tokalign.analysis.table import replace_marked_block

    doc = tmp_path / "doc.md"
    doc.write_text("# title\n")
    replace_marked_block(doc, "t", "| a |\n")
    replace_marked_block(doc, "t", "| b |")
    assert doc.read_text() == "# title\n\n<!-- t:begin -->\n| b |\n<!-- t:end -->\n"


def _evaluated(root: Path, name: str, seed: int, num_samples: int) -> Path:
    settings = {"eval.num_samples": num_samples, "eval.temperature": 0.7}
    return fake_run(
        root,
        name,
        {"name": "dpo", "beta": 0.1},
        seed,
        summary={"train/steps": 2},
        evals={"eval/win_rate": 0.5 + seed / 10, "settings": settings},
    )


def test_evaluations_with_different_settings_are_not_averaged_unless_told(tmp_path):
    import pytest

    from tokalign.errors import ConfigError

    for seed, n in enumerate((1, 1, 4)):
        _evaluated(tmp_path, f"dpo_s{seed}", seed, n)
    with pytest.raises(
        ConfigError, match=r"eval.num_samples: 1 \(.*dpo_s0, .*dpo_s1\); 4 \(.*dpo_s2\).*mixed_eval=true"
    ):
        make_report([str(tmp_path)], out=tmp_path / "table")
    table, _ = make_report([str(tmp_path)], out=tmp_path / "table", mixed_eval=True)
    assert "Evaluated with different settings" in table.markdown() and "dpo_s2" in table.markdown()


def test_a_curve_of_fewer_than_three_points_is_drawn_as_points(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokalign.analysis.table import plot_curves

    for seed in range(2):
        fake_run(
            tmp_path, f"dpo_s{seed}", {"name": "dpo", "beta": 0.1}, seed, summary={"train/steps": 2}, losses=(0.7, 0.69)
        )
    records = [load_run(d) for d in find_run_dirs([tmp_path])]
    figures = []
    real_close = plt.close
    plt.close = figures.append  # keep the figure to look at its axes
    try:
        written = plot_curves(records, ["method.name"], ["train/loss"], tmp_path, formats=("png",))
    finally:
        plt.close = real_close
    ax = figures[0].axes[0]
    assert written[0].exists() and ax.lines[0].get_linestyle() in ("None", "none", "")  # points, no line
    assert list(ax.get_xticks()) == [10, 20] and ax.get_xlim() == (9, 21)  # the logged steps, not a fractional range
    assert "2 logged steps" in ax.get_legend().get_texts()[0].get_text()


def test_best_evaluation_during_training_beside_the_last(tmp_path):
    """eval.keep=best leaves best.json: the table reports the best value and its step beside the last."""
    for seed, (last, best, step) in enumerate([(0.5, 0.9, 40), (0.7, 0.8, 20)]):
        d = fake_run(tmp_path, f"dpo_s{seed}", {"name": "dpo"}, seed, summary={"train/steps": 60})
        (d / "eval.json").write_text(json.dumps({"eval/win_rate": last}))
        (d / "best.json").write_text(json.dumps({"step": step, "metric": "eval/win_rate", "value": best}))
    fake_run(tmp_path, "dpo_s2", {"name": "dpo"}, 2, summary={"train/steps": 60}, evals={"eval/win_rate": 0.6})
    table, _ = make_report([str(tmp_path)], tmp_path.parent / "out")
    (row,) = table.rows
    assert [round(x, 6) for x in row["eval/win_rate"][:1]] == [0.6] and row["eval/win_rate"][2] == 3
    assert round(row["best/win_rate"][0], 6) == 0.85 and row["best/win_rate"][2] == 2  # runs without best.json: absent
    assert row["best/step"][0] == 30


def test_knobs_of_evaluations_during_training_are_not_final_evaluation_settings():
    """Runs that differ only in how they evaluated during training average together."""
    from tests.conftest import compose_config
    from tokalign.analysis.evaluate import settings

    plain = settings(compose_config())
    during = settings(compose_config("eval.every_steps=5", "eval.keep=best", "eval.best_metric=gold_reward"))
    assert plain == during and not any(k in plain for k in ("eval.every_steps", "eval.keep", "eval.best_metric"))
