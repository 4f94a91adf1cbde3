"""What the method benchmarks share: fresh-process rounds, step timing, peak memory, summaries.

A benchmark names its variants and a `child(variant, **options) -> dict` that builds one trainer
in a fresh process and returns `measure(trainer, ...)`. `main` runs every (round, variant) in a
fresh subprocess, variants interleaved round by round so that load from other processes hits
them alike, then writes the per-run results (to `results`, or the path `results(**options)` names) and a
summary with ratios against baselines, and prints each variant's step-time ratio to the first baseline.
Step time: median interval between consecutive optimizer-step ends (collation included), the
first WARMUP steps dropped. Memory: peak resident set size (RSS, /proc/self/statm sampled every
2 ms by a thread) during the training steps, also above the process's RSS before any model was
loaded; on CUDA, also torch.cuda.max_memory_allocated. Setup: trainer construction time, which
holds any one-off precompute; a benchmark can time such work itself (`once` keys of `main`).
`measure_run` measures the trainer a method's own `train(run)` builds from a composed config, so
that a benchmark of a method times the trainer `tokalign train` would run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

WARMUP = 2
# "bench": a ~3.4M-parameter Llama on the tiny tokenizer, large enough that weights, not the
# Python runtime, dominate memory; "tiny": the project's default model.
SIZES = {
    "bench": dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, warmup_steps=0),
    "tiny": {},
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS in a thread; `stop()` returns the peak since the last reset."""

    def __init__(self, every_s: float = 0.002):
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every_s)

    def reset(self):
        self.peak = rss_bytes()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_bytes())


