"""GPU check: the paths that decide speed at paper scale, measured on one GPU in minutes, offline.

    make gpu-check                             # Llama-3.2-1B shape, random weights, bf16, on cuda:0
    python scripts/gpu_check.py --tiny --out /tmp/gpu_check   # toy shapes on CPU, seconds

The model is built from a Llama-3.2-1B-shaped config (16 layers, hidden 2048, MLP 8192, 32 query
and 8 key/value heads, vocabulary 128256, tied embeddings) with random weights; the tokenizer is
the tiny model's, trained locally, with its vocabulary filled up to 128256 ids so that every
sampled id decodes. Nothing is downloaded. Sections (a failing one is recorded, the rest run):

  dpo, tgdpo      optimizer steps in bf16 (weights and autocast, as the paper presets' dtype:
                  bfloat16): policy forward + backward, frozen reference (TGDPO: and guidance)
                  forwards, tokalign.losses.dpo_loss / tgdpo_loss, AdamW. Tokens/s and MFU.
  generate_hf     one GRPO-shaped rollout batch (prompts × G completions) with transformers'
  generate_vllm   generate and with tokalign's vLLM engine: generated tokens/s (vLLM: engine
                  start-up apart; skipped with its reason where vLLM cannot run).
  ppo_hf          one iteration of `tokalign train method=ppo` on the model with
  ppo_vllm        rollout.engine=hf | vllm (colocated engine, weights pushed after the update).
  d3s_vllm        two D³S steps through TRL's vLLM integration (rollout.engine=vllm).

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

ROOT = Path(__file__).resolve().parents[1]

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
    prompts: int  # GRPO prompts per rollout batch
    group: int  # G completions per prompt
    ppo_batch: int  # PPO prompts per iteration
    steps: int  # measured optimizer steps
    warmup: int


LLAMA_1B = Shape(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, vocab=128256, pairs=8, prompt=256,
                 response=256, prompts=16, group=8, ppo_batch=16, steps=5, warmup=2)
TINY = Shape(hidden=64, intermediate=192, layers=2, heads=4, kv_heads=4, vocab=512, pairs=2, prompt=12, response=8,
             prompts=2, group=4, ppo_batch=2, steps=2, warmup=1)


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
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=base.eos_token,
                                  pad_token=base.pad_token, additional_special_tokens=["<|im_start|>"])
    tok.chat_template = base.chat_template
    return tok


def build_model(s: Shape, tokenizer, device: str, dtype: torch.dtype, path: Path):
    """A Llama-shaped model with random weights on `device`, saved with the tokenizer to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
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


