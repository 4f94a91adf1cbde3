"""MA-RLHF's "reaches PPO's final quality 1.7–2× faster" at toy scale: reward curves of ppo vs ma_ppo.

    python scripts/ma_ppo_curves.py            # ~10-15 min on 2 CPU cores

Trains the tiny model on the toy preference task with the gold reward: token-level ppo and
ma_ppo with the fixed (n=5), ppl and parsing termination rules, 3 seeds each, same settings
otherwise (the method defaults; trainer defaults). PPO's final reward is the seed mean of its
last ``--final-window`` iterations; for every variant the table gives the first iteration at
which its seed-mean reward curve (trailing mean over ``--smooth`` iterations) reaches it, and
the same in training time (rollout + update seconds); once for the gold reward and once for
the RLHF objective (gold − β·KL), since the variants end at very different KLs. Writes the table into docs/ma_ppo.md
(between the ``ma_ppo_curves`` markers), the plot to docs/ma_ppo_curves.png and the numbers
to scripts/results/ma_ppo_curves.json. Finished runs (under --out) are reused; --force reruns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tokalign.report import replace_marked_block

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "ppo": ["method=ppo"],
    "ma_ppo fixed n=5": ["method=ma_ppo"],
    "ma_ppo ppl": ["method=ma_ppo", "method.termination=ppl"],
    "ma_ppo parsing": ["method=ma_ppo", "method.termination=parsing"],
}


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant.replace(' ', '_').replace('=', '')}-s{seed}"


def train(out: Path, variant: str, seed: int, steps: int, force: bool) -> Path:
    path = run_dir(out, variant, seed)
    if (path / "summary.json").exists() and not force:
        return path
    cmd = [sys.executable, "-m", "tokalign.cli", "train", *VARIANTS[variant], f"seed={seed}", "method.reward=gold",
           "dataset=toy_pref", f"trainer.max_steps={steps}", "trainer.logging_steps=1", "logger=none",
           "eval.at_end=false", f"hydra.run.dir={path}", "resume=never"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed} failed:\n{proc.stderr[-3000:]}")
    return path


def curves(path: Path) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/reward" in r]
    seconds, total = [], 0.0
    for r in rows:
        total += r["train/rollout_s"] + r["train/update_s"]
        seconds.append(total)
    return {"reward": [r["train/reward"] for r in rows], "rlhf_reward": [r["train/rlhf_reward"] for r in rows],
            "seconds": seconds,
            "macro_length": [r["train/macro_length"] for r in rows], "kl": [r["train/kl"] for r in rows]}


def trailing_mean(xs: list[float], window: int) -> list[float]:
    return [statistics.fmean(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def summarise(runs: dict[str, list[dict]], key: str, smooth: int, final_window: int) -> tuple[float, list[dict]]:
    """Per variant: final ``key`` and the first iteration (and train time) reaching PPO's final ``key``."""

    def seed_mean(variant, name):
        return [statistics.fmean(c) for c in zip(*(run[name] for run in runs[variant]))]

    ppo_final = statistics.fmean(statistics.fmean(r[key][-final_window:]) for r in runs["ppo"])
    ppo_steps = len(runs["ppo"][0][key])
    ppo_seconds = statistics.fmean(r["seconds"][-1] for r in runs["ppo"])
    table = []
    for variant in runs:
        smoothed = trailing_mean(seed_mean(variant, key), smooth)
        seconds = seed_mean(variant, "seconds")
        reached = next((i for i, v in enumerate(smoothed) if v >= ppo_final), None)
        finals = [statistics.fmean(r[key][-final_window:]) for r in runs[variant]]
        table.append({
            "variant": variant,
            "final": statistics.fmean(finals),
            "final_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "reach_step": None if reached is None else reached + 1,
            "speedup_steps": None if reached is None else ppo_steps / (reached + 1),
            "speedup_time": None if reached is None else ppo_seconds / seconds[reached],
            "macro_length": statistics.fmean(seed_mean(variant, "macro_length")),
            "final_kl": statistics.fmean(statistics.fmean(r["kl"][-final_window:]) for r in runs[variant]),
            "seconds_per_iteration": seconds[-1] / len(seconds),
        })
    return ppo_final, table


