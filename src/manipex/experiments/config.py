"""Experiment configuration: typed fields with defaults, read from TOML, validated before any work.

A config is a flat TOML table whose keys are the experiment's fields, e.g.::

    n = 32
    eps = 0.1
    methods = ["gradient", "lrp"]

Unknown keys, wrong types, unknown methods, defenses or datasets fail with a
:class:`ConfigError` that names the key, before any model is loaded.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem, naming the key."""


@dataclass(frozen=True)
class Field:
    """One configuration key: its type (``int``, ``float``, ``str``, ``bool``, ``list[str]``,
    ``list[float]``), default, help text and, for strings, the allowed values."""

    kind: str
    default: Any
    help: str = ""
    choices: Optional[Tuple[str, ...]] = None


def _check_value(key: str, field: Field, value: Any) -> Any:
    kind = field.kind
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key {key!r} must be {expected}, got {value!r} ({type(value).__name__})")

    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
    elif kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad("a number")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif kind == "optional_float":
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise bad("a number")
    elif kind in ("list[str]", "list[float]"):
        item = str if kind == "list[str]" else (int, float)
        if not isinstance(value, (list, tuple)) or not value or any(
            not isinstance(v, item) or isinstance(v, bool) for v in value
        ):
            raise bad(f"a non-empty list of {'strings' if item is str else 'numbers'}")
        value = list(value) if item is str else [float(v) for v in value]
    if field.choices is not None:
        for v in value if isinstance(value, list) else [value]:
            if v not in field.choices:
                raise ConfigError(f"config key {key!r}: unknown value {v!r}; choose from {', '.join(field.choices)}")
    return value


def resolve(schema: Mapping[str, Field], overrides: Mapping[str, Any], *, source: str = "config") -> Dict[str, Any]:
    """Defaults of ``schema`` updated by ``overrides``, every key and value checked."""
    config = {k: f.default for k, f in schema.items()}
    for key, value in overrides.items():
        if key not in schema:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(schema)}")
        config[key] = _check_value(key, schema[key], value)
    return config


def read_toml(path: Path) -> Dict[str, Any]:
    """The table of a TOML file (``experiment = "..."`` may name the experiment)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def method_choices() -> Tuple[str, ...]:
    from ..explainers import methods

    return tuple(methods())


def dataset_choices() -> Tuple[str, ...]:
    from ..data import datasets

    return tuple(datasets())
