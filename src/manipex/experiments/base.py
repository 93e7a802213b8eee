"""One base for the papers' experiments: units of work, their rows, tables and figures.

An experiment is a subclass of :class:`Experiment` with a ``name`` (its id, also the name of its
module), a ``title``, a typed ``Config`` (a :class:`~manipex.experiments.config.Config`
dataclass) and a typed ``Context`` (what :meth:`Experiment.setup` loads once per run). Defining
the subclass registers it (:data:`EXPERIMENTS`, :func:`get_experiment`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Tuple, Type

from .._registry import Registry
from .config import Config, ConfigError
from .tables import Table, Tables

EXPERIMENTS: Registry["Experiment"] = Registry("experiment", error=ConfigError)


def get_experiment(name: str) -> "Experiment":
    """The experiment registered as ``name`` (a :class:`ConfigError` lists the available ones)."""
    return EXPERIMENTS.get(name)


@dataclass(frozen=True)
class Unit:
    """A piece of work whose rows are stored together; ``id`` is stable across runs."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Context:
    """What every unit may use: the run folder ``out`` (where units keep artifacts: models,
    checkpoints, example maps for the figures), the ``device``, and ``progress`` (whether long
    steps inside a unit may show their own progress bar). Experiments subclass it with what
    their :meth:`Experiment.setup` loads."""

    out: Path
    device: str = "cpu"
    progress: bool = False


class Experiment(abc.ABC):
    """Base of an experiment. Subclasses set ``name``, ``title``, ``Config`` and ``Context`` and
    implement :meth:`units`, :meth:`setup`, :meth:`run_unit` and :meth:`tables`;
    :meth:`figures` is optional. Units must be deterministic given the config (each seeds
    itself), so that a resumed or sharded run gives exactly the rows of an uninterrupted one."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    Config: ClassVar[Type[Config]] = Config
    Context: ClassVar[Type[Context]] = Context
    #: The report's ``(heading, caption)`` of each figure, by file stem: what it shows and how to
    #: read it (which direction is better). A key may hold one ``*`` (fnmatch); its match fills
    #: ``{}`` in the heading and caption. Every figure must have one (tested).
    captions: ClassVar[Dict[str, Tuple[str, str]]] = {}
    #: The tables :meth:`tables` may return, in report order, each with its short id, title,
    #: heading and caption (:class:`~manipex.experiments.tables.Table`).
    TABLES: ClassVar[Tuple[Table, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            EXPERIMENTS.register(cls.name, cls())

    @abc.abstractmethod
    def units(self, config: Any) -> List[Unit]:
        ...

    @abc.abstractmethod
    def setup(self, config: Any, run: Context) -> Context:
        """Load what the units need (model, data) into a ``Context``; called once, only if a
        unit must run. ``run`` holds the run folder, device and progress flag."""
        ...

    @abc.abstractmethod
    def run_unit(self, unit: Unit, ctx: Any, config: Any) -> List[Dict[str, Any]]:
        ...

    @abc.abstractmethod
    def tables(self, df, config: Any) -> Tables:
        """The tables in the paper's layout, from the stored rows: pandas DataFrames by the short
        ids of :attr:`TABLES` (start from :meth:`new_tables`)."""
        ...

    def new_tables(self) -> Tables:
        """An empty :class:`~manipex.experiments.tables.Tables` of this experiment's declared tables."""
        return Tables(self.TABLES)

    def findings(self, df, config: Any) -> List[Any]:
        """The papers' claims as this run finds them (:class:`~manipex.experiments.published.Finding`),
        shown first in the report; none by default."""
        return []

    def figures(self, df, config: Any, out: Path) -> List[Path]:
        """Figures written under ``out``; none by default."""
        return []
