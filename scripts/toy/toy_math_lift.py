"""Does GRPO teach the tiny model the toy arithmetic task? Starting pass@1 and GRPO's lift, per seed.

    python scripts/toy/toy_math_lift.py                       # GRPO, seeds 0 1 2, at the d3s_toy settings
    python scripts/toy/toy_math_lift.py --arm d3s/full        # another row of the D³S toy table
    python scripts/toy/toy_math_lift.py --start-only model.tiny.warmup_steps=600
    python scripts/toy/toy_math_lift.py --label "lr 1e-3" trainer.learning_rate=1e-3

For each seed: samples the starting (reference) policy on the run's eval prompts with the run's
eval settings (`eval.*` of experiment=d3s_toy, the same sampling seed as the run's evaluation),
then trains `tokalign train experiment=d3s_toy +arm=<arm>`, reads the run's eval.json and samples
the trained policy the same way (its pass@1 equals eval.json's; the share of samples that answer
at all and the accuracy of those that do say where a lift comes from).
A seed passes when its trained pass@1 is at least --min-lift above its starting pass@1. Each
invocation appends one record (task constants, tiny-model spec, overrides, figures per seed,
wall times) to scripts/results/toy_math_lift.json; extra arguments are Hydra overrides for
both the starting measurement and the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from toylib import append_record, compose

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "scripts" / "results" / "toy_math_lift.json"


def policy_figures(cfg, model_path: str) -> dict:
    """pass@k of a model on the run's eval prompts, sampled as `tokalign eval` samples them.

    Also the share of samples that give an answer at all and the accuracy of those that do, which
    separate "answers more often" from "answers more correctly".
    """
    from tokalign.analysis.evaluate import pass_at_k
    from tokalign.data.loading import load_split
    from tokalign.data.toy_math import extract_answer
    from tokalign.modeling.generation import generate
    from tokalign.modeling.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(model_path), load_causal_lm(model_path)
    data = load_split(cfg.dataset, "prompt", "eval")
    data = data.select(range(min(cfg.eval.num_prompts, len(data))))
    prompts, answers = list(data["prompt"]), list(data["answer"])
    e = cfg.eval
    samples = generate(
        model,
        tok,
        prompts,
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        top_p=e.top_p,
        num_samples=e.num_samples,
        batch_size=e.batch_size,
        seed=cfg.seed + 17,
    )
    given = [[extract_answer(x) for x in s] for s in samples]
    correct = [[g == a for g in gs] for gs, a in zip(given, answers)]
    out = {
        f"pass@{k}": statistics.fmean(pass_at_k(len(c), sum(c), k) for c in correct)
        for k in sorted({*map(int, e.pass_k), e.num_samples})
    }
    answered = [g is not None for gs in given for g in gs]
    out["answered"] = statistics.fmean(answered)
    out["accuracy_when_answered"] = sum(map(sum, correct)) / max(1, sum(answered))
    out["example"] = samples[0][0]
    return out


def train_run(seed: int, arm: str, run_dir: Path, overrides: list[str]) -> dict:
    """One GRPO run in its own process (its wall and CPU time are what a table row costs)."""
    started, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if not (run_dir / "eval.json").exists():
        cmd = [
            sys.executable,
            "-c",
            "from tokalign.cli import main; main()",
            "train",
            "experiment=d3s_toy",
            f"+arm={arm}",
            f"seed={seed}",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    acc = [r["train/accuracy"] for r in steps if "train/accuracy" in r]
    return {
        "eval.json": {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/pass@")},
        "train_accuracy_first5": statistics.fmean(acc[:5]) if acc else None,
        "train_accuracy_last5": statistics.fmean(acc[-5:]) if acc else None,
        "train_s": summary.get("train/wall_s"),
        "process_s": round(time.time() - started, 1),
        "process_cpu_s": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
    }


def task_constants() -> dict:
    from tokalign.data import toy_math
    from tokalign.modeling import models

    names = [n for n in dir(toy_math) if n.isupper() and not n.startswith("_")]
    out = {n: getattr(toy_math, n) for n in names if isinstance(getattr(toy_math, n), (int, float, str, tuple))}
    out["warm_start"] = {n: getattr(models, n) for n in dir(models) if n.startswith("WARM_") or n == "TINY_BUILD"}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arm", default="baseline/grpo", help="a row of the D³S toy table (its +arm= values)")
    p.add_argument("--min-lift", type=float, default=0.15)
    p.add_argument("--start-only", action="store_true", help="measure the starting policy only")
    p.add_argument("--label", default="", help="what this measurement tries (stored with it)")
    p.add_argument("--out-dir", default=str(ROOT / "outputs" / "toy_math_lift"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokalign.modeling.models import resolve_model

    overrides = ["logger=none", *args.overrides]
    cfg0 = compose(["experiment=d3s_toy", f"+arm={args.arm}", *overrides])
    record = {
        "label": args.label,
        "arm": args.arm,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "task": task_constants(),
        "tiny": dict(cfg0.model.tiny),
        "overrides": args.overrides,
        "settings": {
            "lr": cfg0.trainer.learning_rate,
            "steps": cfg0.trainer.max_steps,
            "batch": cfg0.trainer.per_device_batch_size,
            "G": cfg0.method.num_generations,
            "max_completion_length": cfg0.method.max_completion_length,
            "loss_type": cfg0.method.loss_type,
            "eval": {
                "num_prompts": cfg0.eval.num_prompts,
                "num_samples": cfg0.eval.num_samples,
                "temperature": cfg0.eval.temperature,
                "max_new_tokens": cfg0.eval.max_new_tokens,
            },
        },
        "seeds": {},
    }
    tag = time.strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        cfg = compose(["experiment=d3s_toy", f"+arm={args.arm}", f"seed={seed}", *overrides])
        started, cpu = time.time(), time.process_time()
        path = resolve_model(cfg.model, cfg.cache_dir)
        row = {
            "build_s": round(time.time() - started, 1),
            "build_cpu_s": round(time.process_time() - cpu, 1),
            "start": policy_figures(cfg, path),
        }
        if not args.start_only:
            run_dir = Path(args.out_dir) / f"{tag}_{args.arm.replace('/', '_')}_s{seed}"
            row["run"] = train_run(seed, args.arm, run_dir, overrides)
            row["trained"] = policy_figures(cfg, str(run_dir / "model"))
            row["lift"] = row["trained"]["pass@1"] - row["start"]["pass@1"]
        record["seeds"][str(seed)] = row
        print(seed, json.dumps(row), flush=True)
    rows = record["seeds"].values()
    record["start_pass@1_mean"] = statistics.fmean(r["start"]["pass@1"] for r in rows)
    if not args.start_only:
        record["lift_mean"] = statistics.fmean(r["lift"] for r in rows)
        record["seeds_passing"] = sum(r["lift"] >= args.min_lift for r in rows)
    append_record(RESULTS, record)
    print(json.dumps({k: v for k, v in record.items() if k not in ("seeds", "task")}, default=str))


if __name__ == "__main__":
    main()
