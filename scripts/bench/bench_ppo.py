"""Time per PPO iteration (rollout + update): ma_ppo (fixed n=5) vs ppo, and tokalign's ppo vs TRL 1.12's.

    python scripts/bench/bench_ppo.py [--trl-python /tmp/trl112/bin/python] [--rounds 3 --steps 6]

All sides share one setup: the tiny model (saved with ``min_new_tokens = max_new_tokens`` so
every response has the same length, as TRL's PPOTrainer forces), one reward model (the tiny
backbone with a scalar head) that also initialises the critic, toy_pref prompts, the same
rollout batch, one PPO epoch and one minibatch. tokalign's ppo and ma_ppo trainers are set
up side by side in this process and alternate iteration by iteration (so load drift on a
shared machine hits both alike). TRL 1.12 (``trl.experimental.ppo``, the last release with a
PPO trainer) runs in a separate environment through ``scripts/bench/trl_ppo_baseline.py`` in a
subprocess, alternating round by round with whole ``method=ppo`` runs of the same length.
The first iteration of every run is a warm-up and dropped.
Reported: median seconds per iteration and the ratios ma_ppo/ppo and tokalign/TRL, plus the
macro-action bookkeeping alone (segmentation + GAE, n=5 vs n=1) as a share of an iteration.
JSON goes to scripts/results/bench_ppo.json.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: shared CPUs make OpenMP spin-waits erratic
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]


def prepare_models(work: Path, cache: str, length: int, source: str | None = None) -> tuple[Path, Path]:
    """The policy (`source`; default: the tiny model) forced to generate ``length`` tokens, and a reward
    model on its backbone."""
    import torch
    from omegaconf import OmegaConf
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from tokalign.config import ModelConfig
    from tokalign.modeling.models import resolve_model

    source = source or resolve_model(OmegaConf.structured(ModelConfig), cache)
    tokenizer = AutoTokenizer.from_pretrained(source)
    policy, rm = work / "policy", work / "reward_model"
    model = AutoModelForCausalLM.from_pretrained(source)
    model.generation_config.min_new_tokens = length
    model.save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    return policy, rm


def compose_overrides(items: list[str]):
    """The validated, resolved config `tokalign train <items>` would run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tokalign.app.compose import register, validate
    from tokalign.cli import conf_dir

    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=items)
    cfg = validate(cfg)
    OmegaConf.resolve(cfg)
    return cfg


def compose_config(method: str, out: Path, policy: Path, rm: Path, args, steps: int, extra: tuple[str, ...] = ()):
    """A PPO-loop run of `method` on the prepared models, with `extra` overrides last."""
    return compose_overrides(
        [
            f"method={method}",
            f"model.path={policy}",
            f"method.reward=model:{rm}",
            "method.top_k=0",
            f"method.max_new_tokens={args.length}",
            f"trainer.per_device_batch_size={args.batch}",
            f"trainer.max_steps={steps}",
            "trainer.logging_steps=1",
            "logger=none",
            "eval.at_end=false",
            f"output_dir={out}",
            f"trainer.max_length={args.length + 64}",
            *extra,
        ]
    )


def iteration_medians(rows: dict[str, list[dict]]) -> tuple[dict, dict, dict]:
    """Per method, from `alternate`'s rows: iteration times (rollout + update), their median, each stage's median."""
    times = {m: [r["rollout_s"] + r["update_s"] for r in v] for m, v in rows.items()}
    med = {m: statistics.median(v) for m, v in times.items()}
    part = {m: {k: statistics.median(r[k] for r in v) for k in ("rollout_s", "update_s")} for m, v in rows.items()}
    return times, med, part


def alternate(trainers: dict, steps: int) -> dict[str, list[dict]]:
    """Each trainer's iteration rows, the trainers alternating iteration by iteration so that load hits
    them alike (who goes first swaps every step); the first iteration, a warm-up, is dropped."""
    from tokalign.bases.ppo import loop as ppo_loop

    first, second = trainers
    rows: dict[str, list[dict]] = {m: [] for m in trainers}
    for step in range(steps):
        for method in (first, second) if step % 2 == 0 else (second, first):
            row = ppo_loop.iteration(trainers[method], step)
            if step > 0:
                rows[method].append(row)
    return rows


def paired_iterations(work: Path, policy: Path, rm: Path, args) -> dict[str, list[float]]:
    """ppo and ma_ppo trainers side by side (`alternate`): seconds per iteration."""
    from transformers import set_seed

    from tokalign.bases.ppo import loop as ppo_loop
    from tokalign.runtime.run import Run

    trainers = {}
    for method in ("ppo", "ma_ppo"):
        cfg = compose_config(method, work / f"paired-{method}", policy, rm, args, args.rounds * args.steps)
        Path(cfg.output_dir).mkdir(parents=True)
        set_seed(0)
        trainers[method] = ppo_loop.setup(Run(cfg))
    rows = alternate(trainers, args.rounds * args.steps)
    return {m: [r["rollout_s"] + r["update_s"] for r in v] for m, v in rows.items()}


def tokalign_run(out: Path, policy: Path, rm: Path, args) -> list[float]:
    """Seconds per iteration (rollout + update) of one whole `method=ppo` run, warm-up dropped."""
    from tokalign.artifacts.tracking import read_metrics
    from tokalign.runtime.run import run_training

    run_training(compose_config("ppo", out, policy, rm, args, args.steps))
    rows = [r for r in read_metrics(out) if "train/rollout_s" in r]
    return [r["train/rollout_s"] + r["train/update_s"] for r in rows[1:]]


