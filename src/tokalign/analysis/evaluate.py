"""Evaluate a finished run from its directory alone (resolved.yaml + model/).

Scored tasks (the toy preference task, or any `eval.reward` without reference answers): mean
reward of the policy and of the reference (the starting policy), and the policy's win rate
against the reference on held-out prompts (ties count half). Verifiable tasks (data with an
`answer` column, e.g. the toy arithmetic task or math-verify on a math set): accuracy and
unbiased pass@k of the policy and of the reference, for every k in `eval.pass_k` and
k = `eval.num_samples`. Both report `eval/kl_ref`, a Monte Carlo estimate of KL(π_θ ‖ π_ref)
from one temperature-1 sample per prompt. `eval.extra_rewards` adds each reward's mean for
policy and reference and its win rate. A method may replace all this with its own `evaluate`
(a reward model reports pairwise accuracy). `eval.export` writes the policy's answers for
external judges (tokalign.analysis.export).

A command-line evaluation is validated like a training run (the same pass, the same one-line
errors). Each evaluation writes its metrics and the settings that produced them to `eval.json`
(the latest) and to `evals/<time>-<settings hash>.json` (every one kept), and, when the run has
a W&B run, logs them to it.

The run directory is read as data (tokalign.artifacts.rundir.load_run_config): the reward functions its
config names are imported only with `trust_run_code=true` (those on the command line are the
user's own), its model must be finite safetensors, and nothing is written through a link out of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from math import comb
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign import rewards
from tokalign.app.registry import get_method
from tokalign.artifacts.files import atomic_text, refuse_links_out, strict_json
from tokalign.artifacts.rundir import finished_model, load_run_config
from tokalign.artifacts.tracking import resume_wandb, stage
from tokalign.bases.contract import DataKind
from tokalign.config import EvalConfig, option
from tokalign.data.chat import prompt_text
from tokalign.data.loading import response_checks, task_of
from tokalign.errors import ConfigError
from tokalign.modeling.generation import generate, sequence_logps


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


class _Sampler:
    """Policy and reference samples for the evaluation prompts, each model loaded once.

    With `rollout.engine=vllm` samples come from a standalone vLLM engine over the model's
    directory (one engine at a time); log-probs always come from the transformers model.
    Models given in memory (`models`: the policy being trained) sample themselves; with `memo` (kept by
    the caller between evaluations) the reference's samples, which never change, are drawn once.
    """

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        tokenizer,
        models: dict[str, Any] | None = None,
        memo: dict | None = None,
    ):
        from tokalign.modeling.models import resolve_model

        self.cfg, self.tokenizer = cfg, tokenizer
        self.paths = {"policy": str(run_dir / "model"), "reference": resolve_model(cfg.model, cfg.cache_dir)}
        self.given = set(models or {})
        self.models: dict[str, Any] = dict(models or {})
        self.engine: tuple[str, Any] | None = None
        self.memo = memo

    def model(self, which: str):
        from tokalign.modeling.models import load_causal_lm

        if which not in self.models:
            self.models[which] = load_causal_lm(
                self.paths[which], dtype="float32", trust_remote_code=self.cfg.model.trust_remote_code
            )
        return self.models[which]

    def generator(self, which: str):
        """What samples for `which`: its vLLM engine when the run's rollout group asks for one, else its model."""
        from tokalign.modeling.lora import full_model_dir
        from tokalign.modeling.vllm_engine import VLLMEngine, uses_vllm

        if not uses_vllm(self.cfg.get("rollout")) or which in self.given:
            return self.model(which)
        if self.engine is None or self.engine[0] != which:
            if self.engine is not None:
                self.engine[1].close()
            engine = VLLMEngine.start(
                full_model_dir(self.paths[which]),
                self.cfg.rollout,
                colocated=False,
                seed=self.cfg.seed,
                trust_remote_code=self.cfg.model.trust_remote_code,
            )
            self.engine = which, engine
        return self.engine[1]

    def sample(
        self, which: str, prompts: list[Any], *, temperature: float | None = None, num_samples: int | None = None
    ):
        e = self.cfg.eval
        key = (which, temperature, num_samples, len(prompts))
        if self.memo is not None and which == "reference" and key in self.memo:
            return self.memo[key]
        samples = generate(
            self.generator(which),
            self.tokenizer,
            prompts,
            max_new_tokens=e.max_new_tokens,
            temperature=e.temperature if temperature is None else temperature,
            top_p=e.top_p,
            num_samples=e.num_samples if num_samples is None else num_samples,
            batch_size=e.batch_size,
            seed=self.cfg.seed + 17,
            desc=f"eval: {which}",
        )
        if self.memo is not None and which == "reference":
            self.memo[key] = samples
        return samples

    def kl_to_reference(self, prompts: list[Any]) -> float:
        """Mean over prompts of log π_θ(y|x) − log π_ref(y|x), y ~ π_θ at temperature 1."""
        samples = [s[0] for s in self.sample("policy", prompts, temperature=1.0, num_samples=1)]
        size = self.cfg.eval.batch_size
        policy = sequence_logps(self.model("policy"), self.tokenizer, prompts, samples, batch_size=size)
        reference = sequence_logps(self.model("reference"), self.tokenizer, prompts, samples, batch_size=size)
        return sum(p - r for p, r in zip(policy, reference)) / max(1, len(prompts))

    def close(self) -> None:
        """Give a vLLM engine's GPU memory back."""
        if self.engine is not None:
            self.engine[1].close()
            self.engine = None


