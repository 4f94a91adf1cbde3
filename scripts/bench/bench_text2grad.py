"""Time per iteration (rollout + critique + update) of Text2Grad against PPO at the same knobs.

    python scripts/bench/bench_text2grad.py [--rounds 3 --steps 20 --batch 16 --length 32]

One setup for both (bench_ppo.prepare_models): the tiny model (saved with ``min_new_tokens =
max_new_tokens`` so every response has the same length), one reward model (the tiny backbone with a
scalar head) that also initialises the critic, toy_pref prompts, one PPO epoch and minibatch, and
PPO's KL coefficient (0.05) on both sides (Text2Grad's own defaults, 0.2 and 4 epochs, would time
different work). Text2Grad's critic is the toy task's oracle (toy_pref.critique): per rollout it
reads every response, its good and poor spans become token labels (character offsets to tokens),
and the labels with the KL penalty are the per-token reward; the scalar score is still computed
(score_coef 0) as PPO's is. A generative critic's generation is not timed here: it scales with the
critic model, not with this method. Each side is set up as its method's `train(run)` sets up the
PPO loop (its hooks read by `loop_hooks`); the two trainers alternate iteration by iteration in
this process (bench_ppo.alternate: load drift on a shared machine hits both alike), the first
iteration a warm-up and dropped. The critique runs inside the rollout stage (the loop's train
mask and token rewards), so rollout_s holds it. JSON goes to scripts/results/bench_text2grad.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench_ppo import alternate, compose_config, iteration_medians, prepare_models

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("method.kl_coef=0.05", "method.num_ppo_epochs=1", "method.temperature=1.0")


def loop_hooks(run) -> dict:
    """The keyword arguments the run's method passes to the PPO loop (`tokalign.bases.ppo.loop.fit`)."""
    from unittest import mock

    from tokalign.bases.ppo import loop as ppo_loop

    hooks: dict = {}
    with mock.patch.object(ppo_loop, "fit", lambda run, **kw: hooks.update(kw)):
        run.method.train(run)
    return hooks


def paired_iterations(work: Path, policy: Path, rm: Path, args) -> dict[str, list[dict]]:
    """ppo and text2grad trainers side by side (bench_ppo.alternate): their iteration rows."""
    from transformers import set_seed

    from tokalign.bases.ppo import loop as ppo_loop
    from tokalign.runtime.run import Run

    steps = args.rounds * args.steps
    trainers = {}
    for method in ("ppo", "text2grad"):
        cfg = compose_config(method, work / f"paired-{method}", policy, rm, args, steps, SHARED)
        Path(cfg.output_dir).mkdir(parents=True)
        set_seed(0)
        run = Run(cfg)
        trainers[method] = ppo_loop.setup(run, **loop_hooks(run))
    return alternate(trainers, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="PPO iterations per round and trainer")
    p.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    p.add_argument("--length", type=int, default=32, help="generated tokens per response")
    p.add_argument("--cache", default=os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_text2grad-") as tmp:
        work = Path(tmp)
        policy, rm = prepare_models(work, args.cache, args.length)
        rows = paired_iterations(work, policy, rm, args)

    times, med, part = iteration_medians(rows)
    labels = ("text2grad/positive_share", "text2grad/negative_share", "text2grad/dropped_rows")
    result = {
        "setup": {
            "model": "tiny",
            "batch": args.batch,
            "response_tokens": args.length,
            "rounds": args.rounds,
            "iterations": len(times["ppo"]),
            "ppo_epochs": 1,
            "mini_batches": 1,
            "critic": "toy_pref.critique (oracle)",
            "threads": os.environ["OMP_NUM_THREADS"],
            "load_avg": os.getloadavg(),
        },
        "median_s_per_iteration": med,
        "median_parts_s": part,
        "text2grad_over_ppo": med["text2grad"] / med["ppo"],
        "text2grad_over_ppo_paired": statistics.median(a / b for a, b in zip(times["text2grad"], times["ppo"])),
        "text2grad_labels": {k: statistics.mean(r[k] for r in rows["text2grad"]) for k in labels},
        "iterations_s": times,
    }
    print(f"{'':26s}{'median s/iter':>14s}{'rollout':>10s}{'update':>10s}")
    for m in ("ppo", "text2grad"):
        print(f"{m:26s}{med[m]:14.3f}{part[m]['rollout_s']:10.3f}{part[m]['update_s']:10.3f}")
    print(f"{'  median of paired ratios':26s}{result['text2grad_over_ppo_paired']:14.3f}")
    out = ROOT / "scripts" / "results" / "bench_text2grad.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    print(
        f"text2grad / ppo: {result['text2grad_over_ppo']:.3f}x per iteration ({med['text2grad']:.3f} vs "
        f"{med['ppo']:.3f} s, median of {len(times['ppo'])} alternating iterations)"
    )


if __name__ == "__main__":
    main()
