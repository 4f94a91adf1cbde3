"""The one screen printed when a run ends: its final metrics and where its files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def print_closing_screen(cfg: DictConfig, run_dir: Path, metrics: dict[str, Any], wandb_dir: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tokalign · {cfg.run_name}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value))
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"run dir     {run_dir}")
    console.print(f"model       {run_dir / 'model'}")
    console.print(f"metrics     {run_dir / 'metrics.jsonl'}")
    if (run_dir / "eval.json").exists():
        console.print(f"eval        {run_dir / 'eval.json'}")
    if (run_dir / "tensorboard").is_dir():
        console.print(f"tensorboard {run_dir / 'tensorboard'}   (`tensorboard --logdir` it)")
    if wandb_dir:
        console.print(
            f"wandb       {wandb_dir}"
            + ("   (offline: `wandb sync` it to upload)" if "offline-run" in wandb_dir else "")
        )
