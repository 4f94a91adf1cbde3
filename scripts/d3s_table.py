"""The D³S paper's comparison at toy scale: GRPO vs PODS vs D³S-GRPO on toy_math, several seeds.

    python scripts/d3s_table.py                 # 3 methods x 3 seeds, writes docs/d3s.md table + PNG

Each run is `tokalign train method=<m> dataset=toy_math ...` (in this process, one after the
other) from the tiny model. Reported per method (mean ± std over seeds): final held-out
accuracy (pass@1 over eval.num_samples samples) and pass@k, total trained (loss-weighted)
tokens, and the trained tokens a run needed before its training-rollout accuracy (moving
average over --window steps) first reached GRPO's final value (mean of GRPO's seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from tokalign.report import replace_marked_block

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("grpo", "pods", "d3s_grpo")  # conf/method/<name>.yaml hold their settings


def run_one(method: str, seed: int, out_dir: Path, args) -> Path:
    from tokalign.cli import main as cli

    run_dir = out_dir / f"{method}_s{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir
    cli([
        "train", f"method={method}", "dataset=toy_math", "logger=none", f"seed={seed}", f"hydra.run.dir={run_dir}",
        f"trainer.max_steps={args.steps}", "trainer.logging_steps=1", f"trainer.per_device_batch_size={args.prompts * 8}",
        f"trainer.learning_rate={args.lr}", "method.num_generations=8", f"method.max_completion_length={args.max_len}",
        f"eval.num_prompts={args.eval_prompts}", f"eval.num_samples={args.k}", f"eval.max_new_tokens={args.max_len}",
        *args.overrides,
    ])
    return run_dir


def curve(run_dir: Path, window: int) -> tuple[list[int], list[float]]:
    """(cumulative trained tokens, moving-average training accuracy) per step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/accuracy" in r and "train/usage/trained_tokens_total" in r]
    tokens = [int(r["train/usage/trained_tokens_total"]) for r in steps]
    acc = [r["train/accuracy"] for r in steps]
    smooth = [statistics.fmean(acc[max(0, i - window + 1) : i + 1]) for i in range(len(acc))]
    return tokens, smooth


def tokens_to_reach(tokens: list[int], acc: list[float], target: float) -> int | None:
    return next((t for t, a in zip(tokens, acc) if a >= target), None)


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3g} ± {sd:.2g}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (x 8 completions)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-len", type=int, default=16)
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--k", type=int, default=4, help="eval samples per prompt (pass@k)")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--out-dir", default=str(ROOT / "outputs" / "d3s_table"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "d3s.md"))
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. model.tiny.warmup_steps=2000)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir = Path(args.out_dir)

    runs = {m: [run_one(m, s, out_dir, args) for s in args.seeds] for m in METHODS}
    curves = {m: [curve(d, args.window) for d in dirs] for m, dirs in runs.items()}
    target = statistics.fmean(acc[-1] for _, acc in curves["grpo"])
    lines = [
        f"GRPO vs PODS vs D³S on toy_math, tiny model, {len(args.seeds)} seeds, {args.steps} steps of "
        f"{args.prompts} prompts x 8 completions; eval on {args.eval_prompts} held-out prompts x {args.k} samples.",
        f"Target for the last column: GRPO's final training accuracy ({args.window}-step moving average) = {target:.3f}.",
        "",
        f"| method | eval pass@1 | eval pass@{args.k} | trained tokens | tokens vs GRPO | tokens to reach GRPO's final acc. |",
        "|---|---|---|---|---|---|",
    ]
    grpo_tokens = statistics.fmean(json.loads((d / "summary.json").read_text())["train/trained_tokens_total"] for d in runs["grpo"])
    results = {}
    for m, dirs in runs.items():
        summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
        total = [s["train/trained_tokens_total"] for s in summaries]
        reach = [tokens_to_reach(t, a, target) for t, a in curves[m]]
        reached = [r for r in reach if r is not None]
        results[m] = dict(
            pass1=[s["eval/accuracy"] for s in summaries], passk=[s[f"eval/pass@{args.k}"] for s in summaries],
            tokens=total, reach=reach,
        )
        lines.append(
            f"| {m} | {mean_std(results[m]['pass1'])} | {mean_std(results[m]['passk'])} | {mean_std(total)} | "
            f"{statistics.fmean(total) / grpo_tokens:.2f} | "
            f"{mean_std(reached)} ({len(reached)}/{len(reach)} seeds reached) |"
        )
    table = "\n".join(lines)
    print(table)
    plot(curves, out_dir / "d3s_table.png", target)
    doc_png = Path(args.doc).with_name("d3s_table.png")
    doc_png.write_bytes((out_dir / "d3s_table.png").read_bytes())
    (out_dir / "results.json").write_text(json.dumps(dict(target=target, results=results, args=vars(args)), indent=2))
    replace_marked_block(Path(args.doc), "d3s-table", table + f"\n\n![accuracy vs trained tokens]({doc_png.name})\n")


def plot(curves, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (m, runs), color in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green")):
        for i, (tokens, acc) in enumerate(runs):
            ax.plot(tokens, acc, color=color, alpha=0.8, label=m if i == 0 else None)
    ax.axhline(target, color="grey", linestyle=":", label="GRPO final")
    ax.set_xlabel("cumulative trained tokens")
    ax.set_ylabel("training accuracy (moving average)")
    ax.set_title("toy_math: GRPO vs PODS vs D³S")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
