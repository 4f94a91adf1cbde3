"""Composing a run's config: the options Hydra composes from, and the one validation pass.

`register()` puts the root schema and each group's built-in options into Hydra's ConfigStore,
straight from the dataclasses (every method's `Config`, built-in or plugin, the launchers, the
default model, dataset and logger), so `conf/` holds only presets and experiments.
`validate(cfg)` then checks a composed config completely, in well under a second and before
any model, dataset or W&B run exists: the schema (unknown keys, types, enumerations), every
knob's range, the relations between knobs (the root's and the method's own `check`), and the
spelling of every reward. It returns a typed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tokalign import rewards
from tokalign.app.registry import available_methods, get_method, registry
from tokalign.app.sweep import register_resolver
from tokalign.config import (
    LAUNCHERS,
    DatasetConfig,
    LoggerConfig,
    LoggerName,
    ModelConfig,
    RunConfig,
    check_bounds,
    check_relations,
    launcher_schema,
    require,
)
from tokalign.data import mixture
from tokalign.errors import ConfigError
from tokalign.modeling import templates


def register() -> None:
    """Make the schemas and built-in options Hydra configs (idempotent)."""
    from hydra.core.config_store import ConfigStore

    register_resolver()
    store = ConfigStore.instance()
    if "tokalign_schema.yaml" in store.repo:
        return
    store.store(name="tokalign_schema", node=RunConfig)
    for name, method in registry().items():
        store.store(group="method", name=name, node=method.config)
    for name, schema in LAUNCHERS.items():
        store.store(group="launcher", name=name, node=schema)
    store.store(group="model", name="tiny", node=ModelConfig)
    store.store(group="dataset", name="toy_pref", node=DatasetConfig)
    store.store(group="logger", name="wandb", node=LoggerConfig)
    store.store(group="logger", name="none", node=LoggerConfig(name=LoggerName.none))
    store.store(group="logger", name="tensorboard", node=LoggerConfig(name=LoggerName.tensorboard))


def name_local_data(cfg: DictConfig, overrides: list[str]) -> None:
    """A local file names its dataset (its stem: pairs.jsonl -> pairs) unless dataset.name is given, so that
    runs, tables and W&B do not call it by the preset it was loaded through."""
    path = OmegaConf.select(cfg, "dataset.path", default=None)
    if path and not any(o.lstrip("+~").startswith("dataset.name=") for o in overrides):
        with open_dict(cfg):
            cfg.dataset.name = Path(str(path)).expanduser().stem


def _merge(schema: Any, node: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{where}{'.' + key if key else ''}: {message}") from None


def _evaluation_metrics(e: DictConfig) -> set[str]:
    """Every metric the generation evaluation can report under these eval settings (which of them it does
    depends on the data: a verifiable task reports accuracy and pass@k, the others rewards and win rates)."""
    names = {"num_prompts", "mean_response_chars", "kl_ref", "word_salad", "malformed", "accuracy", "accuracy_ref"}
    names |= {"gold_reward", "gold_reward_ref", "win_rate"}
    names |= {f"pass@{k}{ref}" for k in (*e.pass_k, e.num_samples) for ref in ("", "_ref")}
    for spec in rewards.extra_specs(e):
        label = rewards.parse(spec, "eval.extra_rewards")[0].label
        name, win = ("rm_score", "rm_win_rate") if label == "reward_model" else (label, f"{label}_win_rate")
        names |= {name, f"{name}_ref", win}
    return names


def validate(cfg: DictConfig) -> DictConfig:
    """A typed, checked copy of a composed config (interpolations kept); ConfigError names what is wrong."""
    method_node = cfg.get("method")
    if not isinstance(method_node, DictConfig) or not (method_node.get("algorithm") or method_node.get("name")):
        raise ConfigError("no method selected: pass method=<name>, one of " + ", ".join(available_methods()))
    method = get_method(method_node.get("algorithm") or method_node.name)  # run dirs of earlier releases: name
    out = _merge(RunConfig, cfg, "config")
    with open_dict(out):
        out.method = _merge(method.config, cfg.method, "method")
        out.method.algorithm = method.name
        out.launcher = _merge(launcher_schema(cfg.launcher.name), cfg.launcher, "launcher")
    OmegaConf.set_struct(out, True)
    check_bounds(RunConfig, out, "")
    check_bounds(method.config, out.method, "method")
    check_bounds(launcher_schema(out.launcher.name), out.launcher, "launcher")
    check_relations(out)
    rewards.parse(rewards.configured(out.eval, "eval.reward"), "eval.reward")
    for spec in rewards.extra_specs(out.eval):
        rewards.parse(spec, "eval.extra_rewards")
    rewards.parse(out.dataset.on_policy.reward, "dataset.on_policy.reward")
    require(
        method.lora or not out.model.lora.enabled,
        f"method={out.method.name} cannot train LoRA adapters: set model.lora.enabled=false (a full fine-tune)",
    )
    require(
        out.eval.every_steps == 0 or method.evaluate is None,
        f"eval.every_steps: method={out.method.name} has its own evaluation, run at the end only; "
        "set eval.every_steps=0",
    )
    best = str(out.eval.best_metric or "").removeprefix("eval/")
    known = _evaluation_metrics(out.eval)
    require(
        not best or best in known,
        f"eval.best_metric={out.eval.best_metric} is not a metric of the evaluation; one of: {', '.join(sorted(known))}",
    )
    templates.check_source(out.model.chat_template)
    mixture.check(out.dataset)
    if method.check is not None:
        method.check(out)
    return out
