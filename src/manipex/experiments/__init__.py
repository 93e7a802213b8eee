"""The papers' experiments as configs, run crash-safe into a result store, with reports."""
from . import audit, papers, papers_models, pasliev  # noqa: F401  (register the experiments)
from .base import EXPERIMENTS, Experiment, Unit
from .config import ConfigError
from .report import report_from_folder
from .runner import load_config, run
from .store import ResultStore

__all__ = ["EXPERIMENTS", "Experiment", "Unit", "ConfigError", "ResultStore", "run", "load_config",
           "report_from_folder"]
