"""Toy tables of T-REG and AlignDistil against DPO: the tiny model on the toy preference task, 3 seeds.

    python scripts/toy_pref_table.py treg        [--seeds 0 1 2] [--steps 80] [--lr 5e-4] [--out outputs/toy_pref_table]
    python scripts/toy_pref_table.py aligndistil [...]

treg: DPO vs DPO-REG α = 0.1 / 0.25 / 0.5 on on-policy pairs (best and worst of 4 samples from the
starting policy under the gold reward: the SimPO recipe in miniature, as T-REG's setting).
aligndistil: DPO (at β₀, the teacher) and reverse DPO (the other teacher, trained on swapped
pairs) vs AlignDistil off-policy (r = 10, their value, and r = 1), its contrast and adaptive
variants and on-policy AlignDistil, on the toy task's fixed pairs (AlignDistil's main setting is
off-policy on fixed pairs); every
AlignDistil run of a seed distils that seed's DPO and reverse-DPO runs, exactly the teachers the
on-demand default would build. Every run: the same trainer settings; metrics are tokalign's eval
on held-out prompts: gold-reward win rate against the reference (starting) policy, ties half,
and mean gold reward. Rerunnable: a run whose eval.json exists is read, not retrained, so the
table can be rebuilt (or extended with seeds) after the toy task changes by pointing --out at a
fresh directory. The table goes into docs/<method>.md and scripts/results/<method>_toy_table.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# method -> (overrides of every run, [(row, run name, overrides)]); {dpo} / {reverse} stand for the seed's teachers
TABLES = {
    "treg": (("dataset.pairs=on_policy",), [
        ("DPO", "dpo", ("method=dpo",)),
        *((f"T-REG α={a:g}", f"treg-a{a:g}", ("method=treg", f"method.alpha={a}")) for a in (0.1, 0.25, 0.5)),
    ]),
    "aligndistil": ((), [
        ("DPO (teacher)", "dpo", ("method=dpo",)),
        ("reverse DPO (teacher)", "reverse", ("method=dpo", "method.reverse=true")),
        *((name, run, ("method=aligndistil", "method.dpo_model={dpo}", *extra)) for name, run, extra in (
            ("AlignDistil (off-policy)", "aligndistil", ("method.reverse_dpo_model={reverse}",)),
            ("AlignDistil r=1", "r1", ("method.tvd_scale=1", "method.reverse_dpo_model={reverse}")),
            ("AlignDistil contrast", "contrast", ("method.variant=contrast", "method.reverse_dpo_model={reverse}")),
            ("AlignDistil adaptive", "adaptive", ("method.variant=adaptive",)),
            ("AlignDistil on-policy", "on_policy", ("method.on_policy=true", "method.reverse_dpo_model={reverse}")),
        )),
    ]),
}


def train(run_dir: Path, *overrides: str) -> dict:
    """The run's eval metrics and wall time, training it first unless it finished before."""
    from tokalign.cli import main

    if not (run_dir / "eval.json").exists():
        argv = sys.argv
        try:
            main(["train", f"hydra.run.dir={run_dir}", "logger=none", *overrides])
        finally:
            sys.argv = argv
    summary = json.loads((run_dir / "summary.json").read_text())
    return {**json.loads((run_dir / "eval.json").read_text()), "train/wall_s": summary.get("train/wall_s")}


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    from tokalign.report import replace_marked_block

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=sorted(TABLES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=5e-4, help="trainer.learning_rate of every run")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "toy_pref_table")
    a = p.parse_args()
    data, rows = TABLES[a.method]
    common = (*data, "dataset.num_train=1000", f"trainer.max_steps={a.steps}", f"trainer.learning_rate={a.lr}",
              "eval.num_prompts=64", "eval.num_samples=2")

    results: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for seed in a.seeds:
        dirs = {run: a.out / a.method / f"{run}-s{seed}" for _, run, _ in rows}
        teachers = {"dpo": dirs["dpo"] / "model", "reverse": dirs.get("reverse", Path()) / "model"}
        for name, run, overrides in rows:
            resolved = [o.format(**teachers) for o in overrides]
            results[name].append(train(dirs[run], *resolved, f"seed={seed}", *common))

    ref = [r["eval/gold_reward_ref"] for rs in results.values() for r in rs]
    lines = [
        "| method | win rate vs reference | gold reward | runs | wall per run (s) |",
        "|---|---|---|---|---|",
        f"| reference (starting policy) | 0.500 | {fmt(ref)} | — | — |",
    ]
    for name, rs in results.items():
        walls = [r["train/wall_s"] for r in rs if r.get("train/wall_s") is not None]
        wall = f"{statistics.median(walls):.0f}" if walls else "—"
        lines.append(f"| {name} | {fmt([r['eval/win_rate'] for r in rs])} | {fmt([r['eval/gold_reward'] for r in rs])} | "
                     f"{len(rs)} | {wall} |")
    table = "\n".join(lines)
    walls = [r["train/wall_s"] for rs in results.values() for r in rs if r.get("train/wall_s") is not None]
    note = (f"\n\nSeeds {a.seeds}, {a.steps} steps each, learning rate {a.lr:g}, {' '.join(data) or 'fixed pairs'}; "
            "mean ± std over seeds; 64 held-out prompts × 2 samples per run. Wall: `train/wall_s` (data, precompute "
            "and training; a seed's first run builds the on-policy pairs, cached token values are reused), median per "
            f"run, {sum(walls):.0f} s over the table's {len(walls)} runs; evaluation comes on top.")
    print(table + note)
    out = ROOT / "scripts" / "results" / f"{a.method}_toy_table.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": a.seeds, "steps": a.steps, "lr": a.lr, "runs": results}, indent=2))
    replace_marked_block(ROOT / "docs" / f"{a.method}.md", f"{a.method}-toy-table", table + note)
    print(f"wrote {out} and docs/{a.method}.md")


if __name__ == "__main__":
    main()
