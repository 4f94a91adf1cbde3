"""GPU check: the paths that decide speed at paper scale, measured on one GPU in minutes, offline.

    scripts/gpu/gpu_check.sh                     # on a machine with no network (installs .whl first)
    python scripts/gpu/gpu_check.py             # Llama-3.2-1B shape, random weights, bf16, on cuda:0
    python scripts/gpu/gpu_check.py --tiny --out /tmp/gpu_check   # toy shapes on CPU

The model is built from a Llama-3.2-1B-shaped config (16 layers, hidden 2048, MLP 8192, 32 query
and 8 key/value heads, vocabulary 128256, tied embeddings) with random weights; the tokenizer is
the tiny model's, trained locally, with its vocabulary filled up to 128256 ids so that every
sampled id decodes. Nothing is downloaded. Sections, most telling first (a failing one is
recorded, the rest run; once --budget seconds are spent the rest are skipped; the JSON and
Markdown are rewritten after every section, so a run cut off still leaves its figures):

  zero_estimate    DeepSpeed's own ZeRO-2/3 model-state memory estimate for Llama-3-8B on 8 GPUs
                   (its estimator over the parameter counts of the config; nothing allocated).
  dpo, tgdpo, treg optimizer steps in bf16 (weights and autocast, as the paper presets' dtype:
                   bfloat16): policy forward + backward, frozen reference (TGDPO: and guidance)
                   forwards, tokalign.losses.dpo_loss / tgdpo_loss / treg_loss (T-REG's token
                   rewards are precomputed per dataset: none in the step), AdamW. Tokens/s, MFU,
                   peak memory.
  generate_hf      transformers' generate at batch 1, 16 and 64: generated tokens/s.
  ppo, ma_ppo      one iteration of `tokalign train method=ppo | ma_ppo` (rollout.engine=hf):
                   rollout and update seconds.
  grpo, d3s        two steps of `tokalign train method=grpo | d3s_grpo` (rollout.engine=hf):
                   the second step's time.
  vllm             generate_vllm, ppo_vllm, d3s_vllm, where vLLM runs (one line where not).

Ratios TGDPO/DPO, T-REG/DPO (step time), MA-PPO/PPO (iteration) and D³S/GRPO (step) come with them.

FLOPs follow PaLM's MFU convention (Chowdhery et al., 2022, app. B): a forward pass costs
2 FLOPs per weight per token over the transformer body, 2·d·V per position whose logits are
computed (the response positions: the loss needs no others), and 4·L·d·T per token for the
attention scores and values at sequence length T (no causal discount); a training step's
backward costs twice its forward. MFU = the step's FLOPs (policy forward + backward, frozen
forwards) / step time / the GPU's dense bf16 peak (table below, or --peak-tflops).

Writes <out>/gpu_check.json and <out>/gpu_check.md (out: scripts/results, or --out); a full
run also puts the table into docs/gpu.md (--doc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched on the device name in order.
PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0)]


@dataclass
class Shape:
    """Model and batch sizes of one check."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    pairs: int  # DPO pairs per step
    prompt: int  # prompt tokens (DPO and generation)
    response: int  # response tokens (DPO) and new tokens (generation)
    generate_batches: tuple[int, ...]  # sequences per `generate` call
    prompts: int  # GRPO prompts per step (vLLM: per rollout batch)
    group: int  # G completions per prompt
    ppo_batch: int  # PPO prompts per iteration
    steps: int  # measured optimizer steps
    warmup: int


LLAMA_1B = Shape(
    hidden=2048,
    intermediate=8192,
    layers=16,
    heads=32,
    kv_heads=8,
    vocab=128256,
    pairs=8,
    prompt=256,
    response=256,
    generate_batches=(1, 16, 64),
    prompts=16,
    group=8,
    ppo_batch=16,
    steps=5,
    warmup=2,
)
TINY = Shape(
    hidden=64,
    intermediate=192,
    layers=2,
    heads=4,
    kv_heads=4,
    vocab=512,
    pairs=2,
    prompt=12,
    response=8,
    generate_batches=(1, 2, 4),
    prompts=2,
    group=4,
    ppo_batch=2,
    steps=2,
    warmup=1,
)
# Llama-3-8B (Meta's config.json): what DeepSpeed's estimator is asked about, on one node of 8 GPUs.
LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)
ZERO_GPUS = 8