def markdown(summaries: dict[str, tuple[float, list[dict]]], args) -> str:
    def num(x, fmt, suffix=""):
        return "never" if x is None else format(x, fmt) + suffix

    lines = [
        f"Tiny model, toy_pref with the gold reward, {args.steps} PPO iterations of 16 prompts, seeds "
        f"{', '.join(map(str, range(args.seeds)))}; \"final\" = mean of the last {args.final_window} iterations, "
        f"over seeds; curves are seed means smoothed over {args.smooth} iterations. KL = Σ_t log π/π_ref per "
        "response (k1); RLHF reward = gold reward − 0.05·KL, the objective PPO maximises.",
    ]
    titles = {"reward": "gold reward", "rlhf_reward": "RLHF reward (gold − β·KL)"}
    for key, (ppo_final, table) in summaries.items():
        lines += [
            "",
            f"**{titles[key]}** — PPO's final: {ppo_final:.2f}",
            "",
            f"| variant | final {titles[key]} (± sd over seeds) | first iteration at PPO's final | speed-up "
            f"(PPO's {args.steps} iterations / that) | speed-up (train time) | final KL | mean macro length "
            "| s / iteration |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in table:
            reference = r["variant"] == "ppo"
            speedups = ("reference", "reference") if reference else (
                num(r["speedup_steps"], ".2f", "×"), num(r["speedup_time"], ".2f", "×"))
            lines.append(
                f"| {r['variant']} | {r['final']:.2f} ± {r['final_sd']:.2f} | {num(r['reach_step'], 'd')} "
                f"| {speedups[0]} | {speedups[1]} | {r['final_kl']:.1f} | {r['macro_length']:.2f} "
                f"| {r['seconds_per_iteration']:.2f} |"
            )
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], summaries: dict, smooth: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("reward", "gold reward"), ("rlhf_reward", "RLHF reward (gold − 0.05·KL)"), ("kl", "KL to reference"))
    for ax, (key, title) in zip(axes, panels):
        for variant, seeds in runs.items():
            smoothed = [trailing_mean(r[key], smooth) for r in seeds]
            mean = [statistics.fmean(c) for c in zip(*smoothed)]
            steps = range(1, len(mean) + 1)
            ax.plot(steps, mean, label=variant)
            ax.fill_between(steps, [min(c) for c in zip(*smoothed)], [max(c) for c in zip(*smoothed)], alpha=0.15)
        if key in summaries:
            ax.axhline(summaries[key][0], color="grey", linestyle="--", linewidth=1, label="PPO final")
        ax.set_xlabel("PPO iteration")
        ax.set_title(f"{title} (trailing mean of {smooth})")
    axes[0].legend()
    fig.suptitle("toy_pref, tiny model: PPO vs MA-PPO (seed mean, min-max band over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--smooth", type=int, default=5)
    p.add_argument("--final-window", type=int, default=6)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one thread)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "ma_ppo_curves")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "ma_ppo.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "ma_ppo_curves.png")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()

    jobs = [(v, s) for s in range(args.seeds) for v in VARIANTS]
    with ThreadPoolExecutor(args.jobs) as pool:
        paths = list(pool.map(lambda job: train(args.out, *job, args.steps, args.force), jobs))
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for (variant, _), path in zip(jobs, paths):
        runs[variant].append(curves(path))
    summaries = {key: summarise(runs, key, args.smooth, args.final_window) for key in ("reward", "rlhf_reward")}
    text = markdown(summaries, args)
    print(text)
    replace_marked_block(args.doc, "ma_ppo_curves", text)
    plot(runs, summaries, args.smooth, args.plot)
    results = ROOT / "scripts" / "results" / "ma_ppo_curves.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"summaries": summaries, "runs": runs}, indent=1))
    print(f"wrote {args.doc}, {args.plot}, {results}")


if __name__ == "__main__":
    main()
