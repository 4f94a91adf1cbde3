"""Every method tokalign can run: the packages under `tokalign.methods` and installed plugins.

A plugin is any installed distribution with an entry point in the `tokalign.methods` group
whose value is a `tokalign.bases.contract.Method`, e.g. in its pyproject.toml:

    [project.entry-points."tokalign.methods"]
    my_dpo = "my_package.my_dpo:METHOD"

It then works as `method=my_dpo` exactly like a built-in one.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil

from tokalign.bases.contract import Method
from tokalign.errors import ConfigError

ENTRY_POINT_GROUP = "tokalign.methods"


def _built_in() -> dict[str, Method]:
    import tokalign.methods as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            method = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "METHOD", None)
            if isinstance(method, Method):
                found[method.name] = method
    return found


def _plugins() -> dict[str, Method]:
    found = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            method = entry.load()
        except Exception as err:  # a broken plugin is named, not a traceback from its import
            raise ConfigError(
                f"the tokalign method plugin {entry.name!r} ({entry.value}) failed to load: {err}"
            ) from err
        if not isinstance(method, Method) or method.name != entry.name:
            raise ConfigError(
                f"the tokalign method plugin {entry.name!r} ({entry.value}) is not a Method named {entry.name!r}"
            )
        found[entry.name] = method
    return found


@functools.cache
def registry() -> dict[str, Method]:
    built_in, plugins = _built_in(), _plugins()
    clash = sorted(set(built_in) & set(plugins))
    if clash:
        raise ConfigError(f"method plugin(s) {', '.join(clash)} reuse a built-in method's name")
    return {**built_in, **plugins}


def available_methods() -> list[str]:
    return sorted(registry())


def get_method(algorithm: str) -> Method:
    """The method that runs `method.algorithm`."""
    methods = registry()
    if algorithm not in methods:
        raise ConfigError(f"method.algorithm={algorithm} is unknown; available: {', '.join(sorted(methods))}")
    return methods[algorithm]
