"""Evaluate a finished run from its directory alone (resolved.yaml + model/).

Scored tasks (the toy preference task, or any `eval.reward` without reference answers): mean
reward of the policy and of the reference (the starting policy), and the policy's win rate
against the reference on held-out prompts (ties count half). Verifiable tasks (the toy
arithmetic task, or `eval.reward` on data with an `answer` column, e.g. math-verify): accuracy
and unbiased pass@k for every k in `eval.pass_k` and k = `eval.num_samples`. `eval.reward_model`
adds the reward model's mean score for policy and reference and its win rate. Runs of
method=reward: pairwise accuracy on held-out preference pairs. `eval.export` writes the
policy's answers for external judges (tokalign.export).
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.data.loading import task_of
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


def _eval_reward(cfg: DictConfig, task: str):
    """`eval.reward` (module.function or module:function), else the task's programmatic reward."""
    from tokalign.rewards import TASK_REWARDS

    if not cfg.eval.reward:
        return TASK_REWARDS.get(task)
    from hydra.utils import get_object

    target = str(cfg.eval.reward).replace(":", ".")
    try:
        return get_object(target)
    except Exception as err:  # hydra wraps import errors in several types
        raise ValueError(f"eval.reward={cfg.eval.reward!r} is not an importable function: {err}") from None


def _verifiable(prompts, samples, answers, reward_fn, pass_k) -> tuple[dict, list[list[float]]]:
    """Accuracy over all samples and unbiased pass@k per prompt, averaged over prompts."""
    correct = [reward_fn([p] * len(s), s, answer=[a] * len(s)) for p, s, a in zip(prompts, samples, answers)]
    n = len(samples[0]) if samples else 1
    metrics = {"eval/accuracy": sum(map(sum, correct)) / (n * max(1, len(prompts)))}
    for k in sorted({*(int(k) for k in pass_k), n}):
        if 1 <= k <= n:
            metrics[f"eval/pass@{k}"] = sum(pass_at_k(n, int(sum(c)), k) for c in correct) / max(1, len(prompts))
    return metrics, correct


def _per_prompt(score, prompts: list[Any], samples: list[list[str]]) -> list[list[float]]:
    """Scores of every sample, in one call (batched by the scorer), regrouped per prompt."""
    flat = score([p for p, s in zip(prompts, samples) for _ in s], [x for s in samples for x in s])
    out, i = [], 0
    for s in samples:
        out.append(list(flat[i : i + len(s)]))
        i += len(s)
    return out


def _scored(name: str, win_name: str, pol: list[list[float]], ref: list[list[float]]) -> dict:
    """Mean score of policy and reference samples and the policy's win rate (ties count half)."""
    pairs = [(a, b) for pr, rr in zip(pol, ref) for a, b in zip(pr, rr)]
    n = max(1, len(pairs))
    return {
        f"eval/{name}": sum(a for a, _ in pairs) / n,
        f"eval/{name}_ref": sum(b for _, b in pairs) / n,
        f"eval/{win_name}": sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / n,
    }


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
    from tokalign.config import EvalConfig, method_module
    from tokalign.data.loading import load_split
    from tokalign.models import load_tokenizer, resolve_model

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "resolved.yaml")
    # runs written before a knob existed get its default
    cfg.eval = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg.eval, overrides or {})
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir} holds no finished model (was the run completed?)")
    tokenizer = load_tokenizer(str(model_dir))
    method = cfg.method.name
    task = task_of(cfg.dataset)

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
        reward_fn = _eval_reward(cfg, task)
        answers = list(data["answer"]) if "answer" in data.column_names else None
        metrics: dict[str, Any] = {"eval/num_prompts": len(prompts)}
        reference = None
        columns = ["prompt", "response"]
        rows = [[prompt_text(p), s[0]] for p, s in zip(prompts, policy)]
        if reward_fn is None:  # no programmatic reward: report generations only
            metrics["eval/mean_response_chars"] = sum(len(s[0]) for s in policy) / max(1, len(policy))
        elif answers is not None:
            scores, correct = _verifiable(prompts, policy, answers, reward_fn, cfg.eval.pass_k)
            metrics.update(scores)
            columns += ["answer", "correct"]
            rows = [r + [a, c[0]] for r, a, c in zip(rows, answers, correct)]
        else:
            reference = _sample(cfg, resolve_model(cfg.model, cfg.cache_dir), tokenizer, prompts, "eval: reference")
            pol, ref = _per_prompt(reward_fn, prompts, policy), _per_prompt(reward_fn, prompts, reference)
            metrics.update(_scored("gold_reward", "win_rate", pol, ref))
            columns += ["gold_reward", "reference", "reference_gold_reward"]
            rows = [r + [g[0], rs[0], rr[0]] for r, g, rs, rr in zip(rows, pol, reference, ref)]
        if cfg.eval.reward_model:
            from tokalign.rewards import RewardModelScorer
            from tokalign.trainers.ppo import resolve_reward_model

            if reference is None:
                reference = _sample(cfg, resolve_model(cfg.model, cfg.cache_dir), tokenizer, prompts, "eval: reference")
            scorer = RewardModelScorer(resolve_reward_model(str(cfg.eval.reward_model)), batch_size=cfg.eval.batch_size)
            pol_rm, ref_rm = _per_prompt(scorer, prompts, policy), _per_prompt(scorer, prompts, reference)
            metrics.update(_scored("rm_score", "rm_win_rate", pol_rm, ref_rm))
            columns.append("rm_score")
            rows = [r + [s[0]] for r, s in zip(rows, pol_rm)]
        if cfg.eval.export:
            from tokalign.export import export_run

            export_run(cfg, run_dir, tokenizer, prompts, [s[0] for s in policy])
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    return metrics, columns, rows[: cfg.eval.num_table_rows]
