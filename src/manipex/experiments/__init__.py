"""The papers' experiments as configs, run crash-safe into a result store, with reports.

One module per experiment, named by its id: :mod:`.quick`, :mod:`.dombrowski2019`,
:mod:`.rieger2020`, :mod:`.tang_atex`, :mod:`.pasliev2020`, :mod:`.adult_fairwashing`, :mod:`.robust_training` and
:mod:`.audit`. Each has a typed config (a :class:`~.config.Config` dataclass) and a typed context.
"""
from . import (adult_fairwashing, audit, dombrowski2019, pasliev2020, quick, rieger2020, robust_training,  # noqa: F401
               tang_atex)
from .base import EXPERIMENTS, Context, Experiment, Unit, get_experiment
from .config import Config, ConfigError
from .report import report_from_folder
from .runner import load_config, run
from .store import ResultStore

__all__ = ["EXPERIMENTS", "Config", "Context", "Experiment", "Unit", "ConfigError", "ResultStore", "run",
           "load_config", "report_from_folder", "get_experiment"]
