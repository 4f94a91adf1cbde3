"""The `tokalign` command: subcommands taking Hydra-style `key=value` arguments, each with `--help`.

`tokalign train ...` is a real Hydra app (multirun `-m`, `--cfg job`, sweeps, launcher plugins).
A user error (a bad value, a missing file, a busy run directory) is one line on stderr and
exit status 2 (Ctrl-C: 130); anything else is a bug and keeps its traceback. Hydra's own
messages for a typo or a wrong type are rephrased in the schema's terms ("did you mean",
the expected type). Start-up stays cheap: nothing heavy (torch, trl, deepspeed) is imported
until a job runs.
"""

from __future__ import annotations

import difflib
import re
import shlex
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokalign.config import conf_dir

GROUPS = {
    "method": "what to train; its knobs are method.<knob>",
    "model": "the policy (and frozen reference): tiny is built locally; model.path=<dir> for any checkpoint",
    "dataset": "training and evaluation data: generated toy tasks, hub presets; dataset.path=<file> for your own",
    "logger": "where metrics go besides <run_dir>/metrics.jsonl",
    "launcher": "how processes start: in this process, DDP, or DeepSpeed ZeRO (see docs/scale_out.md)",
    "experiment": "a paper's setting or its laptop twin (with -m: its table sweep)",
    "arm": "one row of a paper table, <paper>/<row> or baseline/<method> (experiment sweeps choose them)",
    "hydra/launcher": "where -m runs its jobs: basic (here, one after another), submitit_local, slurm",
}


@dataclass
class Arg:
    name: str
    help: str
    required: bool = False


@dataclass
class Command:
    name: str
    description: str
    run: Callable[[list[str]], None]
    args: list[Arg] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    def usage(self) -> str:
        width = max((len(a.name) for a in self.args), default=0) + 2
        lines = [
            f"usage: tokalign {self.name} "
            + " ".join(f"{a.name}=..." if a.required else f"[{a.name}=...]" for a in self.args),
            "",
            self.description,
            "",
        ]
        if self.args:
            lines += ["arguments:"] + [f"  {a.name:<{width}}{a.help}" for a in self.args] + [""]
        if self.examples:
            lines += ["examples:"] + [f"  {e}" for e in self.examples]
        return "\n".join(lines)


_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")


def _fail(err: Exception | str) -> None:
    """A user error: one line on stderr, exit status 2 (OmegaConf's and Hydra's messages folded into it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.strip().startswith(_NOISE)]
    _end_progress_bars()
    print(f"tokalign: error: {' '.join(lines)}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


def _end_progress_bars() -> None:
    """Close the progress bars an error left open, so that its line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def _user_errors() -> tuple[type[Exception], ...]:
    from omegaconf.errors import OmegaConfBaseException

    from tokalign.errors import UserError

    return UserError, OmegaConfBaseException


def _args(argv: list[str], command: Command) -> dict:
    """`key=value` arguments as a dict; unknown or missing ones are a one-line error."""
    from omegaconf import OmegaConf

    from tokalign.errors import ConfigError

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(
            f"tokalign {command.name}: expected key=value arguments, got {' '.join(bad)} "
            f"(see tokalign {command.name} --help)"
        )
    args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    allowed = {a.name.split(".")[0] for a in command.args}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ConfigError(
            f"tokalign {command.name}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
        )
    missing = [a.name for a in command.args if a.required and a.name not in args]
    if missing:
        raise ConfigError(f"tokalign {command.name} needs {missing[0]}=... (see tokalign {command.name} --help)")
    return args


# ---------------------------------------------------------------------------------------------
# train


