"""Tables and training-curve plots from the run directories of a sweep (`tokalign table`).

A run counts when it finished: its `summary.json` exists (run.py writes it last). Its final
metrics are summary.json updated by eval.json (a later `tokalign eval` wins). Evaluations made with
different settings (eval.json records them; a run without the record counts its own eval group)
are not averaged together unless `mixed_eval=true`: the table names the runs that differ. Runs that failed
or are still going, and finished runs lacking a requested metric, are listed under the table,
never averaged in. Rows group runs by config keys (dotted paths into resolved.yaml, or a Hydra
choice such as `arm` read from the run's .hydra/hydra.yaml); cells are mean ± sample standard
deviation (n − 1) over the group's runs, usually its seeds. W&B runs can be read instead of, or
beside, local directories (`wandb=<entity>/<project>`, optionally `wandb_group=`).

Run directories are read as data (plain YAML and JSON, nothing resolved or imported); a run
whose files cannot be read (a damaged metrics.jsonl, a summary.json that is not an object) is
listed under the table with the reason, and the others are tabulated. The output files are
written atomically, never through a link planted in the output directory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tokalign.artifacts.files import atomic_bytes, atomic_text
from tokalign.artifacts.rundir import read_config
from tokalign.artifacts.tracking import read_metrics, unreadable_line
from tokalign.config import option
from tokalign.errors import ConfigError, StorageError, UserError

MISSING = "-"


@dataclass
class RunRecord:
    name: str
    cfg: DictConfig
    choices: dict[str, str] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    problem: str | None = None  # why the run is not in the table
    eval_settings: dict[str, Any] = field(default_factory=dict)  # what its evaluation ran with

    def value(self, key: str) -> Any:
        """A config value by dotted path, else a Hydra group choice (`arm`, `experiment`, ...)."""
        v = OmegaConf.select(self.cfg, key, default=None)
        if v is None:
            v = self.choices.get(key.removeprefix("choices."))
        return MISSING if v is None else option(v)


def _read_json(path: Path) -> dict | None:
    """A JSON object, None when the file is absent; a UserError says what is wrong with one that is there."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise UserError(f"{path.name} is not readable JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path.name} is not a JSON object (found {type(value).__name__})")
    return value


def _choices(run_dir: Path) -> dict[str, str]:
    """Hydra's group choices (`arm`, `method`, ...) from .hydra/hydra.yaml, read as plain YAML."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
        node = data["hydra"]["runtime"]["choices"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return {str(k): str(v) for k, v in node.items() if v is not None} if isinstance(node, dict) else {}


def load_run(run_dir: Path) -> RunRecord:
    """A run's record; one that cannot be read is a record with its problem, not an error."""
    try:
        cfg = read_config(run_dir / "resolved.yaml")
    except UserError as err:
        return RunRecord(str(run_dir), OmegaConf.create({}), problem=f"unreadable: {err}")
    rec = RunRecord(str(run_dir), cfg, _choices(run_dir))
    try:
        bad = unreadable_line(run_dir)
        if bad:
            raise UserError(f"metrics.jsonl:{bad} is not UTF-8 text (a damaged file)")
        rec.history = read_metrics(run_dir)
        summary = _read_json(run_dir / "summary.json")
        if summary is None:
            steps = max((r.get("step", 0) for r in rec.history if isinstance(r.get("step"), int)), default=None)
            rec.problem = "incomplete: no summary.json" + (
                f" (last logged step {steps})" if steps is not None else " (nothing logged)"
            )
            return rec
        evaluated = _read_json(run_dir / "eval.json") or {}
        rec.eval_settings = evaluated.pop("settings", None) or _settings_of(cfg)
        rec.final = {**summary, **evaluated, **_best(run_dir)}
    except (UserError, OSError) as err:
        rec.problem = f"unreadable: {err}"
    return rec


def _best(run_dir: Path) -> dict[str, Any]:
    """The best evaluation during training (best.json, written with eval.keep=best) beside the last:
    `best/<metric>` and `best/step`, so a table shows both."""
    best = _read_json(run_dir / "best.json") or {}
    if not isinstance(best.get("metric"), str):
        return {}
    return {f"best/{best['metric'].removeprefix('eval/')}": best.get("value"), "best/step": best.get("step")}


