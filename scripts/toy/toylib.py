"""What the toy-measurement scripts share: composing a run's config, and appending to a results file."""

from __future__ import annotations

import json
from pathlib import Path


def compose(overrides: list[str]):
    """The validated config `tokalign train <overrides>` would run, without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tokalign.app.compose import register, validate
    from tokalign.cli import conf_dir

    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["output_dir=unused", "logger=none", *overrides])
    return validate(cfg)


def append_record(path: Path, record: dict) -> None:
    """Results files are JSON lists of records, one per invocation, oldest first."""
    history = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history + [record], indent=1, default=str) + "\n")
