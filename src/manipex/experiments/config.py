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

A config is small, and what reads it is bounded: a file over 1 MB (:data:`MAX_FILE_BYTES`), more
than 10,000 values once YAML aliases are expanded (:data:`MAX_NODES`; a "billion laughs" file is
refused before it is expanded), nesting deeper than :data:`MAX_DEPTH`, a NaN or infinite number,
an integer beyond the key's bound (every integer key has one, :data:`MAX_INT` at most), a string
over :data:`MAX_TEXT` characters and a list over :data:`MAX_ITEMS` items are refused with a
:class:`ConfigError`. Messages quote a user's value cut to a few dozen characters
(:func:`short`), and no message is longer than :data:`MAX_MESSAGE` characters.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .._validation import cut, short
from ..explainers import methods

#: the largest config file read, in bytes
MAX_FILE_BYTES = 1 << 20
#: the most values (scalars, lists and tables, counted after YAML aliases are expanded) in a config file
MAX_NODES = 10_000
#: the deepest nesting of lists and tables in a config file (a config is a flat table of scalars and lists)
MAX_DEPTH = 32
#: the largest value of an integer key without a tighter upper bound
MAX_INT = 2**31 - 1
#: the longest string value (a path, a name), in characters
MAX_TEXT = 4096
#: the most items of a list value
MAX_ITEMS = 1000
#: the longest message of a :class:`ConfigError`, in characters
MAX_MESSAGE = 960


class ConfigError(ValueError):
    """A configuration problem, naming the key. Its message is at most :data:`MAX_MESSAGE`
    characters long: a longer one keeps its beginning and its end."""

    def __init__(self, message: Any = "", *args: Any) -> None:
        text = str(message)
        if len(text) > MAX_MESSAGE:
            head, tail = MAX_MESSAGE - 240, 200
            text = f"{text[:head]} ... ({len(text) - head - tail} chars cut) ... {text[-tail:]}"
        super().__init__(text, *args)


Choices = Union[Tuple[str, ...], Callable[[], Tuple[str, ...]], None]