def _compose(overrides: list[str], groups: tuple[str, ...] = ()):
    """The config `tokalign train <overrides>` would run (with Hydra's node, and the options of `groups`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tokalign.app.compose import register

    register()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["output_dir=.", *overrides], return_hydra_config=True)
        repository = GlobalHydra.instance().config_loader().repository  # listed uncached: no copy per group
        return cfg, {g: _group_options(repository, g) for g in groups}


def _group_options(repository, group: str) -> list[str]:
    """A group's options, those of its folders as `folder/option` (arm/tgdpo/a05.yaml: tgdpo/a05)."""
    from hydra.core.object_type import ObjectType

    nested = [
        f"{sub}/{o}"
        for sub in repository.get_group_options(group, ObjectType.GROUP)
        for o in _group_options(repository, f"{group}/{sub}")
    ]
    return sorted(repository.get_group_options(group) + nested)


def _preflight(argv: list[str]) -> None:
    """A single run's config and run directory, checked before Hydra starts anything (or writes anything)."""
    from omegaconf import OmegaConf, open_dict

    from tokalign.app.compose import name_local_data, validate
    from tokalign.artifacts.files import refuse_links_out
    from tokalign.artifacts.rundir import check_free, check_unused, check_writable
    from tokalign.config import option
    from tokalign.runtime.nodes import check_joinable, multi_node

    cfg, _ = _compose(argv)
    name_local_data(cfg, argv)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    with open_dict(cfg):
        del cfg["hydra"]
    cfg = validate(cfg)
    check_writable(run_dir)
    if multi_node(cfg) and cfg.launcher.node_rank > 0:
        check_joinable(Path(run_dir), cfg, same_config=False)  # node 0's run dir: only another job is refused
    else:
        check_free(run_dir)
    refuse_links_out(run_dir, "run dir")
    if option(cfg.resume) == "never":
        check_unused(run_dir)


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _explain(err: Exception, argv: list[str]) -> Exception:
    """Hydra's composition error in the schema's terms: an unknown key gets "did you mean" (as with a
    leading +), a value of the wrong type the type that was expected. Anything else: unchanged."""
    from tokalign.errors import ConfigError

    text = str(err)
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        try:
            _compose_and_validate([f"+{a}" if _override_key(a) == key and not a.startswith("+") else a for a in argv])
        except ConfigError as explained:
            return explained
        except Exception:
            pass
        return err
    merging = re.match(r"Error merging override ([^=]+)=(.*)", text, re.S)
    full_key = getattr(err.__cause__, "full_key", None)
    if merging and full_key:
        key = re.sub(r"\[\d+\]$", "", str(full_key))
        expected = _expected(key, [a for a in argv if _override_key(a) != merging.group(1).lstrip("+~")])
        if expected:
            value = merging.group(2).strip()
            close = difflib.get_close_matches(value, expected.removeprefix("one of ").split(" | "), n=1)
            hint = f"; did you mean {close[0]}?" if expected.startswith("one of ") and close else ""
            return ConfigError(f"{merging.group(1).lstrip('+')}={value} is not {expected}{hint}")
    return err


def _compose_and_validate(argv: list[str]):
    from omegaconf import open_dict

    from tokalign.app.compose import validate

    cfg, _ = _compose(argv)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg)


def _expected(key: str, argv: list[str]) -> str | None:
    """What the schema expects at a dotted key ("a list of numbers, e.g. [0.9, 0.999]"), if it can say."""
    import dataclasses
    import typing

    from tokalign.app.help import describe_type
    from tokalign.app.registry import get_method
    from tokalign.config import RunConfig, launcher_schema

    parts = key.split(".")
    schema: typing.Any = RunConfig
    if parts[0] in ("method", "launcher"):
        try:
            cfg, _ = _compose(argv)
            schema = (
                get_method(cfg.method.get("algorithm") or cfg.method.name).config
                if parts[0] == "method"
                else launcher_schema(cfg.launcher.name)
            )
        except Exception:
            return None
        parts = parts[1:]
    field = None
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return None
        field = next((f for f in dataclasses.fields(schema) if f.name == part), None)
        if field is None:
            return None
        hint = typing.get_type_hints(schema)[part]
        schema = next((c for c in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(c)), hint)
    return describe_type(schema, field) if field is not None else None


