"""manipex: attack and defend the explanation maps of neural networks.

>>> import manipex
>>> model = manipex.models.load_default("mnist")
>>> x, y = manipex.data.load("mnist5k", split="test")
>>> h = manipex.explain(model, x[:8], "lrp")
>>> r = manipex.relevance(h)
"""
from importlib import import_module
from typing import Any

from .explainers import explain, fit_patterns, methods, relevance
from .figures import plot_maps

__version__ = "0.1.0"

_SUBMODULES = {"models", "data", "surgery", "explainers", "cli", "metrics", "objectives", "attacks", "figures", "defenses", "geometry", "sanity"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'manipex' has no attribute {name!r}")


__all__ = ["explain", "relevance", "methods", "fit_patterns", "plot_maps", "__version__"]
