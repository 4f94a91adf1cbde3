"""One training run end to end, the same code under every launcher.

run dir (resolved.yaml) -> tracker -> models, tokenizer, data -> method.train -> final model
(atomic) -> train.json -> evaluation -> summary.json. Everything it writes lives in the run
directory, and each stage can be picked up where a killed attempt left it: `resume=auto`
continues the newest verified checkpoint, re-runs only the evaluation when the final model is
already there, and leaves a finished run (summary.json present) as it is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.app.registry import get_method
from tokalign.artifacts.checkpoint import (
    complete_checkpoints,
    discard_incomplete,
    non_finite,
    step_of,
    verify,
)
from tokalign.artifacts.files import atomic_text, storage_errors, strict_json
from tokalign.artifacts.rundir import finished_model
from tokalign.artifacts.tracking import Tracker, log_file, quiet_imports, say
from tokalign.bases.contract import DataKind, Method
from tokalign.cluster import preemption
from tokalign.config import option
from tokalign.errors import ConfigError, UserError

TRAIN_METRICS = "train.json"


class Run:
    """What a method's `train(run)` gets (the `RunContext` protocol): config, run dir, tracker, tokenizer,
    data, model loading."""

    cfg: DictConfig
    dir: Path
    rank: int
    method: Method
    model_path: str
    tokenizer: Any
    train_data: Any
    tracker: Tracker

    def __init__(self, cfg: DictConfig, rank: int = 0, nested: bool = False):
        """Everything that can fail on the user's input (model, tokenizer, data, disk) is checked
        before the tracker starts a W&B run. A nested run (a model another run needs) says nothing
        of its own: its outer run says what it builds."""
        from tokalign.modeling import templates
        from tokalign.modeling.models import load_tokenizer, resolve_model

        self.cfg = cfg
        self.dir = Path(cfg.output_dir)
        self.rank = rank
        self.nested = nested
        self.resume = option(cfg.resume) == "auto"
        self.method = get_method(cfg.method.algorithm)
        self.model_path = resolve_model(cfg.model, cfg.cache_dir)
        self._check_disk()
        self.tokenizer = load_tokenizer(self.model_path, cfg.model.trust_remote_code)
        templates.apply(self.tokenizer, cfg.model.get("chat_template"))  # before any row is formatted
        self.train_data, self.data_metrics = self._train_data()
        self.tracker = Tracker(cfg, self.dir, rank=rank)
        self.eval_reference = None  # the starting policy, loaded at the first evaluation during training
        self.eval_memo: dict = {}  # and its samples, drawn at the first one
        self.evaluations = 0

    def load_policy(self) -> Any:
        """With model.quantization, quantized (tokalign.modeling.quantization): TRL prepares it for LoRA."""
        from tokalign.modeling import quantization
        from tokalign.modeling.models import load_causal_lm

        return load_causal_lm(
            self.model_path,
            dtype=option(self.cfg.model.dtype),
            trust_remote_code=self.cfg.model.trust_remote_code,
            **quantization.load_kwargs(self.cfg.model),
        )

    def _check_disk(self) -> None:
        """Room in the run directory for the final model (and a checkpoint with optimizer state)."""
        import shutil

        from tokalign.errors import StorageError
        from tokalign.modeling.models import check_model_dir

        if self.rank != 0 or not Path(self.model_path).is_dir():
            return
        weights = check_model_dir(self.model_path)
        need = weights * (4 if self.cfg.trainer.save_steps > 0 else 1)
        free = shutil.disk_usage(next(p for p in (self.dir, *self.dir.parents) if p.exists())).free
        if free < need:
            raise StorageError(
                f"{self.dir} has {free / 2**30:.1f} GiB free; this model's final weights and checkpoints "
                f"need about {need / 2**30:.1f} GiB"
            )

    def _train_data(self):
        """Training rows after screening, and what the screening and hold-out did (said once, kept in the summary)."""
        import datasets

        from tokalign.data.loading import load_training_rows, screen

        d, kind, method = self.cfg.dataset, self.method.data, self.cfg.method.name
        if kind != DataKind.preference or option(d.pairs) == "synthetic":
            data, note = load_training_rows(d, kind, method=method)
        else:
            from tokalign import rewards
            from tokalign.modeling.on_policy import build_pairs

            scorer = rewards.reward_function(d.on_policy.reward, d, "dataset.on_policy.reward")
            prompt_rows, note = load_training_rows(d, DataKind.prompt, method=method)
            prompts = list(prompt_rows["prompt"])
            o = d.on_policy
            data = datasets.Dataset.from_list(
                build_pairs(
                    prompts,
                    model=self.load_policy(),
                    tokenizer=self.tokenizer,
                    model_path=self.model_path,
                    scorer=scorer,
                    scorer_name=getattr(scorer, "__name__", "reward"),
                    num_samples=o.num_samples,
                    temperature=o.temperature,
                    max_new_tokens=o.max_new_tokens,
                    batch_size=o.batch_size,
                    seed=d.seed,
                    cache_dir=self.cfg.cache_dir,
                    rollout=self.cfg.rollout,
                )
            )
        data, dropped = screen(data, kind, self.tokenizer, self.cfg.trainer.max_length)
        if self.rank == 0 and not self.nested:
            said = [f"{len(data)} training rows", *(f"dropped {n} ({why})" for why, n in dropped.items() if n)]
            say("data: " + "; ".join(said + ([note] if note else [])))
        metrics = {"data/train_rows": len(data), **{f"data/dropped/{why}": n for why, n in dropped.items() if n}}
        return data, metrics

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint to continue from (resume=auto): the newest sealed one whose files match their
        hashes and whose weights are finite, after clearing what a killed attempt left half-written.
        Every rank gets rank 0's choice. The tracker forgets what was logged after it."""
        if not self.resume:
            return None
        chosen = None
        if self.rank == 0:
            root = self.dir / "checkpoints"
            for path in discard_incomplete(root):
                say(f"deleted {path}: not sealed (a save killed before it finished, or a temporary it left)")
            for path in reversed(complete_checkpoints(root)):
                problem = verify(path) or non_finite(path)
                if problem is None:
                    chosen = path
                    break
                say(f"not resuming from {path}: {problem}")
        chosen = _broadcast(chosen)
        self.tracker.rewind(step_of(chosen) if chosen else 0)
        if self.rank == 0:
            say(
                f"resuming from {chosen} (step {step_of(chosen)})"
                if chosen
                else "no checkpoint to resume from: starting at step 0"
            )
        return chosen

    def train_nested(self, cfg: DictConfig) -> dict[str, Any]:
        """Train another run in this process (a model this run needs, e.g. a DPO guidance), quietly:
        no summary screen of its own (its directory is temporary until published)."""
        return run_training(cfg, nested=True)

    def evaluate_during(self, model: Any, step: int) -> None:
        """eval.every_steps: rank 0 evaluates the policy in training (the others wait for it)."""
        import torch.distributed as dist

        self.evaluations += 1
        if self.rank == 0:
            _evaluate_during(self, model, step)
        if dist.is_initialized():
            dist.barrier()

    def save_model(self, model: Any, tokenizer: Any, state_dict: dict | None = None) -> Path:
        """A PEFT model is saved as its adapter (and, with model.lora.merge, a merged copy: tokalign.modeling.lora)."""
        from tokalign.modeling.lora import save_trained

        if self.rank == 0:
            save_trained(model, tokenizer, self.dir / "model", self.cfg.model, state_dict=state_dict)
        return self.dir / "model"


