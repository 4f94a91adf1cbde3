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


def _kind(hint: Any, plural: bool = False) -> str | None:
    """How a type hint reads in a message: "an integer", "numbers", "one of a | b"."""
    import enum

    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        inner = _kind(next(a for a in args if a is not type(None)), plural)
        return None if inner is None else f"{inner} or null"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + " | ".join(str(m.value) for m in hint)
    if typing.get_origin(hint) is list:
        inner = _kind(args[0], plural=True) if args else None
        return f"a list of {inner}" if inner and args[0] is not Any else "a list"
    if typing.get_origin(hint) is dict:
        return "a mapping {key: value}"
    names = {
        bool: ("true or false", "true/false values"),
        int: ("an integer", "integers"),
        float: ("a number", "numbers"),
        str: ("text", "texts"),
    }
    return names[hint][plural] if hint in names else None


def describe_type(hint: Any, field: dataclasses.Field) -> str | None:
    """What a knob expects, with its default as an example when that helps: "a list of numbers, e.g. [0.9, 0.999]"."""
    kind = _kind(hint)
    if kind is None:
        return None
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    example = json.dumps(default).replace(" ", "") if isinstance(default, (list, dict)) and default else ""
    if 0 < len(example) <= 40:
        kind += f", e.g. {example}"
    return kind
