"""Progress for long runs: bars where someone watches, plain lines in logs.

A bar is shown when ``progress`` is asked for and standard error is a terminal (or a Jupyter
kernel runs); in logs, CI and pipes there is no bar, so a long run does not print kilobytes of
bar updates. ``MANIPEX_PROGRESS=1`` forces bars on, ``0`` off (bars and lines).

Where no bar is shown, a loop that asks for ``log_lines=True`` (the experiment runner: ``manipex
run`` and ``manipex audit``) gets a :class:`LineProgress` instead: one plain line on stderr per
finished unit, or at most one every ``MANIPEX_PROGRESS_INTERVAL`` seconds (default 30) when units
finish faster, the first and the last always::

    manipex run quick: 12/40 units (30 %), 1m05s elapsed, about 2m32s left

Loops inside a unit (attack steps, training epochs) keep to bars: their lines would interleave
with the runner's.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

#: seconds between two lines of a :class:`LineProgress` whose units finish faster
DEFAULT_INTERVAL = 30.0

_now = time.monotonic  # the clock of the lines (a test replaces it)


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


def logs_lines() -> bool:
    """Whether a loop that asks for ``log_lines`` prints plain lines: no bar is shown
    (:func:`interactive` is false) and ``MANIPEX_PROGRESS`` is not ``0``."""
    return os.environ.get("MANIPEX_PROGRESS") != "0" and not interactive()


def line_interval() -> float:
    """``MANIPEX_PROGRESS_INTERVAL`` (seconds, >= 0), else :data:`DEFAULT_INTERVAL`."""
    text = os.environ.get("MANIPEX_PROGRESS_INTERVAL")
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """A duration for a log line: ``0.4s``, ``12s``, ``1m05s``, ``2h03m``."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def log_line(text: str, file: Optional[TextIO] = None) -> None:
    """Print ``text`` as one line on stderr (``file``) and flush it, so that logs show it at once."""
    stream = sys.stderr if file is None else file
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # a closed stderr: progress is never worth an error
        pass


class LineProgress:
    """Plain progress lines with the part of tqdm's API that manipex uses: ``update``,
    ``set_postfix``, ``set_postfix_str``, ``set_description``, ``close``, iteration and ``with``.

    A line is printed after the first finished step of this session, after the last one
    (``n == total``), and in between when ``interval`` seconds have passed since the last
    line. The time left is estimated from the steps finished since this reporter was made (a
    resumed run's ``initial`` steps took no time here); the time elapsed counts from ``started``
    (a :func:`time.monotonic` time, e.g. when the command started loading its model), by default
    also from then. The postfix is not printed.
    """

    def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, initial: int = 0,
                 desc: str = "", unit: str = "it", interval: Optional[float] = None,
                 file: Optional[TextIO] = None, started: Optional[float] = None, **_tqdm_options: Any):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.file = desc, unit, file
        self.interval = line_interval() if interval is None else float(interval)
        self.start = _now()
        self.started = self.start if started is None else started
        self._last: Optional[float] = None  # when the last line was printed
        self.closed = False

    # -- tqdm's API ---------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        now = _now()
        first = self._last is None
        last = self.total is not None and self.n >= self.total
        if first or last or now - self._last >= self.interval:  # type: ignore[operator]
            self._print(now)

    def set_postfix(self, *args: Any, refresh: bool = True, **kwargs: Any) -> None:
        """Accepted for tqdm's API; a log line does not show the postfix."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Accepted for tqdm's API; a log line does not show the postfix."""

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm's API."""

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress: nothing to iterate over (give an iterable)")
        for item in self.iterable:
            yield item
            self.update(1)

    # -- the line -----------------------------------------------------------------------------------
    def text(self, now: Optional[float] = None) -> str:
        """``desc: 12/40 units (30 %), 1m05s elapsed, about 2m32s left``."""
        now = _now() if now is None else now
        elapsed, running = now - self.started, now - self.start
        unit = self.unit if self.unit.endswith("s") or (self.total or self.n) == 1 else self.unit + "s"
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            done = f"{self.n}/{self.total} {unit} ({100 * self.n / self.total:.0f} %)"
        else:
            done = f"{self.n} {unit}"
        parts = [done, f"{duration(elapsed)} elapsed"]
        ran = self.n - self.initial
        if self.total is not None and self.n >= self.total:
            parts.append("done")
        elif self.total and ran > 0:
            parts.append(f"about {duration(running / ran * (self.total - self.n))} left")
        return head + ", ".join(parts)

    def _print(self, now: float) -> None:
        self._last = now
        log_line(self.text(now), self.file)


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, log_lines: bool = False,
                 interval: Optional[float] = None, **options: Any):
    """A tqdm bar, refreshed at most 4 times a second, disabled unless :func:`interactive`.

    Update its postfix with ``bar.set_postfix(..., refresh=False)`` so that the refresh rate
    holds. Options are tqdm's (``total``, ``desc``, ``unit``, ``initial``, ``leave``).

    With ``log_lines=True``, where no bar would be shown (:func:`logs_lines`) and ``enabled``, a
    :class:`LineProgress` is returned instead, printing a line at most every ``interval``
    seconds (default: ``MANIPEX_PROGRESS_INTERVAL``, else 30); ``started`` is its start time.
    """
    started = options.pop("started", None)
    if enabled and log_lines and logs_lines():
        return LineProgress(iterable, interval=interval, started=started, **options)
    from tqdm.auto import tqdm

    options.setdefault("mininterval", 0.25)
    options.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and interactive()), **options)
