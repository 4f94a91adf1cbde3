"""RTO's table at toy scale: PPO vs RTO on the toy preference task, three seeds (experiment=rto_toy).

    python scripts/rto_toy_table.py [--seeds 0 1 2] [--force] [overrides ...]

Runs the two rows of `experiment=rto_toy` (`rto_ppo`: β₁ = 0, which is PPO; `rto_rto`) for each
seed through `tokalign train`, as `scripts/reproduce_rto.sh --toy` does, into --out (finished
runs are reused; --force reruns them, e.g. after the toy task's reward changed). Extra arguments
are Hydra overrides for every run. The RTO rows train their DPO model on demand (cached per
seed). Metrics: tokalign's evaluation on held-out prompts (gold reward, win rate against the
starting policy, KL to it) and the last logged training iteration. The table (mean ± sd over
seeds) goes into docs/rto.md and scripts/results/rto_toy_table.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"ppo": "rto_ppo", "rto": "rto_rto"}
COLUMNS = {
    "eval/gold_reward": "eval gold reward", "eval/win_rate": "eval win rate", "eval/kl_ref": "eval KL to ref",
    "train/reward": "train reward (end)", "train/kl": "train KL (end)",
    "train/rto/dpo_return": "dense return Σ_t d_t (end)", "train/rto/dpo_clipfrac": "dense clip fraction (end)",
}


def run(run_dir: Path, arm: str, seed: int, overrides: list[str], force: bool) -> Path:
    from tokalign.cli import main

    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if not (run_dir / "summary.json").exists():
        argv = sys.argv
        try:
            main(["train", "experiment=rto_toy", f"+arm={arm}", f"seed={seed}", f"hydra.run.dir={run_dir}", *overrides])
        finally:
            sys.argv = argv
    return run_dir


def numbers(run_dir: Path, last: int = 4) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/reward" in r][-last:]
    out = {k: summary[k] for k in COLUMNS if k.startswith("eval/") and k in summary}
    out.update({k: statistics.fmean(r[k] for r in train) for k in COLUMNS if k.startswith("train/") and k in train[0]})
    return out


def mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2g}"


def main() -> None:
    from tokalign.report import replace_marked_block

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "rto_toy_table")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "rto.md")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args()

    results = {row: [numbers(run(args.out / f"{row}-s{seed}", arm, seed, args.overrides, args.force))
                     for seed in args.seeds] for row, arm in ROWS.items()}
    keys = [k for k in COLUMNS if all(k in r for rows in results.values() for r in rows)]
    extra = f" Overrides: `{' '.join(args.overrides)}`." if args.overrides else ""
    lines = [
        f"`experiment=rto_toy`: tiny model, toy_pref with the gold reward, 24 PPO iterations of 16 prompts, seeds "
        f"{', '.join(map(str, args.seeds))}; eval on 64 held-out prompts; KL = Σ_t log π/π_ref per response; "
        f"\"(end)\": the mean of the last 4 logged rows (8 iterations). Both rows share every knob; `ppo` is RTO "
        f"with β₁ = 0.{extra} Regenerate: `python scripts/rto_toy_table.py --force`.",
        "",
        "| row | " + " | ".join(COLUMNS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for row, runs in results.items():
        cells = [mean_sd([r[k] for r in runs]) for k in keys]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "scripts" / "results" / "rto_toy_table.json"
    out.write_text(json.dumps({"seeds": args.seeds, "overrides": args.overrides, "results": results}, indent=2))
    replace_marked_block(args.doc, "rto-toy-table", table)
    print(f"wrote {out} and {args.doc}")


if __name__ == "__main__":
    main()
