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
from typing import Any

from omegaconf import MISSING, DictConfig

from tokalign.config import knob


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


@dataclass(frozen=True)
class Method:
    """A method as generic code sees it.

    `train(run) -> dict` trains and returns the final training metrics. Optional hooks:
    `check(cfg)` raises `ConfigError` for relations between knobs (the whole config, before
    anything heavy is built); `view(ctx)` returns the token view `tokalign inspect` renders;
    `evaluate(cfg, run_dir) -> (metrics, table columns, table rows)` replaces generation-based
    evaluation (e.g. a reward model's pairwise accuracy).
    """

    name: str
    config: type
    data: DataKind
    train: Callable[[Any], dict]
    description: str
    check: Callable[[DictConfig], None] | None = None
    view: Callable[[Any], Any] | None = None
    evaluate: Callable[[DictConfig, Path], tuple[dict, list[str], list[list[Any]]]] | None = None
