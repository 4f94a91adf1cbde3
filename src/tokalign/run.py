"""One training run end to end, the same code under every launcher.

validate -> run dir (resolved.yaml) -> tracker -> models, tokenizer, data -> method.train
-> final model (atomic) -> evaluation -> summary. Everything it writes lives in the run dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tokalign.checkpoint import save_pretrained_atomic, write_text_atomic
from tokalign.config import method_module, option
from tokalign.data.loading import task_of
from tokalign.tracking import Tracker


class Run:
    """What a method's `train(run)` gets: config, run dir, tracker, tokenizer, data, model loading."""

    def __init__(self, cfg: DictConfig, rank: int = 0):
        from tokalign.models import load_tokenizer, resolve_model

        self.cfg = cfg
        self.dir = Path(cfg.output_dir)
        self.rank = rank
        self.resume = option(cfg.resume) == "auto"
        self.method = method_module(cfg.method.name)
        self.tracker = Tracker(cfg, self.dir, rank=rank)
        self.model_path = resolve_model(cfg.model, cfg.cache_dir)
        self.tokenizer = load_tokenizer(self.model_path, cfg.model.trust_remote_code)
        self.train_data = self._train_data()

    def load_policy(self):
        from tokalign.models import load_causal_lm

        return load_causal_lm(self.model_path, dtype=self.cfg.model.dtype, trust_remote_code=self.cfg.model.trust_remote_code)

    def _train_data(self):
        import datasets

        from tokalign.data.loading import load_split

        d = self.cfg.dataset
        kind = self.method.DATA_KIND
        if kind != "preference" or option(d.pairs) == "synthetic":
            return load_split(d, kind, self.cfg.method.name, "train")
        from tokalign.data.on_policy import build_pairs
        from tokalign.rewards import TASK_REWARDS

        scorer = TASK_REWARDS.get(task_of(d))
        if scorer is None:
            raise ValueError(f"dataset.pairs=on_policy needs a programmatic reward; dataset {d.name!r} has none")
        prompts = list(load_split(d, "prompt", self.cfg.method.name, "train")["prompt"])
        o = d.on_policy
        rows = build_pairs(
            prompts, model=self.load_policy(), tokenizer=self.tokenizer, model_path=self.model_path,
            scorer=scorer, scorer_name=scorer.__name__, num_samples=o.num_samples, temperature=o.temperature,
            max_new_tokens=o.max_new_tokens, batch_size=o.batch_size, seed=d.seed, cache_dir=self.cfg.cache_dir,
        )
        self.tracker.log({"data/on_policy_pairs": len(rows), "data/on_policy_prompts": len(prompts)}, step=0)
        return datasets.Dataset.from_list(rows)

    def save_model(self, model, tokenizer, state_dict=None) -> Path:
        if self.rank == 0:
            save_pretrained_atomic(model, tokenizer, self.dir / "model", state_dict=state_dict)
        return self.dir / "model"


def run_training(cfg: DictConfig, rank: int = 0) -> dict[str, Any]:
    """Train, save, evaluate and summarise one run; returns its final metrics."""
    from transformers import set_seed

    from tokalign.evaluate import evaluate_run
    from tokalign.summary import print_summary

    run_dir = Path(cfg.output_dir)
    if not (run_dir / "resolved.yaml").exists():  # launchers write it before spawning ranks
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "resolved.yaml", OmegaConf.to_yaml(cfg))
    set_seed(cfg.seed)
    started = time.time()
    run = Run(cfg, rank=rank)
    try:
        metrics = dict(run.method.train(run))
        metrics["train/wall_s"] = round(time.time() - started, 1)
        if cfg.launcher.name == "deepspeed":
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()  # evaluation loads whole models on rank 0 alone, not ZeRO-3 shards
        if rank == 0 and cfg.eval.at_end:
            eval_metrics, columns, rows = evaluate_run(run_dir)
            metrics.update(eval_metrics)
            step = int(metrics.get("train/steps") or 0)
            run.tracker.log(eval_metrics, step=step)
            run.tracker.log_table("eval/samples", columns, rows, step=step)
        if rank == 0:
            write_text_atomic(run_dir / "summary.json", json.dumps(metrics, indent=2, default=str))
            run.tracker.summary(metrics)
    finally:
        wandb_dir = run.tracker.wandb_dir
        run.tracker.finish()
    if rank == 0:  # last, so that it is the screen the user sees
        print_summary(cfg, run_dir, metrics, wandb_dir)
    return metrics
