"""On-policy preference pairs, the SimPO/TGDPO data recipe in miniature.

For each prompt, sample k responses from the starting policy, score them (the toy gold
reward or a trained reward model), keep the best as chosen and the worst as rejected,
and drop prompts whose samples all tie. Results are cached on disk, keyed by the model,
the prompts and the sampling settings, so every run over the same setting reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from tokalign.files import atomic_text
from tokalign.generation import generate


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
) -> list[dict]:
    settings = dict(k=num_samples, t=temperature, n=max_new_tokens, seed=seed, scorer=scorer_name)
    path = Path(cache_dir).expanduser() / "data" / f"onpolicy-{_key(model_path, prompts, settings)}.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    samples = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
        num_samples=num_samples, batch_size=batch_size, seed=seed, desc="on-policy samples",
    )
    rows = []
    for prompt, completions in zip(prompts, samples):
        scores = scorer([prompt] * len(completions), completions)
        best = max(range(len(scores)), key=scores.__getitem__)
        worst = min(range(len(scores)), key=scores.__getitem__)
        if scores[best] > scores[worst]:
            rows.append({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": completions[best]}],
                "rejected": [{"role": "assistant", "content": completions[worst]}],
                "score_chosen": scores[best],
                "score_rejected": scores[worst],
            })
    atomic_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
