"""Time per iteration (rollout + update) and peak memory of RTO against PPO at the same knobs.

    python scripts/bench/bench_rto.py [--rounds 3 --steps 8 --batch 16 --length 32]

One setup for both: the tiny model (saved with ``min_new_tokens = max_new_tokens`` so every
response has the same length), one reward model (the tiny backbone with a scalar head) that
also initialises the critic, toy_pref prompts, one PPO epoch and minibatch, RTO's PPO knobs
(KL 0.01, score clip 10, temperature 1, no top-k) on both sides. RTO's DPO model is the policy with
Gaussian noise on its weights, so its dense rewards are non-zero and some are clipped (the
clip fraction is reported). The ppo and rto trainers are set up side by side in this process
and alternate iteration by iteration (load drift on a shared machine hits both alike); the
first iteration is a warm-up and dropped. Peak memory: a whole run of each method in its own
process (``ru_maxrss``), alternating, median over rounds. RTO's extra work is one forward of
the DPO model per rollout. JSON goes to scripts/results/bench_rto.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: shared CPUs make OpenMP spin-waits erratic
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]

from bench_ppo import alternate, compose_overrides, iteration_medians, prepare_models  # noqa: E402  (the PPO benchmark's models and loop)

SHARED = ["method.kl_coef=0.01", "method.score_clip=10", "method.temperature=1.0", "method.top_k=0"]


def prepare_dpo_model(work: Path, policy: Path, noise: float) -> Path:
    """The policy with N(0, noise²) added to every weight: a stand-in DPO model with the policy's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(policy)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    out = work / "dpo_model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(policy).save_pretrained(out)
    return out


def overrides(method: str, out: Path, policy: Path, rm: Path, dpo: Path, args, steps: int) -> list[str]:
    extra = [f"method.dpo_model={dpo}"] if method == "rto" else SHARED
    return [
        f"method={method}",
        f"model.path={policy}",
        f"method.reward=model:{rm}",
        *extra,
        f"method.max_new_tokens={args.length}",
        f"trainer.per_device_batch_size={args.batch}",
        f"trainer.max_steps={steps}",
        "trainer.logging_steps=1",
        "logger=none",
        "eval.at_end=false",
        f"output_dir={out}",
        f"trainer.max_length={args.length + 64}",
    ]


def paired_iterations(work: Path, policy: Path, rm: Path, dpo: Path, args) -> dict[str, list[dict]]:
    """ppo and rto trainers side by side (bench_ppo.alternate): their iteration rows."""
    from transformers import set_seed

    from tokalign.bases.ppo import loop as ppo_loop
    from tokalign.methods.rto.loop import frozen_models, rto_rewards
    from tokalign.runtime.run import Run

    steps = args.rounds * args.steps
    trainers = {}
    for method in ("ppo", "rto"):
        cfg = compose_overrides(overrides(method, work / f"paired-{method}", policy, rm, dpo, args, steps))
        Path(cfg.output_dir).mkdir(parents=True)
        set_seed(0)
        run = Run(cfg)
        extra = dict(frozen_extra=frozen_models(run), token_rewards=rto_rewards) if method == "rto" else {}
        trainers[method] = ppo_loop.setup(run, **extra)
    return alternate(trainers, steps)


def memory_run(items: list[str]) -> None:
    """One whole run, in a process of its own (`peak_rss_mb`)."""
    from tokalign.runtime.run import run_training

    run_training(compose_overrides(items))


# Runs `argv` and prints the largest resident set among it and its descendants. A small process of
# its own: a child's peak RSS counts the pages it shares with its parent at fork, so measuring from
# the benchmark itself (hundreds of MB) would add the benchmark's size to every figure.
_MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of the largest process of `cmd` (MiB); raises if it fails."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return int(proc.stdout.strip().splitlines()[-1]) / 1024  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="PPO iterations per round and trainer")
    p.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    p.add_argument("--length", type=int, default=32, help="generated tokens per response")
    p.add_argument("--noise", type=float, default=0.02, help="std of the noise that makes the DPO model")
    p.add_argument("--memory-rounds", type=int, default=3)
    p.add_argument("--cache", default=os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    p.add_argument("--memory-run", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_run:
        memory_run(json.loads(args.memory_run))
        return

    with tempfile.TemporaryDirectory(prefix="bench_rto-") as tmp:
        work = Path(tmp)
        policy, rm = prepare_models(work, args.cache, args.length)
        dpo = prepare_dpo_model(work, policy, args.noise)
        rows = paired_iterations(work, policy, rm, dpo, args)
        memory: dict[str, list[float]] = {"ppo": [], "rto": []}
        for r in range(args.memory_rounds):
            for method in ("ppo", "rto") if r % 2 == 0 else ("rto", "ppo"):
                items = overrides(method, work / f"memory-{method}-{r}", policy, rm, dpo, args, 3)
                memory[method].append(peak_rss_mb([sys.executable, __file__, "--memory-run", json.dumps(items)]))

    times, med, part = iteration_medians(rows)
    result = {
        "setup": {
            "model": "tiny",
            "batch": args.batch,
            "response_tokens": args.length,
            "rounds": args.rounds,
            "iterations": len(times["ppo"]),
            "ppo_epochs": 1,
            "mini_batches": 1,
            "dpo_noise": args.noise,
            "threads": os.environ["OMP_NUM_THREADS"],
        },
        "median_s_per_iteration": med,
        "median_parts_s": part,
        "rto_over_ppo": med["rto"] / med["ppo"],
        "rto_over_ppo_paired": statistics.median(a / b for a, b in zip(times["rto"], times["ppo"])),
        "rto_dpo_clipfrac": statistics.mean(r["rto/dpo_clipfrac"] for r in rows["rto"]),
        "rto_dpo_reward": statistics.mean(r["rto/dpo_reward"] for r in rows["rto"]),
        "peak_rss_mb": {m: statistics.median(v) for m, v in memory.items()},
        "peak_rss_mb_runs": memory,
        "iterations_s": times,
    }
    print(f"{'':26s}{'median s/iter':>14s}{'rollout':>10s}{'update':>10s}{'peak RSS MB':>13s}")
    for m in ("ppo", "rto"):
        print(
            f"{m:26s}{med[m]:14.3f}{part[m]['rollout_s']:10.3f}{part[m]['update_s']:10.3f}"
            f"{result['peak_rss_mb'][m]:13.0f}"
        )
    print(f"{'rto / ppo':26s}{result['rto_over_ppo']:14.3f}   (target <= 1.15)")
    print(f"{'  median of paired ratios':26s}{result['rto_over_ppo_paired']:14.3f}")
    print(f"{'dense reward clip fraction':26s}{result['rto_dpo_clipfrac']:14.3f}")
    out = ROOT / "scripts" / "results" / "bench_rto.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