def train_help(overrides: list[str]) -> str:
    """Config groups with their options, then the composed config with every knob's help."""
    from tokalign.app.help import annotated_config
    from tokalign.app.registry import registry

    cfg, options = _compose(overrides, tuple(GROUPS))
    methods = registry()
    lines = [
        "usage: tokalign train [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]",
        "",
        "Train a method on a model and dataset; a Hydra app (overrides, -m multiruns, sweeps, launcher plugins).",
        "",
        "config groups (group=option):",
    ]
    for group, what in GROUPS.items():
        lines.append(f"  {group:<15}{what}")
        if group == "method":
            lines += [
                f"      {o:<14}{methods[o].description if o in methods else 'a preset of ' + _preset_base(o)}"
                for o in options[group]
            ]
        else:
            lines.append("      " + ", ".join(options[group]))
    lines += [
        "",
        "the composed config (defaults and your overrides), each knob with its meaning:",
        "",
        annotated_config(cfg),
        "",
        "Reward spellings: README.md. Each method's maths and knobs: docs/methods.md.",
    ]
    return "\n".join(lines)


def _preset_base(option: str) -> str:
    """The method a preset YAML builds on: its first defaults entry (read, not composed: help stays fast)."""
    from omegaconf import OmegaConf

    path = Path(conf_dir()) / "method" / f"{option}.yaml"
    defaults = OmegaConf.load(path).get("defaults", []) if path.is_file() else []
    return next((d for d in defaults if isinstance(d, str) and d != "_self_"), "another method")


def train(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        try:
            print(train_help([a for a in argv if a not in ("-h", "--help") and "=" in a and not a.startswith("hydra")]))
        except _user_errors() as err:
            _fail(err)
        return
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from tokalign.app.compose import name_local_data, register, validate

    register()
    if not any(a.startswith("-") for a in argv):  # a single run: every error before anything starts, in one line
        try:
            _preflight(argv)
        except _user_errors() as err:
            _fail(err)
        except Exception as err:  # Hydra's composition errors (a bad override, a missing option)
            if type(err).__module__.startswith("hydra"):
                _fail(_explain(err, argv))
            raise

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
    def app(cfg: DictConfig):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from tokalign.artifacts.tracking import quiet
        from tokalign.cluster.preemption import Stopped
        from tokalign.runtime.launch import launch

        quiet()  # a SLURM job runs this in its own process, which never went through main()
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.logger.get("group") is None:
            cfg.logger.group = Path(hydra_cfg.sweep.dir).name  # a sweep's runs are one W&B group
        hydra_files = {
            "config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
        }
        try:
            name_local_data(cfg, list(hydra_cfg.overrides.task))
            cfg = validate(cfg)
            OmegaConf.resolve(cfg)
            return launch(cfg, hydra_files)
        except _user_errors() as err:
            if isinstance(err, Stopped) and hydra_cfg.mode != RunMode.MULTIRUN:
                err.args = (f"{err}; to continue: {resume_command(argv, cfg.output_dir)}",)
            if hydra_cfg.mode == RunMode.MULTIRUN and "BasicLauncher" not in str(hydra_cfg.launcher.get("_target_")):
                print(f"tokalign: error: {err}", file=sys.stderr)
                raise  # a job of a submitit/SLURM sweep: its launcher reports the point as failed
            _fail(err)
        except Exception:
            traceback.print_exc()
            print(
                "tokalign: internal error: the traceback above is a bug in tokalign or a library it calls; "
                "please report it with the command you ran",
                file=sys.stderr,
            )
            sys.exit(1)

    sys.argv = ["tokalign train", *argv]
    app()


def resume_command(argv: list[str], run_dir: str) -> str:
    """The command line that continues a stopped run: the same overrides, its directory, resume=auto."""
    kept = [a for a in argv if _override_key(a) not in ("resume", "hydra.run.dir")]
    return shlex.join(["tokalign", "train", *kept, f"hydra.run.dir={run_dir}", "resume=auto"])


# ---------------------------------------------------------------------------------------------
# eval, table, inspect


def evaluate(argv: list[str]) -> None:
    from omegaconf import OmegaConf

    from tokalign.artifacts.files import strict_json
    from tokalign.config import RolloutConfig

    try:
        args = _args(argv, COMMANDS["eval"])
        trust = {k: _flag(args, k) for k in ("trust_remote_code", "trust_run_code")}
        overrides = OmegaConf.create(args.get("eval", {}))  # only what was given: the run's own settings stand
        rollout = OmegaConf.merge(OmegaConf.structured(RolloutConfig), args["rollout"]) if "rollout" in args else None
        from tokalign.analysis.evaluate import evaluate_run, log_to_wandb

        metrics, columns, rows = evaluate_run(args["run_dir"], overrides, rollout=rollout, **trust)
        log_to_wandb(Path(args["run_dir"]), metrics, columns, rows)
    except _user_errors() as err:
        _fail(err)
    print(strict_json(metrics, indent=2))
    print(f"wrote {Path(args['run_dir']) / 'eval.json'} (earlier evaluations: {Path(args['run_dir']) / 'evals'})")


def _flag(args: dict, name: str) -> bool:
    from tokalign.errors import ConfigError

    value = args.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value} is not true or false")
    return value