BEST = "best"  # <run_dir>/best: the best policy of the evaluations during training (eval.keep=best)


def _evaluate_during(run: Run, model: Any, step: int) -> None:
    """Rank 0: evaluate the policy in training (eval/* rows at `step`, eval/during_s its cost); with
    eval.keep=best, save it into <run_dir>/best when it beats best.json's record."""
    from tokalign.analysis.evaluate import evaluate_policy
    from tokalign.modeling.lora import save_trained
    from tokalign.modeling.models import load_causal_lm

    if run.eval_reference is None:
        run.eval_reference = load_causal_lm(
            run.model_path, dtype="float32", trust_remote_code=run.cfg.model.trust_remote_code
        )
    started = time.time()
    metrics = evaluate_policy(run.cfg, run.dir, run.tokenizer, model, run.eval_reference, run.eval_memo)
    metrics["eval/during_s"] = round(time.time() - started, 3)
    e = run.cfg.eval
    if option(e.keep) == "best":
        key = e.best_metric if str(e.best_metric).startswith("eval/") else f"eval/{e.best_metric}"
        if key not in metrics:
            raise ConfigError(
                f"eval.best_metric={e.best_metric} is not a metric of this run's evaluation; it has: "
                + ", ".join(sorted(k.removeprefix("eval/") for k in metrics))
            )
        record = run.dir / f"{BEST}.json"
        best = json.loads(record.read_text()) if record.exists() else None  # a resumed run's record too
        larger = option(e.best_mode) == "max"
        if best is None or (metrics[key] > best["value"] if larger else metrics[key] < best["value"]):
            save_trained(model, run.tokenizer, run.dir / BEST, run.cfg.model)
            best = {"step": step, "metric": key, "value": metrics[key]}
            atomic_text(record, strict_json(best, indent=2))
            say(f"step {step}: {key}={metrics[key]:.4g}, the best so far: saved {run.dir / BEST}")
        metrics["eval/best_step"] = best["step"]
    run.tracker.log(metrics, step=step)