def forward_flops(s: Shape, sequences: int, length: int, logit_positions: int) -> float:
    """PaLM-convention FLOPs of one forward over `sequences` × `length` tokens (see the module docstring)."""
    d, head_dim = s.hidden, s.hidden // s.heads
    body = s.layers * (2 * d * d + 2 * d * s.kv_heads * head_dim + 3 * d * s.intermediate)
    per_token = 2 * body + 4 * s.layers * d * length
    return sequences * (length * per_token + logit_positions * 2 * d * s.vocab)


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device == "cpu":
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)


def sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def timed(fn, device: str, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_gib(device: str) -> float | None:
    """Peak allocated GPU memory since the last `free` (None on CPU)."""
    return None if device == "cpu" else torch.cuda.max_memory_allocated() / 2**30


# ---------------------------------------------------------------------------------------------
# The model and tokenizer


def build_tokenizer(vocab: int, cache_dir: str):
    """The tiny model's tokenizer with its BPE vocabulary filled up to `vocab` ids (no merges reach them)."""
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from tokalign.config import ModelConfig
    from tokalign.modeling.models import load_tokenizer, resolve_model

    base = load_tokenizer(resolve_model(OmegaConf.structured(ModelConfig), cache_dir))
    data = json.loads(base.backend_tokenizer.to_str())
    table, i = data["model"]["vocab"], 0
    while len(table) < vocab:
        if f"x{i}x" not in table:
            table[f"x{i}x"] = len(table)
        i += 1
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = base.chat_template
    return tok


def build_model(s: Shape, tokenizer, device: str, dtype: torch.dtype, path: Path):
    """A Llama-shaped model with random weights on `device`, saved with the tokenizer to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


# ---------------------------------------------------------------------------------------------
# Sections


def zero_estimate() -> dict:
    """DeepSpeed's ZeRO-2/3 model-state estimates (bytes per GPU and per node's CPU) for Llama-3-8B."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA3_8B))
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())  # as DeepSpeed counts
    gib = 2**30
    rows = {}
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, ZERO_GPUS, 1, cpu_offload=offload)
        rows[f"zero2{'_offload_optimizer' if offload else ''}"] = {"gpu_gib": gpu / gib, "cpu_gib": cpu / gib}
    for name, offload, params in (
        ("zero3", False, False),
        ("zero3_offload_optimizer", True, False),
        ("zero3_offload_all", True, True),
    ):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, ZERO_GPUS, 1, cpu_offload=offload, cpu_offload_params=params
        )
        rows[name] = {"gpu_gib": gpu / gib, "cpu_gib": cpu / gib}
    return {
        "model": "Llama-3-8B",
        "gpus": ZERO_GPUS,
        "params": total,
        "largest_layer_params": largest,
        "estimates": rows,
    }