def _settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The evaluation settings of a run that recorded none: its own eval group (evaluated at its end)."""
    from tokalign.analysis.evaluate import settings

    return settings(cfg) if cfg.get("eval") else {}


def eval_differences(records: list[RunRecord]) -> list[str]:
    """One line per evaluation setting that differs between finished runs: each value and its runs."""
    done = [r for r in records if r.problem is None]
    lines = []
    for key in sorted({k for r in done for k in r.eval_settings}):
        by_value: dict[str, list[str]] = {}
        for r in done:
            by_value.setdefault(json.dumps(r.eval_settings.get(key), default=str), []).append(r.name)
        if len(by_value) > 1:
            lines.append(f"{key}: " + "; ".join(f"{v} ({', '.join(names)})" for v, names in sorted(by_value.items())))
    return lines


def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every directory under the roots (or a root itself) that holds a resolved.yaml."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser()
        if (root / "resolved.yaml").exists():
            found.add(root)
        found.update(p.parent for p in root.rglob("resolved.yaml") if "checkpoints" not in p.parts)
    return sorted(found)


def load_wandb_runs(path: str, group: str | None = None) -> list[RunRecord]:
    """Runs of a W&B project (needs network and a login): config, summary and history."""
    import wandb

    records = []
    for r in wandb.Api().runs(path, filters={"group": group} if group else None):
        rec = RunRecord(f"wandb:{r.path[-1]}", OmegaConf.create(dict(r.config)))
        rec.eval_settings = _settings_of(rec.cfg)
        rec.history = [dict(row) for row in r.scan_history()]
        if r.state != "finished":
            rec.problem = f"W&B state {r.state}"
        else:
            rec.final = {k: v for k, v in dict(r.summary).items() if not k.startswith("_")}
        records.append(rec)
    return records


def default_group_by(records: list[RunRecord]) -> list[str]:
    """`arm` when the sweep used arms (else method.name), after any model/dataset that varies."""
    varying = [k for k in ("model.name", "dataset.name") if len({str(r.value(k)) for r in records}) > 1]
    arm = records and all("arm" in r.choices for r in records)
    return varying + (["arm"] if arm else ["method.name"])


def default_metrics(records: list[RunRecord]) -> list[str]:
    keys = {
        k
        for r in records
        if r.problem is None
        for k, v in r.final.items()
        if k.startswith(("eval/", "best/")) and _number(v) is not None
    }
    return sorted(keys - {"eval/num_prompts"})


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


@dataclass
class Table:
    group_by: list[str]
    metrics: list[str]
    rows: list[dict]  # {"group": tuple, "n": int, "seeds": list, metric: (mean, std, n)}
    excluded: list[tuple[str, str]]  # (run, reason)
    notes: list[str] = field(default_factory=list)  # said under the table (e.g. mixed evaluation settings)

    def markdown(self, title: str | None = None) -> str:
        head = [*self.group_by, "n", *self.metrics]
        lines = [f"### {title}", ""] if title else []
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for row in self.rows:
            cells = [str(g) for g in row["group"]] + [str(row["n"])]
            cells += [_cell(row[m], row["n"]) for m in self.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        if self.excluded:
            lines += ["", "Runs not in the table:", ""] + [f"- `{run}`: {why}" for run, why in self.excluded]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow([*self.group_by, "n", "seeds", *(f"{m}_{s}" for m in self.metrics for s in ("mean", "std", "n"))])
        for row in self.rows:
            stats = [x for m in self.metrics for x in (row[m] if row[m] else ("", "", 0))]
            w.writerow([*row["group"], row["n"], " ".join(map(str, row["seeds"])), *stats])
        return f.getvalue()


def _cell(stat: tuple | None, n: int) -> str:
    if not stat:
        return MISSING
    mean, std, k = stat
    text = f"{mean:.4g}" if k == 1 else f"{mean:.4g} ± {std:.2g}"
    return text + (f" (n={k})" if k != n else "")


def _key(v: Any):
    """Sort numbers numerically and before text."""
    return (0, float(v), "") if _number(v) is not None else (1, 0.0, str(v))


def build_table(records: list[RunRecord], group_by: list[str], metrics: list[str]) -> Table:
    excluded = [(r.name, r.problem) for r in records if r.problem]
    done = [r for r in records if r.problem is None]
    groups: dict[tuple, list[RunRecord]] = {}
    for r in done:
        groups.setdefault(tuple(r.value(k) for k in group_by), []).append(r)
    rows = []
    for key in sorted(groups, key=lambda g: tuple(_key(v) for v in g)):
        runs = groups[key]
        row = {"group": key, "n": len(runs), "seeds": sorted(r.value("seed") for r in runs)}
        for m in metrics:
            values = [v for v in (_number(r.final.get(m)) for r in runs) if v is not None]
            row[m] = (
                (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
                if values
                else None
            )
        for r in runs:
            lacking = [m for m in metrics if _number(r.final.get(m)) is None]
            if lacking:
                excluded.append((r.name, f"finished without {', '.join(lacking)}"))
        rows.append(row)
    return Table(group_by, metrics, rows, excluded)


def default_curves(records: list[RunRecord], limit: int = 4) -> list[str]:
    """train/loss and reward-like training keys logged by every finished run."""
    done = [r for r in records if r.problem is None and r.history]
    if not done:
        return []
    common = set.intersection(*({k for row in r.history for k in row} for r in done))
    picked = [k for k in ("train/loss",) if k in common]
    picked += sorted(
        k
        for k in common
        if k.startswith("train/") and k.rsplit("/", 1)[-1].startswith(("reward", "score", "accurac", "margin"))
    )
    return picked[:limit]


def axis_label(key: str) -> str:
    """`train/rewards/margins` -> `rewards margins (train)`: what a reader sees on an axis."""
    phase, _, rest = key.partition("/")
    return f"{rest.replace('/', ' ').replace('_', ' ')} ({phase})" if rest else key.replace("_", " ")


def _means(runs: list[RunRecord], key: str) -> tuple[list[int], list[float], list[float]]:
    by_step: dict[int, list[float]] = {}
    for r in runs:
        for row in r.history:
            v = _number(row.get(key))
            if v is not None and "step" in row:
                by_step.setdefault(int(row["step"]), []).append(v)
    steps = sorted(by_step)
    mean = [statistics.fmean(by_step[s]) for s in steps]
    std = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, mean, std


SHORT_CURVE = 3  # a curve of fewer logged steps is drawn as points


def plot_curves(
    records: list[RunRecord], group_by: list[str], keys: list[str], out: Path, formats: tuple[str, ...] = ("png", "pdf")
) -> list[Path]:
    """One figure per key: each group's mean over its runs against the step (± std shaded, markers,
    the number of seeds in the legend). Methods whose metric means different things (an SFT
    cross-entropy and a DPO loss both log `train/loss`) get a panel each for a loss. A group with fewer
    than three logged steps is drawn as points (± std bars) on an axis of those steps. PNG and a vector PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    done = [r for r in records if r.problem is None]
    for key in keys:
        kinds: dict[str, list[RunRecord]] = {}
        for r in done:
            algorithm = (
                r.value("method.algorithm") if r.value("method.algorithm") != MISSING else r.value("method.name")
            )
            kinds.setdefault(str(algorithm) if key.endswith("loss") else "", []).append(r)
        fig, axes = plt.subplots(1, len(kinds) or 1, figsize=(5.5 * max(1, len(kinds)), 4), squeeze=False)
        for ax, (kind, runs) in zip(axes[0], sorted(kinds.items())):
            sparse: set[int] = set()
            groups: dict[tuple, list[RunRecord]] = {}
            for r in runs:
                groups.setdefault(tuple(r.value(k) for k in group_by), []).append(r)
            for group in sorted(groups, key=lambda g: tuple(_key(v) for v in g)):
                steps, mean, std = _means(groups[group], key)
                if not steps:
                    continue
                label = f"{', '.join(map(str, group))} (n={len(groups[group])})"
                if len(steps) < SHORT_CURVE:  # too few points for a line: the points themselves, ± std as bars
                    sparse.update(steps)
                    ax.errorbar(
                        steps,
                        mean,
                        yerr=std,
                        fmt="o",
                        markersize=5,
                        capsize=3,
                        label=f"{label}, {len(steps)} logged step{'s' if len(steps) > 1 else ''}",
                    )
                    continue
                ax.plot(steps, mean, marker="o", markersize=3.5, linewidth=1.5, label=label)
                ax.fill_between(
                    steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2
                )
            ax.set_xlabel("training step")
            ax.set_ylabel(axis_label(key))
            ax.set_title(f"{axis_label(key)} · {kind}" if kind and len(kinds) > 1 else axis_label(key))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if sparse and len(sparse) < SHORT_CURVE:  # an axis of the logged steps alone, not a fractional range
                ax.set_xticks(sorted(sparse))
                ax.set_xlim(min(sparse) - 1, max(sparse) + 1)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", title=", ".join(group_by), title_fontsize="small")
        fig.tight_layout()
        for fmt in formats:
            image = io.BytesIO()
            fig.savefig(image, format=fmt, dpi=150)
            written.append(atomic_bytes(out / f"curve_{_file_safe(key)}.{fmt}", image.getvalue()))
        plt.close(fig)
    return written


