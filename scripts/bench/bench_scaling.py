"""Data-parallel scaling on this machine: DPO steps/s with 1 vs 2 processes, under DDP and DeepSpeed ZeRO-2.

Strong scaling: the global batch stays the same (1 x B vs 2 x B/2), so the two runs do the same
work and reach the same losses (tests/runtime/test_launch_distributed.py); only the wall time per step
differs. Steps/s comes from the HF Trainer's train_runtime (excludes start-up and evaluation).
Every run goes through `tokalign train ... launcher=...`, as a user types it.

Every process gets `--threads` torch threads (the launchers give each worker one), so
1 process uses `threads` cores and 2 processes use 2 x `threads`.

    python scripts/bench/bench_scaling.py [--reps 3] [--steps 30] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAUNCHERS = {"ddp": ["launcher=ddp"], "zero2": ["launcher=deepspeed", "launcher.zero_stage=2"]}


def steps_per_s(run_dir: Path, steps: int) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    runtime = next(r["train/train_runtime"] for r in rows if "train/train_runtime" in r)
    return steps / runtime


def run(root: Path, name: str, steps: int, batch: int, procs: int, launcher: list[str]) -> float:
    run_dir = root / name
    cmd = [
        sys.executable,
        "-m",
        "tokalign.cli",
        "train",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "method=dpo",
        f"trainer.max_steps={steps}",
        f"trainer.logging_steps={steps}",
        f"trainer.per_device_batch_size={batch // procs}",
        "eval.at_end=false",
        f"launcher.num_gpus={procs}",
        *launcher,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    return steps_per_s(run_dir, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="global batch (pairs per step)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TOKALIGN_CACHE", str(Path.home() / ".cache" / "tokalign"))
    results: dict[str, dict[int, list[float]]] = {k: {1: [], 2: []} for k in LAUNCHERS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):  # interleaved, so load drifts hit every arm alike
            for name, launcher in LAUNCHERS.items():
                for procs in (1, 2):
                    results[name][procs].append(
                        run(Path(tmp), f"{name}-{procs}-{rep}", args.steps, args.batch, procs, launcher)
                    )
    table = {}
    print(
        f"DPO, tiny model, global batch {args.batch}, {args.steps} steps, median of {args.reps} (cores: {os.cpu_count()})"
    )
    print(f"{'launcher':10} {'1 proc steps/s':>15} {'2 procs steps/s':>16} {'speed-up':>9}")
    for name, by_procs in results.items():
        one, two = statistics.median(by_procs[1]), statistics.median(by_procs[2])
        table[name] = {
            "steps_per_s_1": round(one, 3),
            "steps_per_s_2": round(two, 3),
            "speedup": round(two / one, 3),
            "runs_1": by_procs[1],
            "runs_2": by_procs[2],
        }
        print(f"{name:10} {one:15.2f} {two:16.2f} {two / one:9.2f}")
    out = Path(__file__).resolve().parents[1] / "results" / "bench_scaling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "results": table}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