def preference_steps(model, s: Shape, device: str, dtype: torch.dtype, peak: float | None, kind: str) -> dict:
    """DPO, TGDPO or T-REG optimizer steps: tokens/s, MFU and peak memory."""
    import copy

    from tokalign.bases.ppo.models import response_logits, token_logps
    from tokalign.losses import dpo_loss, tgdpo_loss, treg_loss

    frozen = [copy.deepcopy(model).requires_grad_(False).eval() for _ in range(2 if kind == "tgdpo" else 1)]
    policy = model.train()
    rows, length = 2 * s.pairs, s.prompt + s.response
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, s.vocab, (rows, length), generator=gen).to(device)
    token_rewards = (torch.rand(rows, s.response, generator=gen) - 0.5).to(device)  # T-REG's, precomputed
    attention = torch.ones_like(ids)
    mask = torch.ones(s.pairs, s.response, device=device)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    autocast = torch.autocast("cuda", dtype=dtype) if device != "cpu" else contextlib.nullcontext()

    def logps(m):
        return token_logps(response_logits(m, ids, attention, None, s.response), ids[:, -s.response :], 1.0)

    def step():
        with autocast:
            pol = logps(policy)
            with torch.no_grad():
                ref, *guide = [logps(m) for m in frozen]
            halves = [pol[: s.pairs], pol[s.pairs :], ref[: s.pairs], ref[s.pairs :]]
            if kind == "tgdpo":
                loss, _ = tgdpo_loss(*halves, guide[0][: s.pairs], guide[0][s.pairs :], mask, mask, beta=0.1, alpha=1.0)
            elif kind == "treg":
                loss, _ = treg_loss(
                    *halves, token_rewards[: s.pairs], token_rewards[s.pairs :], mask, mask, beta=0.1, alpha=0.5
                )
            else:
                loss, _ = dpo_loss(*halves, mask, mask, beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = timed(step, device, s.warmup, s.steps)
    seconds = statistics.median(times)
    one = forward_flops(s, rows, length, s.response)
    flops = 3 * one + len(frozen) * one
    frozen.clear()  # free the frozen copies before the next section
    opt = None
    return {
        "step_s": seconds,
        "steps": len(times),
        "sequences_per_step": rows,
        "sequence_length": length,
        "policy_tokens_per_s": rows * length / seconds,
        "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": None if peak is None else flops / seconds / peak,
        "peak_memory_gib": peak_memory_gib(device),
    }


def generate_hf(model, tokenizer, s: Shape, device: str) -> dict:
    """transformers' generate at each batch size: generated tokens/s (the response's tokens up to EOS)."""
    from tokalign.bases.ppo.rollout import response_mask

    model.eval()
    ids = torch.randint(3, 500, (max(s.generate_batches), s.prompt), generator=torch.Generator().manual_seed(1)).to(
        device
    )

    def run(batch, new_tokens):
        out = model.generate(
            input_ids=ids[:batch],
            attention_mask=torch.ones_like(ids[:batch]),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        return int(response_mask(out[:, s.prompt :], tokenizer.eos_token_id).sum())

    run(1, 4)
    batches = {}
    for batch in s.generate_batches:
        sync(device)
        start = time.perf_counter()
        tokens = run(batch, s.response)
        sync(device)
        seconds = time.perf_counter() - start
        batches[str(batch)] = {"generated_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
    return {
        "prompt": s.prompt,
        "max_new_tokens": s.response,
        "batches": batches,
        "peak_memory_gib": peak_memory_gib(device),
    }


def generate_vllm(model_path: Path, s: Shape) -> dict:
    """A GRPO-shaped batch with tokalign's standalone vLLM engine: generated tokens/s (start-up apart)."""
    from omegaconf import OmegaConf

    from tokalign.config import RolloutConfig
    from tokalign.modeling.vllm_engine import VLLMEngine

    rollout = OmegaConf.structured(RolloutConfig(engine="vllm", gpu_memory_utilization=0.5))
    start = time.perf_counter()
    engine = VLLMEngine.start(
        str(model_path), rollout, colocated=False, seed=0, dtype="bfloat16", max_model_len=s.prompt + s.response
    )
    startup = time.perf_counter() - start
    prompts = torch.randint(3, 500, (s.prompts, s.prompt), generator=torch.Generator().manual_seed(1)).tolist()
    try:
        engine.sample(prompts[:1], max_new_tokens=4)
        start = time.perf_counter()
        tokens = sum(map(len, engine.sample(prompts, n=s.group, max_new_tokens=s.response, seed=0)))
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    return {
        "sequences": s.prompts * s.group,
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "engine_startup_s": startup,
    }


def cli_run(name: str, args: list[str], work: Path, timeout: float) -> Path:
    """`tokalign train <args>` in its own process (as a user starts it); its run directory."""
    run_dir = work / name
    env = dict(os.environ, TOKALIGN_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [
        sys.executable,
        "-m",
        "tokalign.cli",
        "train",
        f"hydra.run.dir={run_dir}",
        "logger=none",
        "eval.at_end=false",
        *args,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip() and "%|" not in line]
        raised = [line for line in lines if re.match(r"\w+(Error|Exception)\b", line)]  # a traceback's last line
        raise RuntimeError((raised or lines or [f"exit status {done.returncode}"])[-1])
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def precision(tiny: bool) -> list[str]:
    return (
        ["model.dtype=float32", "trainer.precision=fp32"]
        if tiny
        else ["model.dtype=bfloat16", "trainer.precision=bf16"]
    )


def ppo_iteration(model_path: Path, s: Shape, method: str, engine: str, work: Path, tiny: bool, timeout: float) -> dict:
    """One PPO (or MA-PPO) iteration through the CLI: rollout and update seconds and tokens/s from its metrics."""
    start = time.perf_counter()
    run_dir = cli_run(
        f"{method}_{engine}",
        [
            f"method={method}",
            f"model.path={model_path}",
            *precision(tiny),
            "trainer.max_steps=1",
            f"trainer.per_device_batch_size={s.ppo_batch}",
            f"method.max_new_tokens={s.response}",
            f"trainer.max_length={s.prompt + s.response + 64}",
            f"rollout.engine={engine}",
        ],
        work,
        timeout,
    )
    wall = time.perf_counter() - start
    row = [r for r in metrics(run_dir) if "train/rollout_s" in r][-1]
    keys = ("rollout_s", "update_s", "rollout_tokens_per_s", "train_tokens_per_s", "response_length")
    return {k: row[f"train/{k}"] for k in keys} | {
        "iteration_s": row["train/rollout_s"] + row["train/update_s"],
        "process_wall_s": wall,
    }


def grpo_steps(model_path: Path, s: Shape, method: str, engine: str, work: Path, tiny: bool, timeout: float) -> dict:
    """Two GRPO (or D³S) steps through the CLI on toy_math: the second step's time, what D³S kept."""
    # D³S keeps N of G samples per group, moving from G/2 to 3G/4 (its defaults 4 → 6 at G = 8)
    keep = [f"method.n_init={s.group // 2}", f"method.n_final={s.group * 3 // 4}"] if method == "d3s_grpo" else []
    start = time.perf_counter()
    run_dir = cli_run(
        f"{method}_{engine}",
        [
            f"method={method}",
            "dataset=toy_math",
            f"model.path={model_path}",
            *precision(tiny),
            "trainer.max_steps=2",
            "trainer.logging_steps=1",
            f"trainer.per_device_batch_size={s.prompts * s.group}",
            f"method.num_generations={s.group}",
            f"method.max_completion_length={s.response}",
            f"rollout.engine={engine}",
            *keep,
        ],
        work,
        timeout,
    )
    steps = [r for r in metrics(run_dir) if "train/usage/kept_samples" in r]
    return {
        "steps": len(steps),
        "step_s": steps[-1]["train/step_time"],
        "process_wall_s": time.perf_counter() - start,
        "kept_samples": [r["train/usage/kept_samples"] for r in steps],
        "kept_tokens": [r["train/usage/kept_tokens"] for r in steps],
    }


# ---------------------------------------------------------------------------------------------
# Driver

# (ratio, numerator section, denominator section, figure)
RATIOS = [
    ("tgdpo/dpo", "tgdpo", "dpo", "step_s"),
    ("treg/dpo", "treg", "dpo", "step_s"),
    ("ma_ppo/ppo", "ma_ppo", "ppo", "iteration_s"),
    ("d3s/grpo", "d3s", "grpo", "step_s"),
]


def ratios(sections: dict) -> dict:
    """Time ratios of each method to its baseline, from the same run (None where either failed)."""

    def figure(name, key):
        sec = sections.get(name, {})
        return sec.get(key) if sec.get("status") == "ok" else None

    out = {}
    for name, num, den, key in RATIOS:
        a, b = figure(num, key), figure(den, key)
        out[name] = a / b if a is not None and b else None
    return out


def run_section(results: dict, name: str, fn, *, skip: str | None = None) -> None:
    start = time.perf_counter()
    if skip:
        results[name] = {"status": "skipped", "reason": skip}
    else:
        try:
            results[name] = {"status": "ok", **fn()}
        except Exception as err:  # noqa: BLE001 - every section reports, the others still run
            traceback.print_exc()
            results[name] = {
                "status": "error",
                "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            }
    results[name]["section_s"] = round(time.perf_counter() - start, 1)
    print(f"gpu-check: {name}: {results[name]['status']} ({results[name]['section_s']} s)", flush=True)


def free(device: str) -> None:
    import gc

    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def figures(name: str, sec: dict) -> str:
    """One table cell: a section's figures."""
    memory = f", peak {fmt(sec['peak_memory_gib'])} GiB" if sec.get("peak_memory_gib") is not None else ""
    if name == "zero_estimate":
        return (
            f"{sec['model']} ({sec['params'] / 1e9:.2f} B params) on {sec['gpus']} GPUs, per GPU / per node's CPU: "
            + "; ".join(f"{k} {v['gpu_gib']:.1f} / {v['cpu_gib']:.0f} GiB" for k, v in sec["estimates"].items())
        )
    if name in ("dpo", "tgdpo", "treg"):
        return (
            f"{fmt(sec['step_s'])} s/step, {fmt(sec['policy_tokens_per_s'])} policy tokens/s, "
            f"{fmt(sec['achieved_tflops'])} TFLOP/s, MFU {fmt(sec['mfu'])}{memory}"
        )
    if name == "generate_hf":
        return "; ".join(f"batch {b}: {fmt(r['tokens_per_s'])} tokens/s" for b, r in sec["batches"].items()) + memory
    if name == "generate_vllm":
        return (
            f"{sec['generated_tokens']} tokens in {fmt(sec['seconds'])} s: {fmt(sec['tokens_per_s'])} tokens/s "
            f"(engine start-up {fmt(sec['engine_startup_s'])} s)"
        )
    if "rollout_s" in sec:
        return (
            f"rollout {fmt(sec['rollout_s'])} s ({fmt(sec['rollout_tokens_per_s'])} tokens/s), update "
            f"{fmt(sec['update_s'])} s ({fmt(sec['train_tokens_per_s'])} tokens/s), process {fmt(sec['process_wall_s'])} s"
        )
    return (
        f"step {fmt(sec['step_s'])} s, kept samples {sec['kept_samples']}, kept tokens {sec['kept_tokens']}, "
        f"process {fmt(sec['process_wall_s'])} s"
    )


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"`scripts/gpu/gpu_check.py{' --tiny' if report['tiny'] else ''}` on {env['device']} "
        f"(Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, TRL {env['trl']}, "
        f"DeepSpeed {env['deepspeed']}, vLLM {env['vllm'] or 'absent'}), {report['total_s']:.0f} s"
        f"{'' if report['finished'] else ' so far (cut off)'}.",
        "",
        "| section | status | figures |",
        "|---|---|---|",
    ]
    for name, sec in report["sections"].items():
        cell = figures(name, sec) if sec["status"] == "ok" else sec.get("reason", "")
        lines.append(f"| {name} | {sec['status']} | {cell} |")
    lines += ["", "Time ratios: " + ", ".join(f"{k} {fmt(v)}" for k, v in report["ratios"].items()) + "."]
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict) -> str:
    """The report as JSON and Markdown, each replaced whole (a reader never sees half a file)."""
    report["ratios"] = ratios(report["sections"])
    table = markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=2)), ("gpu_check.md", table)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy shapes on CPU: keeps the check working")
    p.add_argument("--out", default=None, help="where gpu_check.json and gpu_check.md go (default scripts/results)")
    p.add_argument(
        "--doc", default=None, help="Markdown file whose gpu-check block gets the table (full run: docs/gpu.md)"
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    p.add_argument(
        "--budget", type=float, default=420, help="seconds of measuring; sections not started by then are skipped"
    )
    p.add_argument("--timeout", type=int, default=240, help="seconds for each `tokalign train` section at most")
    a = p.parse_args(argv)

    from tokalign.modeling.vllm_engine import unavailable_reason

    tiny = a.tiny
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU here; `python scripts/gpu/gpu_check.py --tiny` runs the toy version on CPU",
            file=sys.stderr,
        )
        return 2
    s, dtype = (TINY, torch.float32) if tiny else (LLAMA_1B, torch.bfloat16)
    out = Path(a.out) if a.out else ROOT / "scripts" / "results"
    doc = Path(a.doc) if a.doc else (None if tiny else ROOT / "docs" / "gpu.md")
    no_vllm = unavailable_reason() or ("--tiny runs on CPU" if tiny else None)
    peak = peak_flops(device, a.peak_tflops)
    started = time.perf_counter()
    deadline = started + a.budget
    sections: dict = {}
    report = {
        "tiny": tiny,
        "finished": False,
        "total_s": 0.0,
        "budget_s": a.budget,
        "sections": sections,
        "environment": {
            "device": "CPU" if device == "cpu" else torch.cuda.get_device_name(),
            "peak_tflops": peak and peak / 1e12,
            "python": platform.python_version(),
            "torch": torch.__version__,
            **{name: _version(name) for name in ("transformers", "accelerate", "trl", "deepspeed", "vllm")},
        },
    }

    def section(name, fn, skip=None):
        left = deadline - time.perf_counter()
        run_section(
            sections,
            name,
            lambda: fn(min(a.timeout, left)),
            skip=skip or (None if left > 0 else f"budget of {a.budget:.0f} s spent"),
        )
        free(device)
        report["total_s"] = time.perf_counter() - started
        write(out, report)

    with tempfile.TemporaryDirectory(prefix="tokalign-gpu-check-") as tmp:
        work = Path(tmp)
        section("zero_estimate", lambda _: zero_estimate())
        cache = os.environ.get("TOKALIGN_CACHE", os.path.expanduser("~/.cache/tokalign"))
        tokenizer = build_tokenizer(s.vocab, cache)
        s = replace(s, vocab=max(s.vocab, len(tokenizer)))  # the tiny tokenizer may outgrow TINY
        report["shape"] = asdict(s)
        model_path = work / "model"
        model = build_model(s, tokenizer, device, dtype, model_path)
        for kind in ("dpo", "tgdpo", "treg"):
            section(kind, lambda _, kind=kind: preference_steps(model, s, device, dtype, peak, kind))
        section("generate_hf", lambda _: generate_hf(model, tokenizer, s, device))
        model = None  # free the policy before the PPO sections
        free(device)
        for method in ("ppo", "ma_ppo"):
            section(method, lambda left, m=method: ppo_iteration(model_path, s, m, "hf", work, tiny, left))
        for name, method in (("grpo", "grpo"), ("d3s", "d3s_grpo")):
            section(name, lambda left, m=method: grpo_steps(model_path, s, m, "hf", work, tiny, left))
        if no_vllm:
            section("vllm", None, skip=f"not available: {no_vllm}")
        else:
            section("generate_vllm", lambda _: generate_vllm(model_path, s))
            section("ppo_vllm", lambda left: ppo_iteration(model_path, s, "ppo", "vllm", work, tiny, left))
            section("d3s_vllm", lambda left: grpo_steps(model_path, s, "d3s_grpo", "vllm", work, tiny, left))
    report["finished"] = True
    report["total_s"] = time.perf_counter() - started
    table = write(out, report)
    if doc is not None:
        from tokalign.analysis.table import replace_marked_block

        replace_marked_block(doc, "gpu-check", table)
    print(table)
    return 1 if any(sec["status"] == "error" for sec in sections.values()) else 0


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
