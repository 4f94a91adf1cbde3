"""A paper's toy table, made one way: its reproduce script's laptop twin, timed, written into its docs page.

    python scripts/toy/toy_table.py tgdpo            # one paper: tgdpo, ma_rlhf, d3s, treg, rto, aligndistil, intro, rltf
    python scripts/toy/toy_table.py --all            # every paper, one after the other (`make toy-tables`)
    python scripts/toy/toy_table.py d3s --fresh      # discard the earlier runs under outputs/toy_tables/d3s first
    python scripts/toy/toy_table.py rto seed=0       # extra arguments: Hydra overrides for every run

Runs `ROOT=outputs/toy_tables/<paper> scripts/reproduce/reproduce_<paper>.sh --toy` (its experiment sets
resume=auto: a sweep point whose run directory already holds a finished run is left as it is, so a
rerun only completes what is missing; `--fresh` to time every run), timing the whole script (wall seconds, and the 1-minute load
average before and after, since the machine may be shared). Then reads the `tokalign table` output
under `<ROOT>/table/`, writes `scripts/results/<paper>_toy.json` (table rows, seeds, wall time, load,
reused runs, cache entries built on the way, commit, date), copies the curves that matter to
`docs/img/<paper>_toy_*.png`, and rewrites the `toy_table` block of the paper's docs page. What the
numbers mean is written by hand next to the block.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tokalign.analysis.table import find_run_dirs, load_run, replace_marked_block

REPO = Path(__file__).resolve().parents[2]

# every paper with a reproduce script; its page is docs/<paper>.md
PAPERS = sorted(p.stem.removeprefix("reproduce_") for p in (REPO / "scripts" / "reproduce").glob("reproduce_*.sh"))
# the training curves worth showing on a paper's page, where not the loss
CURVES = {
    "ma_rlhf": ["train/reward", "train/kl"],
    "d3s": ["train/accuracy"],
    "rto": ["train/reward"],
    "intro": ["train/accuracy"],
    "rltf": ["train/accuracy"],
}
CACHED = ("models", "dpo_models", "data", "token_logps")  # what runs build once and reuse from cache_dir


def cache_entries() -> set[str]:
    cache = Path(os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign")).expanduser()
    return {
        f"{kind}/{p.name}"
        for kind in CACHED
        if (cache / kind).is_dir()
        for p in (cache / kind).iterdir()
        if not p.name.endswith(".lock")
    }


def finished_runs(root: Path) -> int:
    return sum(1 for d in find_run_dirs([root]) if (d / "summary.json").exists()) if root.exists() else 0


def commit() -> str:
    """HEAD, marked -dirty when the code or configs that make the numbers differ from it (docs do not count)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], check=False, capture_output=True, text=True
        ).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "src", "conf", "scripts/reproduce")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")


def run_script(paper: str, root: Path, overrides: list[str]) -> float:
    """The reproduce script's toy twin, its output echoed and kept in `<root>.log`; returns wall seconds."""
    env = {**os.environ, "ROOT": str(root), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["bash", str(REPO / "scripts" / "reproduce" / f"reproduce_{paper}.sh"), "--toy", *overrides]
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (
        open(f"{root}.log", "w") as log,
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"toy_table: {' '.join(cmd)} exited with status {proc.returncode} (log: {root}.log)")
    return wall


def table_rows(csv_path: Path) -> list[dict]:
    """table.csv as records: the group columns, n, seeds, and {metric: {mean, std, n}}."""
    import csv

    rows = []
    with csv_path.open() as f:
        for raw in csv.DictReader(f):
            row: dict = {}
            for key, value in raw.items():
                for stat in ("mean", "std", "n"):
                    if key.endswith(f"_{stat}") and key.count("/"):
                        metric = key[: -len(stat) - 1]
                        row.setdefault("metrics", {}).setdefault(metric, {})[stat] = (
                            (int(value) if stat == "n" else float(value)) if value != "" else None
                        )
                        break
                else:
                    row[key] = (
                        [int(s) for s in value.split()] if key == "seeds" else int(value) if key == "n" else value
                    )
            rows.append(row)
    return rows


def make(paper: str, fresh: bool, overrides: list[str]) -> None:
    root = REPO / "outputs" / "toy_tables" / paper
    if fresh and root.exists():
        shutil.rmtree(root)
    reused, cache_before, load_before = finished_runs(root), cache_entries(), os.getloadavg()[0]
    wall = run_script(paper, root, overrides)
    load_after = os.getloadavg()[0]
    built = sorted(cache_entries() - cache_before)
    runs = [load_run(d) for d in find_run_dirs([root])]
    seeds = sorted({int(r.value("seed")) for r in runs if r.problem is None})
    doc_name = f"{paper}.md"
    pictures = []
    for key in CURVES.get(paper, ["train/loss"]):
        png = root / "table" / f"curve_{key.replace('/', '_')}.png"
        if png.exists():
            target = REPO / "docs" / "img" / f"{paper}_toy_{key.replace('/', '_')}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
            pictures.append((key, target))
    record = {
        "paper": paper,
        "command": f"python scripts/toy/toy_table.py {paper}" + "".join(f" {o}" for o in overrides),
        "overrides": overrides,
        "runs": len(runs),
        "reused_runs": reused,
        "seeds": seeds,
        "wall_s": round(wall, 1),
        "load_1min": {"before": load_before, "after": load_after},
        "cache_built": built,
        "commit": commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": table_rows(root / "table" / "table.csv"),
    }
    results = REPO / "scripts" / "results" / f"{paper}_toy.json"
    results.write_text(json.dumps(record, indent=1) + "\n")

    table = (root / "table" / "table.md").read_text()
    table = "\n".join(line for line in table.splitlines() if not line.startswith("### ")).strip()
    fresh_runs = len(runs) - reused
    how = (
        (f"{len(runs)} runs ({fresh_runs} trained here, {reused} reused)" if reused else f"{len(runs)} runs")
        + f", seeds {', '.join(map(str, seeds))}; {wall:.0f} s wall on {os.cpu_count()} CPU cores "
        + f"(1-min load {load_before:.1f} before, {load_after:.1f} after)"
        + (f", including what it built into the cache on the way ({', '.join(built)})" if built else "")
        + f"; commit {record['commit']}, {record['date'][:10]}."
    )
    intro = (
        f"Made by `{record['command']}` (`scripts/reproduce/reproduce_{paper}.sh --toy`): {how} "
        f"Mean ± std over seeds; numbers in `scripts/results/{paper}_toy.json`."
    )
    body = [intro, "", table]
    body += [f"\n![{key} per step, mean ± std over seeds](img/{target.name})" for key, target in pictures]
    replace_marked_block(REPO / "docs" / doc_name, "toy_table", "\n".join(body))
    print(f"toy_table: {paper}: {wall:.0f} s wall; wrote {results.relative_to(REPO)} and docs/{doc_name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--all", action="store_true", help="every paper's table, one after the other")
    p.add_argument("--fresh", action="store_true", help="discard earlier runs first, so that every run is timed")
    p.add_argument(
        "args",
        nargs="*",
        metavar="[PAPER] [OVERRIDE ...]",
        help=f"the paper ({', '.join(PAPERS)}) unless --all, then Hydra overrides for every run",
    )
    a = p.parse_args()
    papers, overrides = (list(PAPERS), a.args) if a.all else (a.args[:1], a.args[1:])
    if not a.all and (not papers or papers[0] not in PAPERS):
        p.error(f"name a paper ({', '.join(PAPERS)}) or pass --all")
    for paper in papers:
        make(paper, a.fresh, overrides)


if __name__ == "__main__":
    main()