def _file_safe(key: str) -> str:
    """A metric key as part of a file name: no separator or `..` from a key a run logged can leave the directory."""
    return re.sub(r"[^A-Za-z0-9@=+-]+", "_", key)


def make_report(
    runs: list[str],
    out: str | Path | None = None,
    group_by: list[str] | None = None,
    metrics: list[str] | None = None,
    curves: list[str] | None = None,
    wandb: str | None = None,
    wandb_group: str | None = None,
    title: str | None = None,
    mixed_eval: bool = False,
) -> tuple[Table, dict[str, Path]]:
    """Collect runs, write table.md, table.csv and curve PNGs into `out`; returns the table and files.

    Runs evaluated with different settings are refused (a ConfigError naming them) unless `mixed_eval`."""
    records = [load_run(d) for d in find_run_dirs(runs)]
    if wandb:
        records += load_wandb_runs(wandb, wandb_group)
    if not records:
        raise FileNotFoundError(f"no run directories (with resolved.yaml) under {', '.join(map(str, runs))}")
    group_by = list(group_by or default_group_by(records))
    metrics = list(metrics or default_metrics(records))
    differ = eval_differences(records)
    if differ and not mixed_eval:
        raise ConfigError(
            "these runs were evaluated with different settings, which a mean would mix: "
            + " | ".join(differ)
            + ". Re-evaluate them alike (tokalign eval run_dir=... eval.<knob>=...), "
            "or pass mixed_eval=true to tabulate them anyway"
        )
    table = build_table(records, group_by, metrics)
    if differ:
        table.notes = ["Evaluated with different settings (mixed_eval=true):", ""] + [f"- {line}" for line in differ]
    out = Path(out or (Path(runs[0]) / "table" if runs else "table"))
    if out.is_symlink():
        raise StorageError(
            f"the table directory {out} is a symbolic link (to {os.readlink(out)}); tokalign writes no "
            "file through a link: pass out=<a directory>"
        )
    files = {
        "markdown": atomic_text(out / "table.md", table.markdown(title)),
        "csv": atomic_text(out / "table.csv", table.csv()),
    }
    curve_keys = default_curves(records) if curves is None else list(curves)
    for path in plot_curves(records, group_by, curve_keys, out):
        files[path.stem] = path
    return table, files


def replace_marked_block(doc: Path, name: str, body: str) -> None:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` in a Markdown file.

    Scripts that measure a table rewrite only their own block of the docs (appended if absent).
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


class SweepTable(Callback):
    """Hydra callback (conf/config.yaml): when a multirun ends, print its table and write it with its
    curves into `<sweep dir>/table/`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            table, files = make_report([str(sweep_dir)], out=sweep_dir / "table")
        except (FileNotFoundError, ValueError, ConfigError) as err:
            print(f"tokalign: no sweep summary: {err}")
            return
        print(f"\nSweep table ({sweep_dir}):\n\n{table.markdown()}")
        print("\n".join(f"wrote {path}" for path in files.values()))