def preference_steps(model, s: Shape, device: str, dtype: torch.dtype, peak: float | None, tgdpo: bool) -> dict:
    """DPO (or TGDPO) optimizer steps: tokens/s and MFU."""
    import copy

    from tokalign.bases.ppo.models import response_logits, token_logps
    from tokalign.losses import dpo_loss, tgdpo_loss

    frozen = [copy.deepcopy(model).requires_grad_(False).eval() for _ in range(2 if tgdpo else 1)]
    policy = model.train()
    rows, length = 2 * s.pairs, s.prompt + s.response
    ids = torch.randint(3, s.vocab, (rows, length), generator=torch.Generator().manual_seed(0)).to(device)
    attention = torch.ones_like(ids)
    mask = torch.ones(s.pairs, s.response, device=device)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    autocast = torch.autocast("cuda", dtype=dtype) if device != "cpu" else contextlib.nullcontext()

    def logps(m):
        return token_logps(response_logits(m, ids, attention, None, s.response), ids[:, -s.response:], 1.0)

    def step():
        with autocast:
            pol = logps(policy)
            with torch.no_grad():
                ref, *guide = [logps(m) for m in frozen]
            halves = [pol[: s.pairs], pol[s.pairs :], ref[: s.pairs], ref[s.pairs :]]
            if tgdpo:
                loss, _ = tgdpo_loss(*halves, guide[0][: s.pairs], guide[0][s.pairs :], mask, mask, beta=0.1, alpha=1.0)
            else:
                loss, _ = dpo_loss(*halves, mask, mask, beta=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = timed(step, device, s.warmup, s.steps)
    seconds = statistics.median(times)
    one = forward_flops(s, rows, length, s.response)
    flops = 3 * one + len(frozen) * one
    del frozen, opt
    return {
        "step_s": seconds, "steps": len(times), "sequences_per_step": rows, "sequence_length": length,
        "policy_tokens_per_s": rows * length / seconds, "tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / seconds / 1e12, "mfu": None if peak is None else flops / seconds / peak,
    }


def generate_hf(model, tokenizer, s: Shape, device: str) -> dict:
    """One GRPO-shaped batch with transformers' generate: generated tokens/s."""
    from tokalign.bases.ppo.rollout import response_mask

    model.eval()
    ids = torch.randint(3, 500, (s.prompts, s.prompt), generator=torch.Generator().manual_seed(1)).to(device)

    def run(new_tokens):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_k=0, max_new_tokens=new_tokens, num_return_sequences=s.group,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return int(response_mask(out[:, s.prompt :], tokenizer.eos_token_id).sum())

    run(4)
    sync(device)
    start = time.perf_counter()
    tokens = run(s.response)
    sync(device)
    seconds = time.perf_counter() - start
    return {"sequences": s.prompts * s.group, "generated_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def generate_vllm(model_path: Path, s: Shape) -> dict:
    """The same batch with tokalign's standalone vLLM engine: generated tokens/s (start-up apart)."""
    from omegaconf import OmegaConf

    from tokalign.config import RolloutConfig
    from tokalign.modeling.vllm_engine import VLLMEngine

    rollout = OmegaConf.structured(RolloutConfig(engine="vllm", gpu_memory_utilization=0.5))
    start = time.perf_counter()
    engine = VLLMEngine.start(str(model_path), rollout, colocated=False, seed=0, dtype="bfloat16",
                              max_model_len=s.prompt + s.response)
    startup = time.perf_counter() - start
    prompts = torch.randint(3, 500, (s.prompts, s.prompt), generator=torch.Generator().manual_seed(1)).tolist()
    try:
        engine.sample(prompts[:1], max_new_tokens=4)
        start = time.perf_counter()
        tokens = sum(map(len, engine.sample(prompts, n=s.group, max_new_tokens=s.response, seed=0)))
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    return {"sequences": s.prompts * s.group, "generated_tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "engine_startup_s": startup}


def cli_run(name: str, args: list[str], work: Path, timeout: int) -> Path:
    """`tokalign train <args>` in its own process (as a user starts it); its run directory."""
    run_dir = work / name
    env = dict(os.environ, TOKALIGN_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "tokalign.cli", "train", f"hydra.run.dir={run_dir}", "logger=none", "eval.at_end=false",
           *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip() and "%|" not in line]
        raised = [line for line in lines if re.match(r"\w+(Error|Exception)\b", line)]  # a traceback's last line
        raise RuntimeError((raised or lines or [f"exit status {done.returncode}"])[-1])
    return run_dir


def ppo_iteration(model_path: Path, s: Shape, engine: str, work: Path, tiny: bool, timeout: int) -> dict:
    """One PPO iteration through the CLI: rollout and update seconds and tokens/s from its metrics."""
    precision = ["model.dtype=float32", "trainer.precision=fp32"] if tiny else ["model.dtype=bfloat16",
                                                                               "trainer.precision=bf16"]
    start = time.perf_counter()
    run_dir = cli_run(f"ppo_{engine}", [
        "method=ppo", f"model.path={model_path}", *precision, "trainer.max_steps=1",
        f"trainer.per_device_batch_size={s.ppo_batch}", f"method.max_new_tokens={s.response}",
        f"trainer.max_length={s.prompt + s.response + 64}", f"rollout.engine={engine}",
    ], work, timeout)
    wall = time.perf_counter() - start
    row = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
           if "train/rollout_s" in line][-1]
    keys = ("rollout_s", "update_s", "rollout_tokens_per_s", "train_tokens_per_s", "response_length")
    return {k: row[f"train/{k}"] for k in keys} | {"process_wall_s": wall}


def d3s_steps(model_path: Path, s: Shape, work: Path, timeout: int) -> dict:
    """Two D³S steps with TRL's vLLM integration: the plumbing runs, and how long it takes."""
    start = time.perf_counter()
    run_dir = cli_run("d3s_vllm", [
        "method=d3s_grpo", "dataset=toy_math", f"model.path={model_path}", "model.dtype=bfloat16",
        "trainer.precision=bf16", "trainer.max_steps=2", "trainer.logging_steps=1",
        f"trainer.per_device_batch_size={s.prompts * s.group}", f"method.num_generations={s.group}",
        f"method.max_completion_length={s.response}", "method.k_init=0.2", "method.k_final=0.2", "rollout.engine=vllm",
    ], work, timeout)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/usage/kept_samples" in r]
    return {"steps": len(steps), "process_wall_s": time.perf_counter() - start,
            "kept_samples": [r["train/usage/kept_samples"] for r in steps],
            "step_time_s": [r.get("train/step_time") for r in steps]}


# ---------------------------------------------------------------------------------------------
# Driver


def run_section(results: dict, name: str, fn, *, skip: str | None = None) -> None:
    start = time.perf_counter()
    if skip:
        results[name] = {"status": "skipped", "reason": skip}
    else:
        try:
            results[name] = {"status": "ok", **fn()}
        except Exception as err:  # noqa: BLE001 - every section reports, the others still run
            traceback.print_exc()
            results[name] = {"status": "error", "reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    results[name]["section_s"] = round(time.perf_counter() - start, 1)
    print(f"gpu-check: {name}: {results[name]['status']} ({results[name]['section_s']} s)", flush=True)


def free(device: str) -> None:
    import gc

    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()


def fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def markdown(report: dict) -> str:
    env, r = report["environment"], report["sections"]
    lines = [f"`scripts/gpu_check.py{' --tiny' if report['tiny'] else ''}` on {env['device']} "
             f"({env['torch']}, transformers {env['transformers']}, TRL {env['trl']}, vLLM {env['vllm'] or 'absent'}), "
             f"{report['total_s']:.0f} s in all.", "",
             "| section | status | figures |", "|---|---|---|"]
    for name, sec in r.items():
        if sec["status"] != "ok":
            figures = sec.get("reason", "")
        elif name in ("dpo", "tgdpo"):
            figures = (f"{fmt(sec['step_s'])} s/step, {fmt(sec['policy_tokens_per_s'])} policy tokens/s, "
                       f"{fmt(sec['achieved_tflops'])} TFLOP/s, MFU {fmt(sec['mfu'])}")
        elif name.startswith("generate"):
            figures = f"{sec['generated_tokens']} tokens in {fmt(sec['seconds'])} s: {fmt(sec['tokens_per_s'])} tokens/s"
            if "engine_startup_s" in sec:
                figures += f" (engine start-up {fmt(sec['engine_startup_s'])} s)"
        elif name.startswith("ppo"):
            figures = (f"rollout {fmt(sec['rollout_s'])} s ({fmt(sec['rollout_tokens_per_s'])} tokens/s), update "
                       f"{fmt(sec['update_s'])} s ({fmt(sec['train_tokens_per_s'])} tokens/s), process {fmt(sec['process_wall_s'])} s")
        else:
            figures = f"{sec['steps']} steps, kept samples {sec['kept_samples']}, process {fmt(sec['process_wall_s'])} s"
        lines.append(f"| {name} | {sec['status']} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy shapes on CPU (seconds): keeps the check working")
    p.add_argument("--out", default=None, help="where gpu_check.json and gpu_check.md go (default scripts/results)")
    p.add_argument("--doc", default=None, help="Markdown file whose gpu-check block gets the table (full run: docs/gpu.md)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    p.add_argument("--timeout", type=int, default=240, help="seconds for each `tokalign train` section")
    a = p.parse_args(argv)

    from tokalign.modeling.vllm_engine import unavailable_reason

    tiny = a.tiny
    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; `python scripts/gpu_check.py --tiny` runs the toy version on CPU", file=sys.stderr)
        return 2
    s, dtype = (TINY, torch.float32) if tiny else (LLAMA_1B, torch.bfloat16)
    out = Path(a.out) if a.out else ROOT / "scripts" / "results"
    doc = Path(a.doc) if a.doc else (None if tiny else ROOT / "docs" / "gpu.md")
    no_vllm = unavailable_reason() or ("--tiny runs on CPU" if tiny else None)
    peak = peak_flops(device, a.peak_tflops)
    started = time.perf_counter()
    sections: dict = {}
    with tempfile.TemporaryDirectory(prefix="tokalign-gpu-check-") as tmp:
        work = Path(tmp)
        cache = os.environ.get("TOKALIGN_CACHE", os.path.expanduser("~/.cache/tokalign"))
        tokenizer = build_tokenizer(s.vocab, cache)
        s = replace(s, vocab=max(s.vocab, len(tokenizer)))  # the tiny tokenizer may outgrow TINY
        model_path = work / "model"
        model = build_model(s, tokenizer, device, dtype, model_path)
        run_section(sections, "dpo", lambda: preference_steps(model, s, device, dtype, peak, tgdpo=False))
        free(device)
        run_section(sections, "tgdpo", lambda: preference_steps(model, s, device, dtype, peak, tgdpo=True))
        free(device)
        run_section(sections, "generate_hf", lambda: generate_hf(model, tokenizer, s, device))
        del model
        free(device)
        run_section(sections, "generate_vllm", lambda: generate_vllm(model_path, s), skip=no_vllm)
        run_section(sections, "ppo_hf", lambda: ppo_iteration(model_path, s, "hf", work, tiny, a.timeout))
        run_section(sections, "ppo_vllm", lambda: ppo_iteration(model_path, s, "vllm", work, tiny, a.timeout),
                    skip=no_vllm)
        run_section(sections, "d3s_vllm", lambda: d3s_steps(model_path, s, work, a.timeout), skip=no_vllm)
    report = {
        "tiny": tiny, "shape": asdict(s), "total_s": time.perf_counter() - started, "sections": sections,
        "environment": {
            "device": "CPU" if device == "cpu" else torch.cuda.get_device_name(), "peak_tflops": peak and peak / 1e12,
            "torch": torch.__version__, "transformers": _version("transformers"), "trl": _version("trl"),
            "vllm": _version("vllm"), "python": platform.python_version(),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
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
