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

Each experiment's keys are the fields of its :class:`Config` dataclass, with types and bounds.
Unknown keys, wrong types, values out of range, unknown methods, defenses or datasets fail with
a :class:`ConfigError` that names the key, before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem, naming the key."""


Choices = Union[Tuple[str, ...], Callable[[], Tuple[str, ...]], None]


@dataclass(frozen=True)
class Field:
    """One configuration key as the template, the command line and the checks see it, derived
    from a field of a :class:`Config` dataclass: its ``kind`` (``int``, ``float``, ``bool``,
    ``str``, ``list[str]``, ``list[float]``, ``optional_float``), default, help, the allowed
    values of strings and the bounds of numbers (``ge``/``gt``/``le``/``lt``, for lists: of
    every item)."""

    name: str
    kind: str
    default: Any
    help: str = ""
    choices: Optional[Tuple[str, ...]] = None
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    empty: bool = False

    def bounds_text(self) -> str:
        parts = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                 f"<= {self.le:g}" if self.le is not None else "", f"< {self.lt:g}" if self.lt is not None else ""]
        return ", ".join(p for p in parts if p)

    def check(self, value: Any) -> Any:
        """``value`` converted to this key's type, or a :class:`ConfigError` naming the key."""
        key, kind = self.name, self.kind

        def bad(expected: str) -> ConfigError:
            return ConfigError(f"config key {key!r} must be {expected}, got {value!r} ({type(value).__name__})")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad("an integer")
        elif kind == "float":
            if not number(value):
                raise bad("a number")
            value = float(value)
        elif kind == "optional_float":
            if value is not None and not number(value):
                raise bad("a number")
            value = None if value is None else float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise bad("true or false")
        elif kind == "str":
            if not isinstance(value, str):
                raise bad("a string")
        elif kind in ("list[str]", "list[float]"):
            strings = kind == "list[str]"
            what = "strings" if strings else "numbers"
            if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) if strings else not number(v)
                                                            for v in value):
                raise bad(f"a list of {what}")
            if not value and not self.empty:
                raise bad(f"a non-empty list of {what}")
            value = list(value) if strings else [float(v) for v in value]
        else:  # pragma: no cover - a Config with an unsupported annotation fails at its definition
            raise TypeError(f"config key {key!r}: unsupported kind {kind!r}")
        items = value if isinstance(value, list) else [value]
        if self.choices is not None:
            for v in items:
                if v not in self.choices:
                    raise ConfigError(f"config key {key!r}: unknown value {v!r}; choose from {', '.join(self.choices)}")
        for v in items:
            if not number(v):
                continue
            if (self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt) or (
                    self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt):
                raise ConfigError(f"config key {key!r} must be {self.bounds_text()}, got {v!r}")
        return value


def key(default: Any, help: str = "", *, ge: Optional[float] = None, gt: Optional[float] = None,
        le: Optional[float] = None, lt: Optional[float] = None, choices: Choices = None, empty: bool = False):
    """A field of a :class:`Config` dataclass: its default, help and constraints.

    ``choices`` may be a function returning them (evaluated when the config is checked, so that
    methods registered later are accepted); ``empty`` allows an empty list."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "empty": empty}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def profile_key(default: str, paper: str):
    """The ``profile`` key of an experiment with a ``PROFILES["paper"]``: ``default`` and ``paper``
    say what each runs and how long it takes."""
    return key("default", f"default: {default}; paper: {paper}; keys you set win", choices=("default", "paper"))


_KINDS = {int: "int", float: "float", bool: "bool", str: "str", List[str]: "list[str]", List[float]: "list[float]",
          Optional[float]: "optional_float"}


@dataclass(frozen=True)
class Config:
    """Base of every experiment's configuration: a frozen dataclass whose fields (made with
    :func:`key`) carry their type, default, help and bounds. The TOML template
    (:meth:`template`), the command line flags (:mod:`manipex.cli`) and the checks
    (:meth:`resolve`) are all derived from them. Subclasses add fields and may override
    :meth:`check` for checks across keys or on the file system.

    ``PROFILES`` names sets of values (e.g. ``"paper"``: the paper's protocol) that a ``profile``
    key selects; keys the user gives win over the profile's."""

    PROFILES: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def fields(cls) -> Dict[str, Field]:
        """The keys of this config, in definition order (a base class's keys first)."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            kind = _KINDS.get(hints[f.name])
            if kind is None:
                raise TypeError(f"{cls.__name__}.{f.name}: unsupported config type {hints[f.name]!r}")
            meta = dict(f.metadata)
            choices = meta.pop("choices", None)
            if callable(choices):
                choices = tuple(choices())
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out[f.name] = Field(f.name, kind, default, choices=choices, **meta)
        return out

    @classmethod
    def resolve(cls, *layers: Mapping[str, Any], sources: Sequence[str] = ()) -> "Config":
        """The defaults updated by each mapping of ``layers`` in turn (a file, then the command
        line), every key and value checked, then :meth:`check`. ``sources`` names each layer
        for messages about unknown keys."""
        fields = cls.fields()
        values = {name: f.default for name, f in fields.items()}
        given = set()
        for i, layer in enumerate(layers):
            source = sources[i] if i < len(sources) else "config"
            for name, value in layer.items():
                if name not in fields:
                    close = difflib.get_close_matches(name, list(fields), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{source}: unknown key {name!r}{hint}; valid keys: {', '.join(fields)}")
                values[name] = fields[name].check(value)
                given.add(name)
        for name, value in cls.PROFILES.get(values.get("profile"), {}).items():
            if name not in given:  # a profile sets the keys the user left alone
                values[name] = value
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Checks across keys or on the file system, before any work; raise :class:`ConfigError`
        naming the key. Types, choices and bounds are already checked."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def differences(self, stored: Mapping[str, Any]) -> List[str]:
        """Messages naming each key whose value differs from ``stored`` (a resumed run's config)."""
        mine = self.to_dict()
        out = []
        for name in list(mine) + [k for k in stored if k not in mine]:
            if name not in stored:
                out.append(f"{name!r} is new (now {mine[name]!r})")
            elif name not in mine:
                out.append(f"{name!r} is no longer a key (stored {stored[name]!r})")
            elif stored[name] != mine[name]:
                out.append(f"{name!r} was {stored[name]!r}, now {mine[name]!r}")
        return out

    @classmethod
    def template(cls, experiment: str, title: str) -> str:
        """A TOML config of the defaults, each key with its help as a comment: a file to copy and
        edit (``manipex list EXPERIMENT``). Reading it back gives the defaults."""
        lines = [f"# {title}", f'experiment = "{experiment}"']
        for name, f in cls.fields().items():
            notes = f.help
            if f.choices is not None and len(f.choices) <= 16:
                notes += f" [{', '.join(f.choices)}]"
            if f.bounds_text():
                notes += f" ({f.bounds_text()})"
            if f.kind == "optional_float" and f.default is None:
                lines.append(f"# {name} = 0.0  # {notes}; unset: none")
                continue
            lines.append(f"{name} = {_toml_value(f.default)}" + (f"  # {notes}" if notes else ""))
        return "\n".join(lines) + "\n"


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


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings or numbers are valid TOML as JSON
