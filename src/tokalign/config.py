"""The config schema: structured dataclasses that every composed config is checked against.

Hydra composes `conf/`; `validate` merges the result into these schemas so that a typo in
a YAML file or a bad value fails before any model is loaded, with the key named.
Each method's knobs are the `Config` dataclass of its module in `tokalign.methods`, and
each launcher's those of `tokalign.launch`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the accepted values."""


class ModelSource(str, Enum):
    tiny = "tiny"
    smollm2 = "smollm2"
    hub = "hub"


class DataSource(str, Enum):
    toy_pref = "toy_pref"
    toy_math = "toy_math"
    hub = "hub"
    local = "local"


class Pairs(str, Enum):
    synthetic = "synthetic"
    on_policy = "on_policy"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Resume(str, Enum):
    never = "never"
    auto = "auto"


class WandbMode(str, Enum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class TinySpec:
    arch: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 2
    num_heads: int = 4
    vocab_size: int = 512
    max_position_embeddings: int = 256
    seed: int = 0
    warmup_steps: int = 300


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class ModelConfig:
    name: str = "tiny"
    source: ModelSource = ModelSource.tiny
    hub_id: Optional[str] = None
    path: Optional[str] = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    tiny: TinySpec = field(default_factory=TinySpec)
    lora: LoraSpec = field(default_factory=LoraSpec)


@dataclass
class OnPolicySpec:
    num_samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 64


@dataclass
class DatasetConfig:
    name: str = "toy_pref"
    source: DataSource = DataSource.toy_pref
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    path: Optional[str] = None
    split: str = "train"
    eval_split: Optional[str] = None
    # canonical column -> column in the files (prompt, completion, chosen, rejected, answer)
    columns: dict[str, str] = field(default_factory=lambda: {c: c for c in ("prompt", "completion", "chosen", "rejected", "answer")})
    num_train: Optional[int] = None
    num_eval: int = 64
    seed: int = 0
    pairs: Pairs = Pairs.synthetic
    on_policy: OnPolicySpec = field(default_factory=OnPolicySpec)


@dataclass
class TrainerConfig:
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_steps: int = 60
    num_epochs: float = 1.0
    max_length: int = 128
    precision: Precision = Precision.fp32
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    save_steps: int = 0
    save_total_limit: int = 2
    eval_steps: int = 0
    num_workers: int = 0


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "tokalign"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None
    job_type: str = "train"


@dataclass
class EvalConfig:
    at_end: bool = True
    num_prompts: int = 64
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 32
    num_samples: int = 1
    num_table_rows: int = 16
    pass_k: list[int] = field(default_factory=lambda: [1])  # verifiable tasks: pass@k for k <= num_samples
    reward: Optional[str] = None  # a reward function (module.function); None: the dataset's own
    reward_model: Optional[str] = None  # a reward model (dir or method=reward run): RM score and win rate
    export: list[str] = field(default_factory=list)  # alpaca_eval | mt_bench | arena_hard
    export_questions: Any = None  # a questions file, or {exporter: file}; None: the run's eval prompts


@dataclass
class RunConfig:
    seed: int = 0
    run_name: str = "run"
    tags: list[str] = field(default_factory=list)
    output_dir: str = "outputs/run"
    cache_dir: str = "~/.cache/tokalign"
    resume: Resume = Resume.never
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    method: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: Any = None


def option(value: Any) -> Any:
    """The plain value of a config choice: typed configs hold Enum members, YAML files strings."""
    return value.value if isinstance(value, Enum) else value


def register_schema() -> None:
    """Make the root schema a Hydra config so `conf/config.yaml` composes onto typed nodes."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="tokalign_schema", node=RunConfig)


def method_module(name: str):
    """`tokalign.methods.<name>`: its `Config` dataclass, `DATA_KIND` and `train(run)`."""
    try:
        return importlib.import_module(f"tokalign.methods.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"tokalign.methods.{name}":
            raise
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None


def available_methods() -> list[str]:
    from importlib.resources import files

    return sorted(
        p.name.removesuffix(".py")
        for p in files("tokalign.methods").iterdir()
        if p.name.endswith(".py") and not p.name.startswith("_") and p.name != "common.py"
    )


def _merge(schema: Any, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid {where} config: {err.msg if hasattr(err, 'msg') else err}") from None


def validate(cfg: DictConfig) -> DictConfig:
    """Check a composed config against the schemas; returns a typed copy (interpolations kept)."""
    if cfg.get("method") is None or "name" not in cfg.method:
        raise ConfigError("no method selected: pass method=<name>, one of " + ", ".join(available_methods()))
    from tokalign.launch import launcher_schema

    out = _merge(RunConfig, cfg, "run")
    OmegaConf.set_struct(out, False)
    out.method = _merge(method_module(cfg.method.name).Config, cfg.method, f"method={cfg.method.name}")
    out.launcher = _merge(launcher_schema(cfg.launcher.name), cfg.launcher, f"launcher={cfg.launcher.name}")
    OmegaConf.set_struct(out, True)
    return out
