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
            tokalign train -m experiment=tgdpo_toy         (a paper's table sweep: docs/reproducing.md)
            tokalign train --cfg job                       (print the composed config)
            tokalign train --help                          (config groups and options)
  eval    evaluate a finished run and write <run_dir>/eval.json:
            tokalign eval run_dir=outputs/dpo/2026-... [eval.num_prompts=64 eval.num_samples=4]
            tokalign eval run_dir=... eval.export=[alpaca_eval,mt_bench,arena_hard] [eval.export_questions=q.jsonl]
  table   tables (Markdown, CSV) and training-curve plots from the runs of a sweep:
            tokalign table runs=multirun/2026-... [group_by=[method.name,method.alpha]]
                           [metrics=[eval/win_rate,eval/gold_reward]] [curves=[train/loss]] [out=dir]
                           [wandb=entity/project wandb_group=...]
  inspect an HTML page of sample responses, each token coloured by what the method used:
            tokalign inspect run_dir=outputs/tgdpo/2026-... [num_examples=4 out=page.html]

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


def _args(argv: list[str], command: str, allowed: set[str]):
    from omegaconf import OmegaConf

    from tokalign.config import ConfigError

    args = OmegaConf.from_dotlist(argv)
    unknown = set(args) - allowed
    if unknown:
        raise ConfigError(f"tokalign {command}: unknown argument(s) {sorted(unknown)}; accepted: {', '.join(sorted(allowed))}")
    return args


def _list(value) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def table(argv: list[str]) -> None:
    from tokalign.config import ConfigError

    try:
        args = _args(argv, "table", {"runs", "out", "group_by", "metrics", "curves", "wandb", "wandb_group", "title"})
        if "runs" not in args and "wandb" not in args:
            raise ConfigError("tokalign table needs runs=<sweep or run directory> (or wandb=<entity>/<project>)")
        from tokalign.report import make_report

        result, files = make_report(
            _list(args.get("runs")) or [], out=args.get("out"), group_by=_list(args.get("group_by")),
            metrics=_list(args.get("metrics")), curves=_list(args.get("curves")), wandb=args.get("wandb"),
            wandb_group=args.get("wandb_group"), title=args.get("title"),
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    print(result.markdown(args.get("title")))
    for path in files.values():
        print(f"wrote {path}")


def inspect_tokens(argv: list[str]) -> None:
    from tokalign.config import ConfigError

    try:
        args = _args(argv, "inspect", {"run_dir", "out", "num_examples", "max_new_tokens", "progress"})
        if "run_dir" not in args:
            raise ConfigError("tokalign inspect needs run_dir=<a finished run directory>")
        from tokalign.inspect_view import inspect_run

        path = inspect_run(
            args.run_dir, out=args.get("out"), num_examples=int(args.get("num_examples", 4)),
            max_new_tokens=args.get("max_new_tokens"), progress=float(args.get("progress", 1.0)),
        )
    except (*_user_errors(), FileNotFoundError, ValueError) as err:
        _fail(err)
    print(f"wrote {path}")


COMMANDS = {"train": train, "eval": evaluate, "table": table, "inspect": inspect_tokens}


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
