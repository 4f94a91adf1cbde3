"""On-policy preference pairs, the SimPO/TGDPO data recipe in miniature.

For each prompt, sample k responses from the starting policy, score them (the toy gold
reward or a trained reward model), keep the best as chosen and the worst as rejected,
and drop prompts whose samples all tie. Results are cached on disk, keyed by the model,
the prompts and the sampling settings, so every run over the same setting reuses them; a lock
lets one process of a multi-process run sample while the others wait for its file. With
`rollout.engine=vllm` the samples come from a standalone vLLM engine over `model_path`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from tokalign.artifacts.files import atomic_text, strict_json
from tokalign.artifacts.tracking import stage
from tokalign.modeling.generation import generate


def _key(model_path: str, prompts: list[Any], settings: dict) -> str:
    h = hashlib.sha256()
    h.update(str(Path(model_path).resolve() if Path(model_path).exists() else model_path).encode())
    for name in ("model.safetensors", "config.json"):
        f = Path(model_path) / name
        if f.exists():
            h.update(str(f.stat().st_size).encode() + str(int(f.stat().st_mtime)).encode())
    h.update(json.dumps([prompts, settings], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def build_pairs(
    prompts: list[Any],
    *,
    model,
    tokenizer,
    model_path: str,
    scorer: Callable[..., list[float]],
    scorer_name: str,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    cache_dir: str | os.PathLike,
    rollout: Any = None,
) -> list[dict]:
    from filelock import FileLock

    from tokalign.modeling.vllm_engine import uses_vllm

    settings = dict(k=num_samples, t=temperature, n=max_new_tokens, seed=seed, scorer=scorer_name)
    if uses_vllm(rollout):  # vLLM draws other samples from the same seed
        settings["engine"] = "vllm"
    path = Path(cache_dir).expanduser() / "data" / f"onpolicy-{_key(model_path, prompts, settings)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            with stage(
                f"sampling on-policy pairs: {num_samples} responses to each of {len(prompts)} prompts, ranked by "
                f"{scorer_name}, once (cached at {path})"
            ):
                _sample_pairs(
                    path,
                    prompts,
                    model=model,
                    tokenizer=tokenizer,
                    model_path=model_path,
                    scorer=scorer,
                    num_samples=num_samples,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    seed=seed,
                    rollout=rollout,
                )
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sample_pairs(
    path: Path,
    prompts: list[Any],
    *,
    model,
    tokenizer,
    model_path: str,
    scorer,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    rollout: Any,
) -> None:
    from tokalign.modeling.vllm_engine import VLLMEngine, uses_vllm

    sampler = VLLMEngine.start(model_path, rollout, colocated=False, seed=seed) if uses_vllm(rollout) else model
    try:
        samples = generate(
            sampler,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            num_samples=num_samples,
            batch_size=batch_size,
            seed=seed,
            desc="on-policy samples",
        )
    finally:
        if sampler is not model:
            sampler.close()
    rows = []
    for prompt, completions in zip(prompts, samples):
        scores = scorer([prompt] * len(completions), completions)
        best = max(range(len(scores)), key=scores.__getitem__)
        worst = min(range(len(scores)), key=scores.__getitem__)
        if scores[best] > scores[worst]:
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": completions[best]}],
                    "rejected": [{"role": "assistant", "content": completions[worst]}],
                    "score_chosen": scores[best],
                    "score_rejected": scores[worst],
                }
            )
    atomic_text(path, "".join(strict_json(r) + "\n" for r in rows))