@dataclass(frozen=True)
class Field:
    """One configuration key as the template, the command line and the checks see it, derived
    from a field of a :class:`Config` dataclass: its ``kind`` (``int``, ``float``, ``bool``,
    ``str``, ``list[str]``, ``list[float]``, ``optional_float``), default, help, the allowed
    values of strings and the bounds of numbers (``ge``/``gt``/``le``/``lt``, for lists: of
    every item).

    Beyond the declared bounds, every key has these: numbers are finite (NaN and infinities are
    refused), an integer is at most :data:`MAX_INT` where no tighter upper bound is declared, a
    string is at most :data:`MAX_TEXT` characters without NUL, a list at most :data:`MAX_ITEMS`
    items without repeats (a repeated method or budget would run the same units twice)."""

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
        parts = [f">= {_number(self.ge)}" if self.ge is not None else "",
                 f"> {_number(self.gt)}" if self.gt is not None else "",
                 f"<= {_number(self.le)}" if self.le is not None else "",
                 f"< {_number(self.lt)}" if self.lt is not None else ""]
        return ", ".join(p for p in parts if p)

    def _violated(self, v: float) -> Optional[str]:
        """The bound that ``v`` breaks, as text, or None."""
        if self.ge is not None and v < self.ge:
            return f">= {_number(self.ge)}"
        if self.gt is not None and v <= self.gt:
            return f"> {_number(self.gt)}"
        if self.le is not None and v > self.le:
            return f"<= {_number(self.le)}"
        if self.lt is not None and v >= self.lt:
            return f"< {_number(self.lt)}"
        if self.kind == "int" and self.le is None and self.lt is None and v > MAX_INT:
            return f"<= {MAX_INT}"
        return None

    def check(self, value: Any) -> Any:
        """``value`` converted to this key's type, or a :class:`ConfigError` naming the key."""
        key, kind = self.name, self.kind

        def bad(expected: str, shown: Any = value) -> ConfigError:
            return ConfigError(f"config key {key!r} must be {expected}, got {short(shown)} ({type(shown).__name__})")

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def real(v: Any) -> float:
            try:
                out = float(v)
            except OverflowError:  # an integer beyond any float
                out = math.inf
            if not math.isfinite(out):
                raise bad("a finite number", v)
            return out

        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad("an integer")
        elif kind == "float":
            if not number(value):
                raise bad("a number")
            value = real(value)
        elif kind == "optional_float":
            if value is not None and not number(value):
                raise bad("a number")
            value = None if value is None else real(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise bad("true or false")
        elif kind == "str":
            if not isinstance(value, str):
                raise bad("a string")
            self._check_text(value)
        elif kind in ("list[str]", "list[float]"):
            strings = kind == "list[str]"
            what = "strings" if strings else "numbers"
            if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) if strings else not number(v)
                                                            for v in value):
                raise bad(f"a list of {what}")
            if not value and not self.empty:
                raise bad(f"a non-empty list of {what}")
            if len(value) > MAX_ITEMS:
                raise ConfigError(f"config key {key!r}: a list of at most {MAX_ITEMS} items, got {len(value)}")
            if strings:
                for v in value:
                    self._check_text(v)
            value = list(value) if strings else [real(v) for v in value]
            seen = set()
            for v in value:
                if v in seen:
                    raise ConfigError(f"config key {key!r} lists {short(v)} twice")
                seen.add(v)
        else:  # pragma: no cover - a Config with an unsupported annotation fails at its definition
            raise TypeError(f"config key {key!r}: unsupported kind {kind!r}")
        items = value if isinstance(value, list) else [value]
        if self.choices is not None:
            for v in items:
                if v not in self.choices:
                    raise ConfigError(f"config key {key!r}: unknown value {short(v)}; {_choose_from(v, self.choices)}")
        for v in items:
            if not number(v):
                continue
            broken = self._violated(v)
            if broken is not None:
                whole = self.bounds_text()
                also = f" (allowed: {whole})" if whole and whole != broken else ""
                raise ConfigError(f"config key {key!r} must be {broken}, got {short(v)}{also}")
        return value

    def _check_text(self, text: str) -> None:
        if len(text) > MAX_TEXT:
            raise ConfigError(f"config key {self.name!r}: a string of at most {MAX_TEXT} characters, got "
                              f"{short(text, 40)}")
        if "\0" in text:
            raise ConfigError(f"config key {self.name!r}: a string without NUL characters, got {short(text, 40)}")


def _number(v: float) -> str:
    """A bound as text: integers in full (2147483647, not 2.14748e+09), others with %g."""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    return f"{v:g}"