def _eval_reward(cfg: DictConfig):
    """The reward that scores samples, or None when the dataset has none and none was named."""
    spec = rewards.configured(cfg.eval, "eval.reward")
    if rewards.parse(spec, "eval.reward")[0].reward == "task" and task_of(cfg.dataset) not in rewards.TASK_REWARD:
        return None
    return rewards.reward_function(spec, cfg.dataset, "eval.reward")


def _verifiable(prompts, samples, answers, reward_fn, pass_k, suffix: str = "") -> tuple[dict, list[list[float]]]:
    """Accuracy over all samples and unbiased pass@k per prompt, averaged over prompts."""
    correct = [reward_fn([p] * len(s), s, answer=[a] * len(s)) for p, s, a in zip(prompts, samples, answers)]
    n = len(samples[0]) if samples else 1
    metrics = {f"eval/accuracy{suffix}": sum(map(sum, correct)) / (n * max(1, len(prompts)))}
    for k in sorted({*(int(k) for k in pass_k), n}):
        if 1 <= k <= n:
            metrics[f"eval/pass@{k}{suffix}"] = sum(pass_at_k(n, int(sum(c)), k) for c in correct) / max(
                1, len(prompts)
            )
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


def _generation_eval(
    cfg: DictConfig,
    run_dir: Path,
    tokenizer,
    models: dict[str, Any] | None = None,
    num_prompts: int | None = None,
    memo: dict | None = None,
) -> tuple[dict, list[str], list[list[Any]]]:
    from tokalign.data.loading import load_split

    data = load_split(cfg.dataset, DataKind.prompt, "eval", method=cfg.method.name)
    data = data.select(range(min(num_prompts or cfg.eval.num_prompts, len(data))))
    prompts = list(data["prompt"])
    reward_fn = _eval_reward(cfg)  # before any sampling: a reward that cannot load fails at once
    extra = [
        (spec, rewards.reward_function(spec, cfg.dataset, "eval.extra_rewards"))
        for spec in rewards.extra_specs(cfg.eval)
    ]
    sampler = _Sampler(cfg, run_dir, tokenizer, models, memo)
    policy = sampler.sample("policy", prompts)
    answers = list(data["answer"]) if "answer" in data.column_names else None
    metrics: dict[str, Any] = {"eval/num_prompts": len(prompts)}
    columns = ["prompt", "response"]
    rows = [[prompt_text(p), s[0]] for p, s in zip(prompts, policy)]
    reference = None
    if reward_fn is None:  # no reward: report generations only
        metrics["eval/mean_response_chars"] = sum(len(s[0]) for s in policy) / max(1, len(policy))
    elif answers is not None:
        scores, correct = _verifiable(prompts, policy, answers, reward_fn, cfg.eval.pass_k)
        reference = sampler.sample("reference", prompts)
        metrics.update(scores)
        metrics.update(_verifiable(prompts, reference, answers, reward_fn, cfg.eval.pass_k, "_ref")[0])
        columns += ["answer", "correct"]
        rows = [r + [a, c[0]] for r, a, c in zip(rows, answers, correct)]
    else:
        reference = sampler.sample("reference", prompts)
        pol, ref = _per_prompt(reward_fn, prompts, policy), _per_prompt(reward_fn, prompts, reference)
        metrics.update(_scored("gold_reward", "win_rate", pol, ref))
        columns += ["gold_reward", "reference", "reference_gold_reward"]
        rows = [r + [g[0], rs[0], rr[0]] for r, g, rs, rr in zip(rows, pol, reference, ref)]
    for spec, fn in extra:
        label = rewards.parse(spec, "eval.extra_rewards")[0].label
        name, win = ("rm_score", "rm_win_rate") if label == "reward_model" else (label, f"{label}_win_rate")
        if reference is None:
            reference = sampler.sample("reference", prompts)
        pol, ref = _per_prompt(fn, prompts, policy), _per_prompt(fn, prompts, reference)
        metrics.update(_scored(name, win, pol, ref))
        columns.append(name)
        rows = [r + [s[0]] for r, s in zip(rows, pol)]
    for name, check in response_checks(cfg.dataset).items():
        metrics[f"eval/{name}"] = sum(check(s) for group in policy for s in group) / max(1, sum(map(len, policy)))
    if cfg.eval.kl:
        metrics["eval/kl_ref"] = sampler.kl_to_reference(prompts)
    sampler.close()
    if cfg.eval.export and models is None:
        from tokalign.analysis.export import export_run

        export_run(cfg, run_dir, tokenizer, prompts, [s[0] for s in policy])
    return metrics, columns, rows


