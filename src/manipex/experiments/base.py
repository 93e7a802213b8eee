"""One base for the papers' experiments: units of work, their rows, tables and figures."""
from __future__ import annotations

import abc

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping

from torch import Tensor

from .config import Field

EXPERIMENTS: Dict[str, "Experiment"] = {}


@dataclass(frozen=True)
class Unit:
    """A piece of work whose rows are stored together; ``id`` is stable across runs."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)


class Experiment(abc.ABC):
    """Base of an experiment. Subclasses set ``name``, ``title``, ``schema`` and implement
    :meth:`units`, :meth:`setup`, :meth:`run_unit` and :meth:`tables`; :meth:`figures` is
    optional. Units must be deterministic given the config (each seeds itself), so that a
    resumed or sharded run gives exactly the rows of an uninterrupted one."""

    name: str = ""
    title: str = ""
    schema: Dict[str, Field] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            EXPERIMENTS[cls.name] = cls()

    def check(self, config: Dict[str, Any]) -> None:
        """Checks across keys or on the file system (paths), before any work; raise
        :class:`~manipex.experiments.config.ConfigError` naming the key. Types and choices
        are already checked from ``schema``."""

    @abc.abstractmethod
    def units(self, config: Dict[str, Any]) -> List[Unit]:
        ...

    @abc.abstractmethod
    def setup(self, config: Dict[str, Any], device: str) -> Dict[str, Any]:
        """Load what the units need (model, data); called once, only if a unit must run. The
        runner adds ``ctx["out"]``, the run folder, where units may keep artifacts (models,
        checkpoints, example maps for the figures), and ``ctx["progress"]``, whether long
        steps inside a unit may show their own progress bar."""
        ...

    @abc.abstractmethod
    def run_unit(self, unit: Unit, ctx: Dict[str, Any], config: Dict[str, Any]) -> List[Dict[str, Any]]:
        ...

    @abc.abstractmethod
    def tables(self, df, config: Dict[str, Any]) -> Dict[str, Any]:
        """Named pandas DataFrames in the paper's layout, from the stored rows."""
        ...

    def figures(self, df, config: Dict[str, Any], out: Path) -> List[Path]:
        """Figures written under ``out``; none by default."""
        return []


def to_float(t: Tensor) -> List[float]:
    return [float(v) for v in t.detach().cpu().flatten()]
