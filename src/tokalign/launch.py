"""Launchers: how a validated config becomes training processes.

`local` runs in the calling process. Every launcher receives the config composed and
validated once by the parent; workers never compose their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig


@dataclass
class LocalLauncher:
    name: str = "local"


LAUNCHERS = {"local": LocalLauncher}


def launcher_schema(name: str):
    from tokalign.config import ConfigError

    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; available: {', '.join(sorted(LAUNCHERS))}")
    return LAUNCHERS[name]


def launch(cfg: DictConfig) -> dict:
    """Run a validated, resolved config with its launcher; returns the final metrics."""
    from tokalign.run import run_training

    return run_training(cfg)
