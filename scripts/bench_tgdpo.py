"""Cost of a TGDPO step against DPO: median time per optimizer step and peak memory, one run.

Variants, same model, data, batch and steps:
  dpo             TRL DPOTrainer, policy + reference forward every step (TRL's default)
  dpo_precompute  TRL DPOTrainer with precompute_ref_log_probs=True (reference sums once)
  tgdpo           TGDPOTrainer, reference + guidance per-token log-probs precomputed (policy only per step)
  tgdpo_online    TGDPOTrainer without precompute (policy, reference and guidance every step)

Every (round, variant) runs in a fresh subprocess, variants interleaved round by round so that
load from other processes hits them alike. Step time: median interval between consecutive
optimizer-step ends (data collation included), the first WARMUP steps dropped. Memory: peak
resident set size (RSS, /proc/self/statm sampled every 2 ms by a thread) during the training
steps, also shown above the process's RSS before any model was loaded; on CUDA, also
torch.cuda.max_memory_allocated. Setup: trainer construction time, which holds the one-off
precompute; the precompute itself is timed too (tgdpo: cold = empty cache in round 0, warm =
cache hit afterwards; TRL's dpo_precompute recomputes in every fresh process).

    python scripts/bench_tgdpo.py [--rounds 3] [--steps 12] [--batch 8] [--size bench|tiny]

Writes scripts/results/bench_tgdpo.json and prints a table. Not a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VARIANTS = ("dpo", "dpo_precompute", "tgdpo", "tgdpo_online")
WARMUP = 2
# "bench": a ~3.4M-parameter Llama on the tiny tokenizer, large enough that weights, not the
# Python runtime, dominate memory; "tiny": the project's default model.
SIZES = {
    "bench": dict(hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, warmup_steps=0),
    "tiny": {},
}
RESULTS = Path(__file__).parent / "results" / "bench_tgdpo.json"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples this process's RSS in a thread; `window()` returns the peak since the last reset."""

    def __init__(self, every_s: float = 0.002):
        self.peak, self.every_s, self._stop = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every_s)

    def reset(self):
        self.peak = _rss_bytes()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_bytes())


def child(variant: str, size: str, steps: int, batch: int, cache: str) -> dict:
    import torch
    from omegaconf import OmegaConf
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tokalign.config import DatasetConfig, ModelConfig
    from tokalign.data.loading import load_split
    from tokalign.models import load_causal_lm, load_tokenizer, resolve_model
    from tokalign.methods.tgdpo.trainer import TGDPOTrainer

    model_cfg = OmegaConf.structured(ModelConfig)
    model_cfg.tiny = OmegaConf.merge(model_cfg.tiny, SIZES[size])
    path = resolve_model(model_cfg, os.environ.get("TOKALIGN_CACHE", "~/.cache/tokalign"))
    data = load_split(OmegaConf.structured(DatasetConfig(num_train=max(256, steps * batch))), "preference")
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    rss = PeakRSS()
    base = _rss_bytes()
    precompute = variant in ("dpo_precompute", "tgdpo")
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps, max_length=128,
        learning_rate=1e-5, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
        logging_steps=steps, precompute_ref_log_probs=precompute, seed=0, disable_tqdm=True,
    )
    cls = DPOTrainer if variant.startswith("dpo") else TGDPOTrainer
    precompute_s, original = [], cls._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        t = time.perf_counter()
        out = original(self, *a, **kw)
        precompute_s.append(time.perf_counter() - t)
        return out

    cls._precompute_ref_logps = timed_precompute
    started = time.perf_counter()
    common = dict(args=args, train_dataset=data, processing_class=tokenizer)
    ref = None if precompute else load_causal_lm(path)
    if variant.startswith("dpo"):
        trainer = DPOTrainer(model=load_causal_lm(path), ref_model=ref, **common)
    else:
        trainer = TGDPOTrainer(model=load_causal_lm(path), ref_model=ref, guidance_model=load_causal_lm(path),
                               alpha=0.5, token_cache_dir=cache, **common)
    setup_s = time.perf_counter() - started
    timer = StepTimes()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss.reset()
    trainer.train()
    peak = rss.stop()
    intervals = [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP - 1:]
    return {
        "variant": variant,
        "step_s": intervals,
        "setup_s": setup_s,
        "precompute_s": sum(precompute_s) if precompute else None,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak / 2**20,
        "peak_rss_above_base_mb": (peak - base) / 2**20,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", choices=sorted(SIZES), default="bench")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a.size, a.steps, a.batch, a.cache)))
        return

    cache = tempfile.mkdtemp(prefix="bench-tgdpo-cache-")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    for r in range(a.rounds):
        for v in VARIANTS:
            cmd = [sys.executable, __file__, "--child", v, "--size", a.size, "--steps", str(a.steps),
                   "--batch", str(a.batch), "--cache", cache]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
            runs[v].append(json.loads(line[len("RESULT "):]))
            print(f"round {r} {v}: median step {statistics.median(runs[v][-1]['step_s']) * 1e3:.1f} ms", flush=True)

    summary = {}
    for v, rs in runs.items():
        summary[v] = {
            "median_step_ms": statistics.median(t for x in rs for t in x["step_s"]) * 1e3,
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
            "peak_rss_above_base_mb": statistics.median(x["peak_rss_above_base_mb"] for x in rs),
            "cuda_peak_mb": rs[0]["cuda_peak_mb"] and statistics.median(x["cuda_peak_mb"] for x in rs),
            "setup_s_first": rs[0]["setup_s"],
            "setup_s_later": statistics.median(x["setup_s"] for x in rs[1:]) if len(rs) > 1 else None,
            "precompute_s_first": rs[0]["precompute_s"],
            "precompute_s_later": statistics.median(x["precompute_s"] for x in rs[1:]) if len(rs) > 1 and rs[0]["precompute_s"] is not None else None,
        }
    for v in VARIANTS:
        for base in ("dpo", "dpo_precompute"):
            for k in ("median_step_ms", "peak_rss_mb", "peak_rss_above_base_mb", "cuda_peak_mb"):
                if summary[v][k] is not None and summary[base][k]:
                    summary[v][f"{k}/{base}"] = summary[v][k] / summary[base][k]

    cols = ("median_step_ms", "median_step_ms/dpo", "median_step_ms/dpo_precompute", "peak_rss_mb",
            "peak_rss_mb/dpo", "peak_rss_above_base_mb", "peak_rss_above_base_mb/dpo",
            "peak_rss_above_base_mb/dpo_precompute", "precompute_s_first", "precompute_s_later")
    print("\n| variant | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for v in VARIANTS:
        cells = [summary[v].get(c) for c in cols]
        print(f"| {v} | " + " | ".join("-" if c is None else f"{c:.3g}" for c in cells) + " |")
    meta = {"rounds": a.rounds, "steps": a.steps, "timed_steps_per_run": a.steps - WARMUP, "batch": a.batch,
            "size": a.size, "params_m": runs["dpo"][0]["params_m"], "cpu_count": os.cpu_count(),
            "torch_threads": runs["dpo"][0]["torch_threads"],
            "load_avg": os.getloadavg()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    print(f"\n{meta}\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
