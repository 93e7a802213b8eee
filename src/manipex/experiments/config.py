"""Experiment configuration: typed fields with defaults, read from TOML or YAML, validated before any work.

A config is a flat table whose keys are the experiment's fields, in TOML (``.toml``)::

    experiment = "quick"
    n = 32
    eps = 0.1
    lr = 1e-3
    methods = ["gradient", "lrp"]

or the same in YAML (``.yaml`` or ``.yml``)::

    experiment: quick
    n: 32
    eps: 0.1
    lr: 1e-3
    methods: [gradient, lrp]

YAML is read with ``yaml.safe_load`` rules (no arbitrary objects). Two YAML traps are closed:
PyYAML follows YAML 1.1, where an unquoted ``1e-3`` or ``5E-5`` (no dot, or no exponent sign) is
a *string*; here such plain scalars are read as floats, as in YAML 1.2 and TOML (a quoted
``"1e-3"`` stays a string). A key given twice is an error, as in TOML, instead of the last one
silently winning. An empty YAML file is an empty config.

Unknown keys, wrong types, unknown methods, defenses or datasets fail with a
:class:`ConfigError` that names the key, before any model is loaded.
"""
from __future__ import annotations

import re
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


# YAML 1.2 / TOML exponent floats that YAML 1.1 (PyYAML) leaves as strings: 1e-3, 5E-5, 2.5e3, .5e-2.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that reads plain ``1e-3`` as a float and rejects duplicate keys."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: let SafeLoader report it
                    continue
                if duplicate:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", mark)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))
    return yaml, Loader


def read_yaml(path: Path) -> Dict[str, Any]:
    """The mapping of a YAML file, read with safe-load rules (see the module docstring)."""
    yaml, Loader = _yaml_loader()
    try:
        with open(path, "rb") as f:
            data = yaml.load(f, Loader=Loader)  # noqa: S506 -- Loader is a yaml.SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and cmark is not None and cmark is not mark:
            problem += f" ({context} at line {cmark.line + 1})"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values at top level, "
                          f"got a {type(data).__name__}")
    return data


_READERS = {".toml": read_toml, ".yaml": read_yaml, ".yml": read_yaml}


def read_config(path: Path) -> Dict[str, Any]:
    """The table of a config file, TOML (``.toml``) or YAML (``.yaml``, ``.yml``) by its suffix."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"config file {str(path)!r}: unknown suffix {path.suffix!r}; "
                          f"use one of {', '.join(_READERS)}")
    return reader(path)


def method_choices() -> Tuple[str, ...]:
    from ..explainers import methods

    return tuple(methods())


def dataset_choices() -> Tuple[str, ...]:
    from ..data import datasets

    return tuple(datasets())


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings or numbers are valid TOML as JSON


def template(experiment: str, title: str, schema: Mapping[str, Field]) -> str:
    """A TOML config of ``schema``'s defaults, each key with its help as a comment: a file to
    copy and edit (``manipex list EXPERIMENT``). Reading it back gives the defaults."""
    lines = [f"# {title}", f'experiment = "{experiment}"']
    for key, field in schema.items():
        help_text = field.help
        if field.choices is not None and len(field.choices) <= 12:
            help_text += f" [{', '.join(field.choices)}]"
        lines.append(f"{key} = {_toml_value(field.default)}" + (f"  # {help_text}" if help_text else ""))
    return "\n".join(lines) + "\n"
