"""Benchmark: D³S-GRPO vs GRPO training phase on the same generations, in one process.

Every step generates and scores one batch with TRL's GRPO code, then times on that same batch
  grpo:   compute_loss + backward over all G·prompts rows;
  d3s:    selection (max-variance subset, rows removed), then compute_loss + backward over the
          kept rows, in which the |A|·H token mask is chosen from the training forward's entropies.
Reports medians over the measured steps, the d3s/grpo ratio of the training phase (loss +
backward, and with the selection cost added) and of the whole step (generation included), and
trained (loss-weighted) tokens per step, with the machine's load average at the start and end.
Writes scripts/results/bench_d3s[_<model>].json.

    python scripts/bench/bench_d3s.py --threads 1            # tiny model
    python scripts/bench/bench_d3s.py --model smollm2_135m   # SmolLM2-135M (converted on first use)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_model_path(name: str, cache_dir: str) -> str:
    from omegaconf import OmegaConf

    from tokalign.config import ModelConfig
    from tokalign.modeling.models import resolve_model

    cfg = OmegaConf.structured(ModelConfig)  # the default model is the tiny one; others are presets
    if name != "tiny":
        cfg = OmegaConf.merge(cfg, OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
    return resolve_model(cfg, cache_dir)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="samples kept per group")
    p.add_argument("--k", type=float, default=0.2, help="token keep ratio")
    p.add_argument("--max-completion-length", type=int, default=24)
    p.add_argument("--steps", type=int, default=6, help="measured steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loss-type", default="dapo")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 avoids oversubscription on a shared CPU)"
    )
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from tokalign.data.toy_math import rows as toy_rows
    from tokalign.methods.d3s_grpo.trainer import D3SGRPOTrainer
    from tokalign.modeling.models import load_causal_lm, load_tokenizer
    from tokalign.rewards import exact_match

    cache = os.environ.get("TOKALIGN_CACHE", os.path.expanduser("~/.cache/tokalign"))
    path = load_model_path(a.model, cache)
    G = a.group_size
    problems = [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
        for r in toy_rows(a.prompts * (a.steps + a.warmup), seed=0)
    ]
    data = datasets.Dataset.from_list(problems)

    def make(cls, **kwargs):
        args = GRPOConfig(
            output_dir="/tmp/bench_d3s",
            per_device_train_batch_size=G * a.prompts,
            num_generations=G,
            max_completion_length=a.max_completion_length,
            steps_per_generation=1,
            max_steps=a.steps + a.warmup,
            loss_type=a.loss_type,
            report_to="none",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        t = cls(
            model=load_causal_lm(path),
            reward_funcs=[exact_match],
            args=args,
            train_dataset=data,
            processing_class=load_tokenizer(path),
            **kwargs,
        )
        t.model.train()
        t.current_gradient_accumulation_steps = 1
        return t

    grpo = make(GRPOTrainer)
    d3s = make(D3SGRPOTrainer, n_init=a.n, n_final=a.n, k_init=a.k, k_final=a.k, schedule="constant")

    def train_phase(trainer, batch):
        trainer.model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        trainer.compute_loss(trainer.model, batch).backward()
        return time.perf_counter() - start

    load_start = os.getloadavg()
    rows = []
    for step in range(a.steps + a.warmup):
        inputs = [problems[step * a.prompts + i] for i in range(a.prompts) for _ in range(G)]
        start = time.perf_counter()
        batch = GRPOTrainer._generate_and_score_completions(grpo, inputs)
        gen = time.perf_counter() - start
        start = time.perf_counter()
        selected, _, d3s_tokens = d3s.down_sample(dict(batch))
        select = time.perf_counter() - start
        order = [("grpo", grpo, batch), ("d3s", d3s, selected)]
        times = {name: train_phase(t, b) for name, t, b in (order if step % 2 else order[::-1])}
        if step >= a.warmup:
            rows.append(
                dict(
                    gen=gen,
                    grpo=times["grpo"],
                    d3s=times["d3s"],
                    select=select,
                    grpo_rows=batch["completion_ids"].size(0),
                    d3s_rows=selected["completion_ids"].size(0),
                    grpo_tokens=int(batch["num_items_in_batch"]),
                    d3s_tokens=d3s_tokens,
                )
            )

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "model": a.model,
        "group_size": G,
        "prompts": a.prompts,
        "n": a.n,
        "k": a.k,
        "loss_type": a.loss_type,
        "steps": len(rows),
        "median": med,
        "train_phase_ratio": med["d3s"] / med["grpo"],
        "train_phase_with_selection_ratio": (med["d3s"] + med["select"]) / med["grpo"],
        "whole_step_ratio": (med["gen"] + med["select"] + med["d3s"]) / (med["gen"] + med["grpo"]),
        "trained_tokens_ratio": med["d3s_tokens"] / med["grpo_tokens"],
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": {"start": load_start[0], "end": os.getloadavg()[0], "cpus": os.cpu_count()},
    }
    print(
        f"D³S vs GRPO, model={a.model}, G={G}, {a.prompts} prompts/step, N/G={a.n / G:.2f}, K={a.k}, median of {len(rows)} steps"
    )
    print(f"{'phase':34s} {'grpo':>10s} {'d3s':>10s} {'ratio':>7s}")
    table = [
        ("training (loss + backward) s", med["grpo"], med["d3s"]),
        ("  + selection s", med["grpo"], med["d3s"] + med["select"]),
        ("whole step (generation incl.) s", med["gen"] + med["grpo"], med["gen"] + med["select"] + med["d3s"]),
        ("rows in the training forward", med["grpo_rows"], med["d3s_rows"]),
        ("trained tokens per step", med["grpo_tokens"], med["d3s_tokens"]),
    ]
    for name, g, d in table:
        print(f"{name:34s} {g:10.4g} {d:10.4g} {d / g:7.3f}")
    print(f"load average (1 min) {load_start[0]:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    out = (
        Path(a.out)
        if a.out
        else ROOT / "scripts" / "results" / f"bench_d3s{'' if a.model == 'tiny' else '_' + a.model}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
