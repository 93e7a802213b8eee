"""manipex: attack and defend the explanation maps of neural networks.

>>> import manipex
>>> model = manipex.models.load_default("mnist")
>>> x, y = manipex.data.load("mnist5k", split="test")
>>> h = manipex.explain(model, x[:8], "lrp")
>>> r = manipex.relevance(h)

Importing manipex asks Intel MKL for bitwise results independent of the thread count
(``MKL_CBWR=AUTO,STRICT``, unless ``MKL_CBWR`` is already set): a matrix product's reduction is
otherwise split by thread, and every map, attack and table would change with the machine's
core count. MKL reads the variable at its first call, so import manipex before the first
matrix product of the process (the ``manipex`` commands always do);
:func:`manipex._determinism.blas_reproducible` says whether it took effect.
"""
import os as _os

_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from importlib import import_module  # noqa: E402
from typing import Any  # noqa: E402

from .explainers import explain, fit_patterns, methods, relevance
from .figures import plot_maps

__version__ = "0.1.0"

_SUBMODULES = {"models", "data", "surgery", "explainers", "cli", "metrics", "objectives", "attacks", "figures",
               "defenses", "geometry", "sanity"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'manipex' has no attribute {name!r}")


__all__ = ["explain", "relevance", "methods", "fit_patterns", "plot_maps", "__version__"]
