"""What tokalign asks of a method: its settings, the data it trains on, how it trains and shows tokens.

A method is one package under `tokalign.methods` (or in a user's installed package, registered
under the `tokalign.methods` entry-point group) that exposes `METHOD = Method(...)`. Generic
code (`run`, `evaluate`, `inspect`, `table`) asks the `Method`; it never tests a method's name.
Keep a method package's `__init__` light (no torch or trl at import): the registry imports
every method to compose configs, and `tokalign train --help` must stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import MISSING, DictConfig

from tokalign.config import knob

if TYPE_CHECKING:
    from tokalign.artifacts.tracking import Tracker


class DataKind(StrEnum):
    """The rows a method trains on; `tokalign.data.loading` builds and checks them."""

    sft = "sft"  # prompt, completion
    preference = "preference"  # prompt, chosen, rejected
    prompt = "prompt"  # prompt (+ answer where the task has one)


@dataclass
class MethodConfig:
    """Fields every method's settings have; a method's Config subclasses this with its defaults."""

    algorithm: str = knob(MISSING, help="the method that runs these settings (a preset may reuse another's)")
    name: str = knob(MISSING, help="how runs, tables and W&B call it")


class RunContext(Protocol):
    """What a method's `train(run)` may use of the run it trains in (`tokalign.runtime.run.Run` provides it).

    Methods stay below the run layer: they get this object, never import the code that builds it.
    """

    cfg: DictConfig  # the resolved, validated config
    dir: Path  # the run directory
    rank: int  # this process's global rank
    method: "Method"  # the method being run (a preset's `config` may be a subclass of another's)
    model_path: str  # the starting policy, resolved to a local directory
    tokenizer: Any  # its tokenizer
    train_data: Any  # the screened training rows (a `datasets.Dataset` of the method's DataKind)
    tracker: "Tracker"  # metrics.jsonl and W&B

    def load_policy(self) -> Any:
        """A fresh copy of the starting policy (the reference, or the model to train)."""
        ...

    def resume_checkpoint(self) -> Path | None:
        """The verified checkpoint to continue from under resume=auto, or None."""
        ...

    def train_nested(self, cfg: DictConfig) -> dict[str, Any]:
        """Train another run in this process (a model this run needs, e.g. a DPO model)."""
        ...

    def save_model(self, model: Any, tokenizer: Any, state_dict: dict | None = None) -> Path:
        """Write the final model atomically (rank 0) and return where it is."""
        ...

    def evaluate_during(self, model: Any, step: int) -> None:
        """The generation evaluation of the policy in training at `step` (eval.every_steps; every rank calls)."""
        ...


@dataclass(frozen=True)
class Method:
    """A method as generic code sees it.

    `train(run) -> dict` trains and returns the final training metrics. Optional hooks:
    `check(cfg)` raises `ConfigError` for relations between knobs (the whole config, before
    anything heavy is built); `view(ctx)` returns the token view `tokalign inspect` renders;
    `evaluate(cfg, run_dir) -> (metrics, table columns, table rows)` replaces generation-based
    evaluation (e.g. a reward model's pairwise accuracy). `lora`: the method trains LoRA adapters
    when `model.lora.enabled` (and saves them through `RunContext.save_model`); a method without
    it refuses LoRA at validation instead of ignoring it.
    """

    name: str
    config: type
    data: DataKind
    train: Callable[[RunContext], dict]
    description: str
    check: Callable[[DictConfig], None] | None = None
    view: Callable[[Any], Any] | None = None
    evaluate: Callable[[DictConfig, Path], tuple[dict, list[str], list[list[Any]]]] | None = None
    lora: bool = False
