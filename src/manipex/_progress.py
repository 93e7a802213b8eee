"""Progress bars for long runs: a few refreshes a second, and none where nobody watches.

A bar is shown when ``progress`` is asked for and standard error is a terminal (or a Jupyter
kernel runs); in logs, CI and pipes it is off, so a long run does not print kilobytes of bar
updates. ``MANIPEX_PROGRESS=1`` forces bars on, ``0`` off.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Optional


def interactive() -> bool:
    """Whether someone watches: a terminal on stderr, a notebook, or ``MANIPEX_PROGRESS``."""
    forced = os.environ.get("MANIPEX_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **options: Any):
    """A tqdm bar, refreshed at most 4 times a second, disabled unless :func:`interactive`.

    Update its postfix with ``bar.set_postfix(..., refresh=False)`` so that the refresh rate
    holds. Options are tqdm's (``total``, ``desc``, ``unit``, ``initial``, ``leave``).
    """
    from tqdm.auto import tqdm

    options.setdefault("mininterval", 0.25)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and interactive()), **options)
