"""A composed config as YAML with each knob's one-line help (from its dataclass) beside it."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tokalign.app.registry import registry
from tokalign.config import LAUNCHERS, RunConfig, _dataclass_of, option


def _value(v: Any) -> str:
    if isinstance(v, (DictConfig, ListConfig)):
        return json.dumps(OmegaConf.to_container(v, enum_to_str=True))
    v = option(v)
    return "null" if v is None else json.dumps(v) if isinstance(v, bool) or (isinstance(v, str) and v == "") else str(v)


def _helps(schema: type) -> dict[str, str]:
    """Each field's help; a subclass that only changes a default keeps its base's help."""
    helps: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            helps.update({f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")})
    return helps


def _lines(node: DictConfig, schema: type | None, indent: int) -> list[str]:
    helps = _helps(schema) if schema else {}
    hints = typing.get_type_hints(schema) if schema else {}
    out = []
    for key in node:
        value = node._get_node(key)._value() if OmegaConf.is_interpolation(node, key) else node[key]
        help_text = helps.get(key, "")
        sub = _dataclass_of(hints[key]) if key in hints else None
        if key == "method" and isinstance(value, DictConfig):
            sub = registry()[value.algorithm].config
        elif key == "launcher" and isinstance(value, DictConfig):
            sub = LAUNCHERS.get(value.name)
        if isinstance(value, DictConfig) and (sub or len(value)):
            out.append(f"{'  ' * indent}{key}:" + (f"  # {help_text}" if help_text else ""))
            out += _lines(value, sub, indent + 1)
        else:
            text = _value(value)
            if OmegaConf.is_interpolation(node, key):
                try:  # a default that follows another knob: its value now, and where it comes from
                    text = f"{_value(node[key])}  ({value})"
                except Exception:  # noqa: BLE001 - resolvable only inside a run (e.g. ${hydra:...})
                    text = str(value)
            out.append(f"{'  ' * indent}{key}: {text}" + (f"  # {help_text}" if help_text else ""))
    return out


def annotated_config(cfg: DictConfig) -> str:
    shown = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    return "\n".join(_lines(shown, RunConfig, 0))