def evaluate_policy(cfg: DictConfig, run_dir: Path, tokenizer, policy, reference, memo: dict) -> dict:
    """The final evaluation's generation metrics for a policy still in training (eval.every_steps), on the
    first eval.during_prompts held-out prompts; the caller's random state is left as it was, and `memo` keeps
    the reference's samples for the next call."""
    import random

    import torch

    state = random.getstate()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        metrics, _, _ = _generation_eval(
            cfg,
            run_dir,
            tokenizer,
            models={"policy": policy, "reference": reference},
            num_prompts=cfg.eval.during_prompts,
            memo=memo,
        )
    random.setstate(state)
    return metrics


def evaluate_run(
    run_dir: str | Path,
    overrides: DictConfig | None = None,
    *,
    rollout: DictConfig | None = None,
    trust_remote_code: bool = False,
    trust_run_code: bool = False,
) -> tuple[dict, list[str], list[list[Any]]]:
    """Metrics, and a table (columns, rows) of sample generations; also writes run_dir/eval.json.

    `rollout` replaces the run's sampling engine (a run trained with vLLM evaluates on a CPU
    machine with the default, transformers). `trust_remote_code` and `trust_run_code` are this
    call's own: a run directory's config never turns them on.
    """
    from tokalign.app.compose import validate
    from tokalign.modeling.models import load_tokenizer

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, trust_remote_code=trust_remote_code, trust_run_code=trust_run_code)
    refuse_links_out(run_dir, "run dir")
    given = OmegaConf.create({"eval": overrides or {}})
    cfg.eval = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg.eval, overrides or {})
    if rollout is not None:
        cfg.rollout = rollout
    cfg = validate(cfg)  # the pass `train` runs: types, ranges, relations (eval.pass_k <= eval.num_samples)
    _check_questions(cfg, run_dir, overrides, trust_run_code)
    model_dir = finished_model(run_dir)
    method = get_method(cfg.method.get("algorithm") or cfg.method.name)
    with rewards.run_code(cfg, f"{run_dir / 'resolved.yaml'}", trusted=trust_run_code, given=given):
        if method.evaluate is not None:
            metrics, columns, rows = method.evaluate(cfg, run_dir)
        else:
            tokenizer = load_tokenizer(str(model_dir), cfg.model.trust_remote_code)
            e = cfg.eval
            with stage(
                f"evaluating {run_dir}: policy and reference on up to {e.num_prompts} held-out prompts, "
                f"{e.num_samples} sample(s) each"
            ):
                metrics, columns, rows = _generation_eval(cfg, run_dir, tokenizer)
    record_evaluation(run_dir, metrics, settings(cfg))
    return metrics, columns, rows[: cfg.eval.num_table_rows]


# What an evaluation's numbers depend on: the eval group but for what only changes its output files
# and the knobs of the evaluations during training (the final evaluation does not depend on them).
_NOT_SETTINGS = (
    "at_end",
    "num_table_rows",
    "export",
    "export_questions",
    "every_steps",
    "during_prompts",
    "keep",
    "best_metric",
    "best_mode",
)


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings an evaluation of `cfg` ran with (recorded beside its metrics, compared by `tokalign table`)."""
    e = OmegaConf.to_container(cfg.eval, resolve=True, enum_to_str=True)
    out = {f"eval.{k}": v for k, v in e.items() if k not in _NOT_SETTINGS}
    out["rollout.engine"] = str(option(cfg.rollout.engine)) if cfg.get("rollout") else "hf"
    return out


def record_evaluation(run_dir: Path, metrics: dict, used: dict) -> Path:
    """eval.json (the latest evaluation) and evals/<time>-<hash>.json (every evaluation): metrics and settings."""
    digest = hashlib.sha256(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:8]
    record = strict_json({**metrics, "settings": used, "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2)
    history = atomic_text(run_dir / "evals" / f"{time.strftime('%Y%m%d-%H%M%S')}-{digest}.json", record)
    atomic_text(run_dir / "eval.json", record)
    return history


def log_to_wandb(run_dir: Path, metrics: dict, columns: list[str], rows: list[list[Any]]) -> None:
    """A command-line evaluation into the run's own W&B run (resumed by its id), when it has one."""
    cfg = load_run_config(run_dir)
    run = resume_wandb(cfg, run_dir)
    if run is None:
        return
    import wandb

    run.log({**metrics, "eval/samples": wandb.Table(columns=columns, data=rows)})
    run.summary.update(metrics)
    run.finish()


def _check_questions(cfg: DictConfig, run_dir: Path, overrides: DictConfig | None, trusted: bool) -> None:
    """A questions file the run's config names (not the command line) must lie inside the run directory."""
    if trusted or (overrides is not None and "export_questions" in overrides) or not cfg.eval.export:
        return
    q = cfg.eval.export_questions
    paths = list(q.values()) if isinstance(q, DictConfig) else [q] if q else []
    inside = run_dir.resolve()
    for path in paths:
        full = Path(str(path)).expanduser().resolve()  # as export reads it
        if not full.is_relative_to(inside):
            raise ConfigError(
                f"eval.export_questions={path} in {run_dir / 'resolved.yaml'} reaches outside the run "
                "directory; name the questions file on the command line (eval.export_questions=...) "
                "or pass trust_run_code=true"
            )