def _number(args: dict, name: str, default, kind: type, low: float, high: float | None = None):
    """A numeric command-line argument within [low, high]; a ConfigError names it otherwise."""
    import math

    from tokalign.errors import ConfigError

    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{name}={value} is not {'an integer' if kind is int else 'a number'}")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        raise ConfigError(
            f"{name}={value} is out of range: expected >= {low}" + (f" and <= {high}" if high is not None else "")
        )
    return kind(value)


def _list(value) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def table(argv: list[str]) -> None:
    from tokalign.errors import ConfigError

    try:
        args = _args(argv, COMMANDS["table"])
        if "runs" not in args and "wandb" not in args:
            raise ConfigError("tokalign table needs runs=<sweep or run directory> (or wandb=<entity>/<project>)")
        from tokalign.analysis.table import make_report

        result, files = make_report(
            _list(args.get("runs")) or [],
            out=args.get("out"),
            group_by=_list(args.get("group_by")),
            metrics=_list(args.get("metrics")),
            curves=_list(args.get("curves")),
            wandb=args.get("wandb"),
            wandb_group=args.get("wandb_group"),
            title=args.get("title"),
            mixed_eval=bool(args.get("mixed_eval")),
        )
    except (*_user_errors(), FileNotFoundError) as err:
        _fail(err)
    print(result.markdown(args.get("title")))
    for path in files.values():
        print(f"wrote {path}")


def inspect_tokens(argv: list[str]) -> None:
    try:
        args = _args(argv, COMMANDS["inspect"])
        from tokalign.analysis.inspect import inspect_run

        max_new_tokens = args.get("max_new_tokens")
        settings = dict(
            num_examples=_number(args, "num_examples", 4, int, 1),
            max_new_tokens=None if max_new_tokens is None else _number(args, "max_new_tokens", 0, int, 1),
            progress=_number(args, "progress", 1.0, float, 0, 1),
            **{k: _flag(args, k) for k in ("trust_remote_code", "trust_run_code")},
        )
        path = inspect_run(args["run_dir"], out=args.get("out"), **settings)
    except _user_errors() as err:
        _fail(err)
    print(f"wrote {path}")