def bench_model(size: str, vocab: int | None = None) -> str:
    """Path of the benchmark model (`SIZES[size]`); `vocab` resizes its output layer (random new rows)."""
    from omegaconf import OmegaConf

    from tokalign.config import ModelConfig
    from tokalign.modeling.models import load_causal_lm, load_tokenizer, resolve_model

    model_cfg = OmegaConf.structured(ModelConfig)
    model_cfg.tiny = OmegaConf.merge(model_cfg.tiny, SIZES[size])
    path = resolve_model(model_cfg, os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    if vocab is None:
        return path
    wide = Path(os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign")).expanduser() / "bench" / f"{size}-v{vocab}"
    if not (wide / "config.json").exists():
        import torch

        torch.manual_seed(0)
        model = load_causal_lm(path)
        model.resize_token_embeddings(vocab, mean_resizing=False)
        model.save_pretrained(wide)
        load_tokenizer(path).save_pretrained(wide)
    return str(wide)


def measure(trainer, base_rss: int, started: float, **extra) -> dict:
    """Train, timing each optimizer step and sampling peak RSS; `started`: when trainer construction began."""
    import torch
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    setup_s = time.perf_counter() - started
    timer = StepTimes()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss = PeakRSS()
    trainer.train()
    peak = rss.stop()
    return {
        "step_s": [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP - 1 :],
        "setup_s": setup_s,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak / 2**20,
        "peak_rss_above_base_mb": (peak - base_rss) / 2**20,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        **extra,
    }


def measure_run(
    cfg,
    *,
    binds: tuple[str, ...] = ("tokalign.bases.trl",),
    about: Callable[..., dict] | None = None,
    **extra,
) -> dict:
    """`measure` of the trainer that `tokalign train` builds for the composed config `cfg`: the run is set
    up as `tokalign.runtime.run` sets it up and its method's `train(run)` runs with `measure` in place of
    `run_trainer` (so without the run's callbacks, checkpoints or final save). `binds`: the modules whose
    `run_trainer` the method calls (a module that imported the name holds its own binding);
    `about(trainer)`: more keys for the result, read after training."""
    from unittest import mock

    from transformers import set_seed

    from tokalign.runtime.run import Run

    set_seed(cfg.seed)
    base = rss_bytes()
    started = time.perf_counter()
    run = Run(cfg)
    result: dict = {}

    def measured(run, trainer) -> dict:
        result.update(measure(trainer, base, started, **extra), **(about(trainer) if about else {}))
        return {}

    with contextlib.ExitStack() as stack:
        for name in binds:
            stack.enter_context(mock.patch.object(importlib.import_module(name), "run_trainer", measured))
        run.method.train(run)
    return result


def main(
    script: str,
    variants: tuple[str, ...],
    child: Callable[..., dict],
    results: Path | Callable[..., Path],
    *,
    baselines: tuple[str, ...],
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    once: tuple[str, ...] = (),
    medians: tuple[str, ...] = (),
    description: str = "",
) -> None:
    """`once`: keys of a child's result that time one-off work (None where a variant has none),
    summarised like setup: the first round (cold cache) and the median of the later ones. `medians`:
    keys of a child's result (e.g. tokens per step) summarised by their median over rounds, with
    ratios against the baselines like step time. `options(parser)` may add options and change defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", choices=sorted(SIZES), default="bench")
    p.add_argument("--child", choices=variants, help=argparse.SUPPRESS)
    if options:
        options(p)
    a = p.parse_args()
    settings = {k: v for k, v in vars(a).items() if k not in ("rounds", "child")}
    if a.child:
        print("RESULT " + json.dumps(child(a.child, **settings)))
        return

    runs: dict[str, list[dict]] = {v: [] for v in variants}
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    flags = [f"--{k}={v}" for k, v in settings.items() if v is not None and not isinstance(v, bool)]
    flags += [f"--{k}" for k, v in settings.items() if v is True]
    for r in range(a.rounds):
        for v in variants:
            out = subprocess.run(
                [sys.executable, script, "--child", v, *flags], capture_output=True, text=True, env=env
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
            runs[v].append(json.loads(line[len("RESULT ") :]))
            print(f"round {r} {v}: median step {statistics.median(runs[v][-1]['step_s']) * 1e3:.1f} ms", flush=True)

    keys = ("median_step_ms", "peak_rss_mb", "peak_rss_above_base_mb", "cuda_peak_mb", *medians)
    summary = {}
    for v, rs in runs.items():
        summary[v] = {
            "median_step_ms": statistics.median(t for x in rs for t in x["step_s"]) * 1e3,
            "median_step_ms_per_round": [statistics.median(x["step_s"]) * 1e3 for x in rs],
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
            "peak_rss_above_base_mb": statistics.median(x["peak_rss_above_base_mb"] for x in rs),
            "cuda_peak_mb": rs[0]["cuda_peak_mb"] and statistics.median(x["cuda_peak_mb"] for x in rs),
            "setup_s_first": rs[0]["setup_s"],
            "setup_s_later": statistics.median(x["setup_s"] for x in rs[1:]) if len(rs) > 1 else None,
        }
        for k in medians:
            summary[v][k] = statistics.median(x[k] for x in rs)
        for k in once:
            summary[v][f"{k}_first"] = rs[0][k]
            summary[v][f"{k}_later"] = (
                statistics.median(x[k] for x in rs[1:]) if len(rs) > 1 and rs[0][k] is not None else None
            )
    for v in variants:
        for base in baselines:
            for k in keys:
                if summary[v][k] is not None and summary[base][k]:
                    summary[v][f"{k}/{base}"] = summary[v][k] / summary[base][k]

    cols = (
        "median_step_ms",
        *(f"median_step_ms/{b}" for b in baselines),
        "peak_rss_mb",
        "peak_rss_above_base_mb",
        *(f"peak_rss_above_base_mb/{b}" for b in baselines),
        "setup_s_first",
        "setup_s_later",
        *(f"{k}_{when}" for k in once for when in ("first", "later")),
        *medians,
    )
    print("\n| variant | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for v in variants:
        cells = [summary[v].get(c) for c in cols]
        print(f"| {v} | " + " | ".join("-" if c is None else f"{c:.3g}" for c in cells) + " |")
    first = runs[variants[0]][0]
    meta = {
        **settings,
        "rounds": a.rounds,
        "timed_steps_per_run": a.steps - WARMUP,
        "params_m": first["params_m"],
        "cpu_count": os.cpu_count(),
        "torch_threads": first["torch_threads"],
        "load_avg": os.getloadavg(),
    }
    results = results(**settings) if callable(results) else results
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    print(f"\n{meta}\nwrote {results}")
    base = baselines[0]
    for v in variants:
        if v != base:
            print(
                f"{v} / {base}: {summary[v][f'median_step_ms/{base}']:.3f}x per step "
                f"({summary[v]['median_step_ms']:.0f} vs {summary[base]['median_step_ms']:.0f} ms, "
                f"median of {a.rounds} rounds x {a.steps - WARMUP} steps)"
            )