def _choose_from(value: Any, choices: Sequence[str]) -> str:
    """``choose from a, b, c``, or for a long list the closest ones and how many there are."""
    if len(choices) <= 16:
        return f"choose from {', '.join(choices)}"
    close = difflib.get_close_matches(value, list(choices), n=3) if isinstance(value, str) and len(value) < 200 else []
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}{len(choices)} values: {', '.join(choices[:8])}, ..."


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
    def resolve(cls, *layers: Mapping[str, Any], sources: Sequence[str] = (), files: bool = True) -> "Config":
        """The defaults updated by each mapping of ``layers`` in turn (a file, then the command
        line), every key and value checked, then :meth:`check` and, with ``files``,
        :meth:`check_files`. ``sources`` names each layer for messages about unknown keys.
        ``files=False`` reads a stored config (``manipex report``): nothing on the file system
        is probed and no factory is imported."""
        fields = cls.fields()
        values = {name: f.default for name, f in fields.items()}
        given = set()
        for i, layer in enumerate(layers):
            source = sources[i] if i < len(sources) else "config"
            if not isinstance(layer, Mapping):
                raise ConfigError(f"{source}: a table of keys and values is needed, got a {type(layer).__name__}")
            for name, value in layer.items():
                if not isinstance(name, str):
                    raise ConfigError(f"{source}: keys are names (strings), got {short(name)} "
                                      f"({type(name).__name__}); valid keys: {', '.join(fields)}")
                if name not in fields:
                    close = difflib.get_close_matches(name, list(fields), n=1) if len(name) < 200 else []
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{source}: unknown key {short(name, 60)}{hint}; valid keys: {', '.join(fields)}")
                values[name] = fields[name].check(value)
                given.add(name)
        for name, value in cls.PROFILES.get(values.get("profile"), {}).items():
            if name not in given:  # a profile sets the keys the user left alone
                values[name] = value
        config = cls(**values)
        try:
            config.check()
            if files:
                config.check_files()
        except ConfigError:
            raise
        except (OSError, RuntimeError, ValueError) as err:  # a file-system probe that failed, e.g. ~nosuchuser/x
            raise ConfigError(f"config: a check of the keys failed: {type(err).__name__}: {cut(str(err), 300)}") \
                from None
        return config

    def check(self) -> None:
        """Checks across keys, before any work; raise :class:`ConfigError` naming the key.
        Types, choices and bounds are already checked."""

    def check_files(self) -> None:
        """Checks of what the keys name outside the config (files and folders exist, a factory
        module imports), before any work; raise :class:`ConfigError` naming the key. Not run
        where a stored config is only read (:meth:`resolve` with ``files=False``)."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def differences(self, stored: Mapping[str, Any]) -> List[str]:
        """Messages naming each key whose value differs from ``stored`` (a resumed run's config)."""
        mine = self.to_dict()
        out = []
        for name in list(mine) + [k for k in stored if k not in mine]:
            if name not in stored:
                out.append(f"{short(name)} is new (now {short(mine[name], 60)})")
            elif name not in mine:
                out.append(f"{short(name)} is no longer a key (stored {short(stored[name], 60)})")
            elif stored[name] != mine[name]:
                out.append(f"{name!r} was {short(stored[name], 60)}, now {short(mine[name], 60)}")
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


def _read_bytes(path: Path) -> bytes:
    """The bytes of a config file, at most :data:`MAX_FILE_BYTES` of them."""
    name = short(str(path), 200)
    try:
        kind = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {name} cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(kind):
        raise ConfigError(f"config file {name} is a folder, not a file")
    if not stat.S_ISREG(kind):  # a FIFO, a device or a socket: reading it could wait forever
        raise ConfigError(f"config file {name} is not a regular file (a pipe, device or socket); give a file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {name} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {name} is a folder, not a file") from None
    except OSError as err:
        raise ConfigError(f"config file {name} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"config file {name} is larger than {MAX_FILE_BYTES // 1024} KB; a config is a small "
                          "table of keys")
    return data


def _walk_limits(root: Any, children: Callable[[Any], Iterable[Any]]) -> Optional[str]:
    """What is wrong with a graph of values (``children`` gives a value's parts) as a config:
    more than :data:`MAX_NODES` values once shared parts are counted each time they are used,
    nesting deeper than :data:`MAX_DEPTH`, or a value that contains itself; None if nothing.
    Iterative, and linear in the number of distinct values (sizes of shared parts are kept)."""
    size: Dict[int, int] = {}
    depth: Dict[int, int] = {}
    open_: set = set()
    stack: List[Tuple[Any, bool]] = [(root, False)]
    while stack:
        value, leaving = stack.pop()
        ident = id(value)
        if leaving:
            parts = list(children(value))
            size[ident] = 1 + sum(size[id(p)] for p in parts)
            depth[ident] = 1 + max((depth[id(p)] for p in parts), default=0)
            open_.discard(ident)
            if size[ident] > MAX_NODES:
                return f"it holds more than {MAX_NODES} values (counting each use of a YAML alias); a config is a " \
                       "flat table of keys"
            if depth[ident] > MAX_DEPTH:
                return f"it is nested more than {MAX_DEPTH} levels deep; a config is a flat table of keys"
            continue
        if ident in size:
            continue
        if ident in open_:
            return "a value contains itself (a recursive YAML alias)"
        open_.add(ident)
        stack.append((value, True))
        stack.extend((p, False) for p in children(value))
    return None


def _data_parts(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        return [x for kv in value.items() for x in kv]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return ()


def _parsed(path: Path, data: Any) -> Dict[str, Any]:
    """``data`` read from ``path``, checked to be a table of bounded size."""
    problem = _walk_limits(data, _data_parts)
    if problem:
        raise ConfigError(f"config file {short(str(path), 200)} is refused: {problem}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {short(str(path), 200)} must hold a mapping of keys to values at top level, "
                          f"got a {type(data).__name__}")
    return data


def read_toml(path: Path) -> Dict[str, Any]:
    """The table of a TOML file (``experiment = "..."`` may name the experiment)."""
    name = short(str(path), 200)
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (some editors write one) is no content
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {name} is not valid TOML: not UTF-8 text (byte {err.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {name} is not valid TOML: {cut(str(err), 300)}") from None
    except RecursionError:
        raise ConfigError(f"config file {name} is refused: it is nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"config file {name} is not valid TOML: {cut(str(err), 200)}") from None
    return _parsed(path, data)


# YAML 1.2 / TOML exponent floats that YAML 1.1 (PyYAML) leaves as strings: 1e-3, 5E-5, 2.5e3, .5e-2.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Refused(Exception):
    """A YAML document refused before it is constructed (see :func:`_walk_limits`)."""


def _node_parts(node: Any) -> Iterable[Any]:
    value = getattr(node, "value", None)
    if not isinstance(value, list):  # a scalar
        return ()
    return [x for item in value for x in (item if isinstance(item, tuple) else (item,))]


def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that reads plain ``1e-3`` as a float, rejects duplicate keys, and
        refuses a document whose expanded size or depth is beyond a config's before building it
        (aliases and merge keys are expanded only then)."""

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            problem = _walk_limits(node, _node_parts)
            if problem:
                raise _Refused(problem)
            return self.construct_document(node)

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
                        None, None, f"duplicate key {short(key, 60)}", mark)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))
    return yaml, Loader


# quoted strings, comments, and the brackets of YAML flow collections
_YAML_FLOW = re.compile(rb'"(?:[^"\\]|\\.)*"?|\'(?:[^\']|\'\')*\'?|(?:^|(?<=\s))#[^\n]*|[\[\]{}]', re.M | re.S)


def _flow_too_deep(raw: bytes) -> bool:
    """Whether ``[`` and ``{`` outside quotes and comments nest deeper than :data:`MAX_DEPTH`: a
    quick look before PyYAML, whose parser slows down with depth and recurses per level."""
    depth = 0
    for match in _YAML_FLOW.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in (b"]", b"}"):
            depth = max(0, depth - 1)
    return False


def read_yaml(path: Path) -> Dict[str, Any]:
    """The mapping of a YAML file, read with safe-load rules (see the module docstring)."""
    yaml, Loader = _yaml_loader()
    name = short(str(path), 200)
    raw = _read_bytes(path)
    if _flow_too_deep(raw):
        raise ConfigError(f"config file {name} is refused: it is nested more than {MAX_DEPTH} levels deep; a config "
                          "is a flat table of keys")
    try:
        data = yaml.load(raw, Loader=Loader)  # noqa: S506 -- Loader is a yaml.SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and cmark is not None and cmark is not mark:
            problem += f" ({context} at line {cmark.line + 1})"
        raise ConfigError(f"config file {name} is not valid YAML{where}: {cut(str(problem), 300)}") from None
    except _Refused as err:
        raise ConfigError(f"config file {name} is refused: {err}") from None
    except RecursionError:
        raise ConfigError(f"config file {name} is refused: it is nested too deeply") from None
    except Exception as err:  # PyYAML's constructors fail in many ways on odd values: !!timestamp x (AttributeError),
        # !!bool maybe (KeyError), !!float with no value (IndexError), 2001-13-45 and a 5000-digit integer (ValueError)
        raise ConfigError(f"config file {name} is not valid YAML: {type(err).__name__}: {cut(str(err), 200)}") \
            from None
    return _parsed(path, data)


_READERS = {".toml": read_toml, ".yaml": read_yaml, ".yml": read_yaml}


def read_config(path: Path) -> Dict[str, Any]:
    """The table of a config file, TOML (``.toml``) or YAML (``.yaml``, ``.yml``) by its suffix."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"config file {short(str(path), 200)}: unknown suffix {short(path.suffix, 40)}; "
                          f"use one of {', '.join(_READERS)}")
    return reader(path)


def method_choices() -> Tuple[str, ...]:
    return tuple(methods())


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings or numbers are valid TOML as JSON