TRUST = Arg("trust_remote_code", "run the model's own Python code (false; a run directory never turns it on)")
TRUST_RUN = Arg(
    "trust_run_code",
    "import the reward functions (module:function) the run's config names and use the paths "
    "it names (false: a run directory is data; they are listed when true)",
)
COMMANDS = {
    "train": Command("train", "train a method on a model and dataset (a Hydra app; `tokalign train --help`)", train),
    "eval": Command(
        "eval",
        "evaluate a finished run and write <run_dir>/eval.json",
        evaluate,
        [
            Arg("run_dir", "a finished run directory", required=True),
            Arg(
                "eval.<knob>",
                "any evaluation knob, e.g. eval.num_prompts=64 eval.num_samples=4 eval.export=[alpaca_eval]",
            ),
            Arg(
                "rollout.<knob>",
                "how to sample (default: as the run did), e.g. rollout.engine=hf for a vLLM run on a CPU machine",
            ),
            TRUST,
            TRUST_RUN,
        ],
        [
            "tokalign eval run_dir=outputs/dpo/2026-11-27_12-00-00 eval.num_samples=4",
            "tokalign eval run_dir=... eval.export=[alpaca_eval,mt_bench,arena_hard] eval.export_questions=q.jsonl",
        ],
    ),
    "table": Command(
        "table",
        "tables (Markdown, CSV; mean ± std over seeds) and training curves from the runs of a sweep",
        table,
        [
            Arg("runs", "a sweep directory, a run directory, or a list of them"),
            Arg("out", "where to write table.md, table.csv and the plots (default <runs>/table)"),
            Arg("group_by", "config keys or Hydra choices that make a row, e.g. [method.name,method.alpha]"),
            Arg("metrics", "final metrics as columns (default: every eval/ metric)"),
            Arg("curves", "training metrics to plot over steps (default: loss and reward-like keys)"),
            Arg("wandb", "read runs from W&B instead: <entity>/<project>"),
            Arg("wandb_group", "only the W&B runs of this group"),
            Arg("title", "a title above the table"),
            Arg(
                "mixed_eval",
                "true: tabulate runs evaluated with different settings (refused by default; the table names them)",
            ),
        ],
        [
            "tokalign table runs=multirun/2026-11-27_12-00-00",
            "tokalign table runs=multirun/... group_by=[method.name] metrics=[eval/win_rate] out=table/",
        ],
    ),
    "inspect": Command(
        "inspect",
        "an HTML page of sample responses, each token coloured by what the method used",
        inspect_tokens,
        [
            Arg("run_dir", "a finished run directory", required=True),
            Arg("out", "the page to write (default <run_dir>/inspect.html)"),
            Arg("num_examples", "examples (pairs, rollouts or groups) to show (default 4)"),
            Arg("max_new_tokens", "longest sampled response, for methods that sample"),
            Arg("progress", "where in training to show a schedule such as D³S's (0-1, default 1)"),
            TRUST,
            TRUST_RUN,
        ],
        ["tokalign inspect run_dir=outputs/tgdpo/2026-11-27_12-00-00 num_examples=8"],
    ),
}


def usage() -> str:
    lines = ["usage: tokalign <command> [arguments ...]", "", "commands:"]
    lines += [f"  {c.name:<9}{c.description}" for c in COMMANDS.values()]
    lines += [
        "",
        "`tokalign <command> --help` describes a command's arguments; `-v` shows the libraries' own warnings too.",
        "Runs write to their own directory (resolved.yaml, metrics.jsonl, model/, eval.json, summary.json, wandb/).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-v", "--verbose"} & set(argv):  # the libraries' own lines too (workers inherit it)
        argv = [a for a in argv if a not in ("-v", "--verbose")]
        os.environ["TOKALIGN_VERBOSE"] = "1"
    from tokalign.artifacts.tracking import quiet

    quiet()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tokalign: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name]
    if name != "train" and any(a in ("-h", "--help") for a in rest):
        print(command.usage())
        return
    try:
        command.run(rest)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops at a step boundary instead)
        print("\ntokalign: error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
