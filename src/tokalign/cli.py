"""The `tokalign` command: subcommands, each taking Hydra-style `key=value` overrides.

`tokalign train ...` is a real Hydra app (multirun `-m`, `--cfg job`, `--help`, sweeps).
Start-up stays cheap: nothing heavy (torch, trl, deepspeed) is imported until a job runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: tokalign <command> [overrides ...]

commands:
  train   train a method on a model and dataset; a Hydra app:
            tokalign train method=dpo trainer.max_steps=20 seed=3
            tokalign train -m method=sft,dpo seed=1,2      (multirun)
            tokalign train --cfg job                       (print the composed config)
            tokalign train --help                          (config groups and options)
  eval    evaluate a finished run and write <run_dir>/eval.json:
            tokalign eval run_dir=outputs/dpo/2026-... [eval.num_prompts=64 eval.num_samples=4]

Runs write to their own directory (resolved.yaml, metrics.jsonl, model/, eval.json, wandb/).
"""


def conf_dir() -> str:
    """Configs ship inside the wheel as tokalign/conf; in a source checkout they are ./conf."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def _fail(err: Exception) -> None:
    print(f"tokalign: error: {err}", file=sys.stderr)
    sys.exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    from tokalign.config import ConfigError
    from tokalign.data.loading import DataError
    from tokalign.models import ModelError

    return ConfigError, DataError, ModelError


def train(argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from tokalign.config import register_schema

    register_schema()

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
    def app(cfg: DictConfig):
        from tokalign.config import validate
        from tokalign.launch import launch

        try:
            cfg = validate(cfg)
            OmegaConf.resolve(cfg)
            return launch(cfg)
        except _user_errors() as err:
            _fail(err)

    sys.argv = ["tokalign train", *argv]
    app()


def evaluate(argv: list[str]) -> None:
    import json

    from omegaconf import OmegaConf

    from tokalign.config import ConfigError, EvalConfig

    try:
        args = OmegaConf.from_dotlist(argv)
        if "run_dir" not in args:
            raise ConfigError("tokalign eval needs run_dir=<a finished run directory>")
        unknown = set(args) - {"run_dir", "eval"}
        if unknown:
            raise ConfigError(f"unknown argument(s) {sorted(unknown)}; use run_dir=... and eval.<key>=...")
        overrides = OmegaConf.merge(OmegaConf.structured(EvalConfig), args.get("eval", {}))
        from tokalign.evaluate import evaluate_run

        metrics, _, _ = evaluate_run(args.run_dir, overrides)
    except (*_user_errors(), FileNotFoundError, ValueError) as err:
        _fail(err)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")


COMMANDS = {"train": train, "eval": evaluate}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"tokalign: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    COMMANDS[command](rest)


if __name__ == "__main__":
    main()
