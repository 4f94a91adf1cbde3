"""The PPO loop on 2 processes under DeepSpeed ZeRO-2 and ZeRO-3 against 1 process: time per iteration, peak memory.

    python scripts/bench/bench_ppo_zero.py [--reps 3] [--steps 6] [--batch 16] [--length 32]

Strong scaling: the global batch stays the same (1 x B against 2 x B/2), so the runs do the same
work (tests/bases/ppo/test_deepspeed.py: same losses); only the wall time differs. The
setup is scripts/bench/bench_ppo.py's (the tiny policy forced to generate `length` tokens, a reward
model on its backbone that also initialises the critic). Every run goes through
`tokalign train ... launcher=...` as a user types it, one torch thread per process, the three
set-ups alternating rep by rep. Seconds per iteration: rollout + update as the loop logs them
(the mean over ranks), the first iteration dropped, median over all reps' iterations. Peak
memory: the largest process's resident set (`ru_maxrss` over the run's processes, workers included).
JSON goes to scripts/results/bench_ppo_zero.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]

from bench_ppo import prepare_models  # noqa: E402  (the same policy and reward model as the PPO benchmark)
from bench_rto import peak_rss_mb  # noqa: E402

SETUPS = {
    "1 process": (1, []),
    "2 processes ZeRO-2": (2, ["launcher=deepspeed", "launcher.num_gpus=2", "launcher.zero_stage=2"]),
    "2 processes ZeRO-3": (2, ["launcher=deepspeed", "launcher.num_gpus=2", "launcher.zero_stage=3"]),
}


def run(run_dir: Path, policy: Path, rm: Path, procs: int, launcher: list[str], args) -> tuple[list[float], float]:
    cmd = [
        sys.executable,
        "-m",
        "tokalign.cli",
        "train",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "method=ppo",
        f"model.path={policy}",
        f"method.reward=model:{rm}",
        "method.top_k=0",
        f"method.max_new_tokens={args.length}",
        f"trainer.max_length={args.length + 64}",
        f"trainer.max_steps={args.steps}",
        "trainer.logging_steps=1",
        f"trainer.per_device_batch_size={args.batch // procs}",
        "eval.at_end=false",
        *launcher,
    ]
    rss = peak_rss_mb(cmd)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["train/rollout_s"] + r["train/update_s"] for r in rows if "train/rollout_s" in r]
    return seconds[1:], rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="PPO iterations per run (the first is a warm-up)")
    p.add_argument("--batch", type=int, default=16, help="prompts per iteration, over all processes")
    p.add_argument("--length", type=int, default=32, help="generated tokens per response")
    p.add_argument("--cache", default=os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    args = p.parse_args()

    seconds: dict[str, list[float]] = {name: [] for name in SETUPS}
    memory: dict[str, list[float]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory(prefix="bench_ppo_zero-") as tmp:
        work = Path(tmp)
        policy, rm = prepare_models(work, args.cache, args.length)
        for rep in range(args.reps):
            order = list(SETUPS) if rep % 2 == 0 else list(reversed(SETUPS))
            for i, name in enumerate(order):
                procs, launcher = SETUPS[name]
                times, rss = run(work / f"{rep}-{i}", policy, rm, procs, launcher, args)
                seconds[name] += times
                memory[name].append(rss)
    med = {name: statistics.median(v) for name, v in seconds.items()}
    result = {
        "setup": {
            "model": "tiny",
            "global_batch": args.batch,
            "response_tokens": args.length,
            "reps": args.reps,
            "iterations_per_run": args.steps - 1,
            "threads_per_process": 1,
        },
        "median_s_per_iteration": med,
        "over_one_process": {name: med[name] / med["1 process"] for name in SETUPS},
        "peak_rss_mb_largest_process": {name: statistics.median(v) for name, v in memory.items()},
        "iterations_s": seconds,
    }
    print(f"{'':22s}{'median s/iter':>14s}{'vs 1 process':>14s}{'peak RSS MB':>13s}")
    for name in SETUPS:
        print(
            f"{name:22s}{med[name]:14.3f}{result['over_one_process'][name]:14.2f}"
            f"{result['peak_rss_mb_largest_process'][name]:13.0f}"
        )
    out = ROOT / "scripts" / "results" / "bench_ppo_zero.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