def _broadcast(value):
    """Rank 0's value on every rank (unchanged in a single process)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _evaluate(cfg: DictConfig, run: Run, metrics: dict) -> dict:
    from tokalign.analysis.evaluate import evaluate_run

    eval_metrics, columns, rows = evaluate_run(cfg.output_dir, trust_run_code=True)  # this run's own config
    step = int(metrics.get("train/steps") or 0)
    run.tracker.log(eval_metrics, step=step)
    run.tracker.log_table("eval/samples", columns, rows, step=step)
    return eval_metrics


def run_training(cfg: DictConfig, rank: int = 0, nested: bool = False) -> dict[str, Any]:
    """Train, save, evaluate and summarise one run; returns its final metrics.

    Rank 0 of an outer run also writes what it says into <run_dir>/tokalign.log; a nested run's
    lines go to its outer run's log, and it prints no summary screen."""
    run_dir = Path(cfg.output_dir)
    if not (run_dir / "resolved.yaml").exists():  # launchers write it before spawning ranks
        atomic_text(run_dir / "resolved.yaml", OmegaConf.to_yaml(cfg))
    if rank != 0 or nested:
        return _run_training(cfg, rank, nested)
    with log_file(run_dir):
        return _run_training(cfg, rank, nested)


def _run_training(cfg: DictConfig, rank: int, nested: bool) -> dict[str, Any]:
    from transformers import set_seed

    from tokalign.modeling.lora import is_model_dir
    from tokalign.runtime.closing import print_closing_screen

    run_dir = Path(cfg.output_dir)
    quiet_imports()
    set_seed(cfg.seed)
    started = time.time()
    run = Run(cfg, rank=rank, nested=nested)
    trained = run_dir / TRAIN_METRICS
    try:
        if run.resume and trained.exists() and is_model_dir(run_dir / "model"):
            if rank == 0:
                finished_model(run_dir)  # a non-finite model/ is refused, not evaluated
                say("the final model is already saved: running only what is missing (evaluation, summary)")
            metrics = json.loads(trained.read_text())
            if not isinstance(metrics, dict):
                raise UserError(f"{trained} is not a JSON object; remove it (and model/) to train again")
        else:
            with storage_errors(run_dir):
                metrics = {**run.method.train(run), **run.data_metrics}
            every = cfg.eval.every_steps
            if rank == 0 and every > 0 and int(metrics.get("train/steps") or 0) >= every and not run.evaluations:
                say(
                    f"method={cfg.method.name} trains in its own loop, which does not evaluate during training: "
                    "eval.every_steps was not used",
                    logging.WARNING,
                )
            earlier = run.tracker.previous_wall_s  # attempts killed earlier count up to their last log
            metrics["train/wall_s"] = round(earlier + time.time() - started, 1)
            metrics["train/attempts"] = len(run.tracker.attempts)
            if metrics.get("train/runtime_s") is not None:
                metrics["train/runtime_s"] = round(earlier + metrics["train/runtime_s"], 1)
            if rank == 0:
                atomic_text(trained, strict_json(metrics, indent=2, default=str))
        if cfg.launcher.name == "deepspeed":
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()  # evaluation loads whole models on rank 0 alone, not ZeRO-3 shards
        if rank == 0:
            with preemption.stop_at_once(
                f"during the final evaluation: the trained model is saved ({run_dir / 'model'}, "
                f"{TRAIN_METRICS}) but no eval.json or summary.json; resume=auto runs only the "
                "evaluation"
            ):
                if cfg.eval.at_end:
                    metrics.update(_evaluate(cfg, run, metrics))
                atomic_text(run_dir / "summary.json", strict_json(metrics, indent=2, default=str))
                run.tracker.summary(metrics)
    finally:
        wandb_dir = run.tracker.wandb_dir
        run.tracker.finish()
    if rank == 0 and not nested:  # last, so that it is the screen the user sees
        print_closing_screen(cfg, run_dir, metrics, wandb_dir)
    return metrics
