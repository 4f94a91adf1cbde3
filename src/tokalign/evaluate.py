"""Evaluate a finished run from its directory alone (resolved.yaml + model/).

Toy preference task: mean gold reward of the policy and of the reference (the starting
policy), and the policy's win rate against the reference on held-out prompts (ties count
half). Verifiable task: exact-match accuracy, pass@1 and pass@k over `eval.num_samples`.
Reward models: pairwise accuracy on held-out preference pairs.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.generation import generate, prompt_text


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _sample(cfg: DictConfig, model_path: str, tokenizer, prompts: list[Any], desc: str) -> list[list[str]]:
    from tokalign.models import load_causal_lm

    model = load_causal_lm(model_path, dtype="float32", trust_remote_code=cfg.model.trust_remote_code)
    e = cfg.eval
    return generate(
        model, tokenizer, prompts, max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
        num_samples=e.num_samples, batch_size=e.batch_size, seed=cfg.seed + 17, desc=desc,
    )


def _reward_model_accuracy(cfg: DictConfig, model_dir: Path, data) -> tuple[dict, list[list[Any]]]:
    from tokalign.rewards import RewardModelScorer

    scorer = RewardModelScorer(str(model_dir), batch_size=cfg.eval.batch_size)
    chosen = scorer(data["prompt"], data["chosen"])
    rejected = scorer(data["prompt"], data["rejected"])
    acc = sum(c > r for c, r in zip(chosen, rejected)) / max(1, len(chosen))
    margin = sum(c - r for c, r in zip(chosen, rejected)) / max(1, len(chosen))
    rows = [[prompt_text(p), c[-1]["content"], r[-1]["content"], sc - sr] for p, c, r, sc, sr in
            zip(data["prompt"], data["chosen"], data["rejected"], chosen, rejected)]
    return {"eval/pairwise_accuracy": acc, "eval/mean_margin": margin}, rows


def evaluate_run(run_dir: str | Path, overrides: DictConfig | None = None) -> tuple[dict, list[str], list[list[Any]]]:
    """Metrics, and a table (columns, rows) of sample generations; also writes run_dir/eval.json."""
    from tokalign.config import method_module
    from tokalign.data.loading import load_split
    from tokalign.models import load_tokenizer, resolve_model
    from tokalign.rewards import TASK_REWARDS

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "resolved.yaml")
    if overrides is not None:
        cfg.eval = OmegaConf.merge(cfg.eval, overrides)
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} holds no finished model (was the run completed?)")
    tokenizer = load_tokenizer(str(model_dir))
    method = cfg.method.name
    task = "local" if cfg.dataset.path else cfg.dataset.source

    if method == "reward":
        data = load_split(cfg.dataset, "preference", method, "eval")
        metrics, rows = _reward_model_accuracy(cfg, model_dir, data)
        columns = ["prompt", "chosen", "rejected", "score_margin"]
    else:
        kind = "prompt" if task == "toy_math" else method_module(method).DATA_KIND
        data = load_split(cfg.dataset, kind, method, "eval")
        data = data.select(range(min(cfg.eval.num_prompts, len(data))))
        prompts = list(data["prompt"])
        policy = _sample(cfg, str(model_dir), tokenizer, prompts, "eval: policy")
        reward_fn = TASK_REWARDS.get(task)
        metrics: dict[str, Any] = {"eval/num_prompts": len(prompts)}
        if reward_fn is None:  # no programmatic reward: report generations only
            columns = ["prompt", "response"]
            rows = [[prompt_text(p), s[0]] for p, s in zip(prompts, policy)]
            metrics["eval/mean_response_chars"] = sum(len(s[0]) for s in policy) / max(1, len(policy))
        elif task == "toy_math":
            answers = list(data["answer"])
            correct = [reward_fn([p] * len(s), s, answer=[a] * len(s)) for p, s, a in zip(prompts, policy, answers)]
            n = cfg.eval.num_samples
            metrics["eval/accuracy"] = sum(map(sum, correct)) / (n * len(prompts))
            metrics[f"eval/pass@{n}"] = sum(pass_at_k(n, int(sum(c)), n) for c in correct) / len(prompts)
            columns = ["prompt", "response", "answer", "correct"]
            rows = [[prompt_text(p), s[0], a, c[0]] for p, s, a, c in zip(prompts, policy, answers, correct)]
        else:
            reference = _sample(cfg, resolve_model(cfg.model, cfg.cache_dir), tokenizer, prompts, "eval: reference")
            pol = [reward_fn([p] * len(s), s) for p, s in zip(prompts, policy)]
            ref = [reward_fn([p] * len(s), s) for p, s in zip(prompts, reference)]
            pairs = [(a, b) for pr, rr in zip(pol, ref) for a, b in zip(pr, rr)]
            metrics["eval/gold_reward"] = sum(map(sum, pol)) / len(pairs)
            metrics["eval/gold_reward_ref"] = sum(map(sum, ref)) / len(pairs)
            metrics["eval/win_rate"] = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
            columns = ["prompt", "response", "gold_reward", "reference", "reference_gold_reward"]
            rows = [[prompt_text(p), s[0], r[0], rs[0], rr[0]] for p, s, r, rs, rr in zip(prompts, policy, pol, reference, ref)]
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    return metrics, columns, rows[: cfg.eval.num_table_rows]