def trl_run(python: str, out: Path, policy: Path, rm: Path, args) -> list[float]:
    cmd = [
        python,
        str(Path(__file__).parent / "trl_ppo_baseline.py"),
        "--policy",
        str(policy),
        "--reward-model",
        str(rm),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--steps",
        str(args.steps),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        raise RuntimeError(f"TRL 1.12 PPO failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "iterations.json").read_text())[1:]


def bookkeeping_seconds(args, reps: int = 50) -> dict[str, float]:
    """Segmentation + macro GAE + whitening on rollout-shaped tensors, n=5 vs n=1 (median seconds)."""
    import torch

    from tokalign.bases.ppo import config as ppo
    from tokalign.bases.ppo.advantages import advantages_and_returns, segments
    from tokalign.losses import kl_penalty_rewards

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.length)
    mask = torch.ones(shape, dtype=torch.long)
    old, ref = -torch.rand(shape, generator=g), -torch.rand(shape, generator=g)
    values, scores = torch.randn(shape, generator=g), torch.randn(args.batch, generator=g)
    out = {}
    for name, cfg in (
        ("ppo", ppo.Config(max_new_tokens=args.length)),
        ("ma_ppo", ppo.Config(name="ma_ppo", n=5, max_new_tokens=args.length)),
    ):
        times = []
        for _ in range(reps):
            tick = time.perf_counter()
            rewards = kl_penalty_rewards(old, ref, mask, scores, kl_coef=cfg.kl_coef)
            ids = segments(cfg, mask, ref, None, None, seed=0)
            advantages_and_returns(cfg, rewards, values, mask, ids)
            times.append(time.perf_counter() - tick)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    default_trl = "/tmp/trl112/bin/python"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--trl-python",
        default=os.environ.get("TRL112_PYTHON", default_trl if Path(default_trl).exists() else ""),
        help="python of an environment with trl==1.12.0 ('' skips the TRL comparison)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="PPO iterations per run (the first is a warm-up)")
    p.add_argument("--batch", type=int, default=16, help="prompts per rollout")
    p.add_argument("--length", type=int, default=32, help="generated tokens per response")
    p.add_argument("--cache", default=os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    args = p.parse_args()

    trl_error = None if args.trl_python else "no --trl-python given"
    with tempfile.TemporaryDirectory(prefix="bench_ppo-") as tmp:
        work = Path(tmp)
        policy, rm = prepare_models(work, args.cache, args.length)
        times = paired_iterations(work, policy, rm, args)
        vs_trl: dict[str, list[list[float]]] = {"tokalign_ppo_run": [], "trl_ppo_run": []}
        for r in range(args.rounds if trl_error is None else 0):
            try:
                trl = trl_run(args.trl_python, work / f"trl-{r}", policy, rm, args)
            except RuntimeError as err:
                trl_error = str(err)
                print(trl_error, file=sys.stderr)
                break
            vs_trl["trl_ppo_run"].append(trl)
            vs_trl["tokalign_ppo_run"].append(tokalign_run(work / f"ppo-{r}", policy, rm, args))
    for key, runs in vs_trl.items():
        if runs:
            times[key] = [x for run in runs for x in run]
    med = {k: statistics.median(v) for k, v in times.items() if v}
    book = bookkeeping_seconds(args)
    result = {
        "setup": {
            "model": "tiny",
            "batch": args.batch,
            "response_tokens": args.length,
            "rounds": args.rounds,
            "iterations_per_run": args.steps - 1,
            "ppo_epochs": 1,
            "mini_batches": 1,
            "threads": os.environ["OMP_NUM_THREADS"],
        },
        "median_s_per_iteration": med,
        "iterations": times,
        "ma_ppo_over_ppo": med["ma_ppo"] / med["ppo"],
        "ma_ppo_over_ppo_paired": statistics.median(a / b for a, b in zip(times["ma_ppo"], times["ppo"])),
        "bookkeeping_s": book,
        "bookkeeping_extra_share": (book["ma_ppo"] - book["ppo"]) / med["ppo"],
    }
    if "trl_ppo_run" in med:
        per_round = [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(vs_trl["tokalign_ppo_run"], vs_trl["trl_ppo_run"])
        ]
        result["tokalign_ppo_over_trl_ppo"] = med["tokalign_ppo_run"] / med["trl_ppo_run"]
        result["tokalign_ppo_over_trl_ppo_per_round"] = per_round
    if trl_error:
        result["trl_error"] = trl_error
    print(f"{'':28s}{'median s/iter':>14s}")
    for k, v in med.items():
        print(f"{k:28s}{v:14.3f}")
    print(f"{'ma_ppo / ppo':28s}{result['ma_ppo_over_ppo']:14.3f}   (target <= 1.05)")
    print(f"{'  median of paired ratios':28s}{result['ma_ppo_over_ppo_paired']:14.3f}")
    print(f"{'bookkeeping n=5 vs n=1':28s}{result['bookkeeping_extra_share']:14.2%}   of a ppo iteration")
    if "tokalign_ppo_over_trl_ppo" in result:
        print(f"{'tokalign ppo / TRL 1.12 ppo':28s}{result['tokalign_ppo_over_trl_ppo']:14.3f}   (target <= 1.0)")
    out = ROOT / "scripts" / "results" / "bench_ppo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
