"""Progress in logs: plain lines on stderr where no bar is shown (issue 31)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from manipex import _progress
from manipex._progress import LineProgress, progress_bar

LINE = re.compile(r"^manipex run quick: (\d+)/(\d+) units \(\d+ %\), [\d.hms]+ elapsed, (about [\d.hms]+ left|done)$")
TINY = ["--n", "2", "--batch", "1", "--steps", "2", "--methods", "gradient", "--defenses", "none", "--threads", "1"]


def _run(out, *extra):
    env = {k: v for k, v in os.environ.items() if k != "MANIPEX_PROGRESS"}
    env.update(MANIPEX_PROGRESS_INTERVAL="0", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "manipex.cli", "run", "quick", *TINY, "--out", str(out), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=120)


def test_a_run_into_a_log_prints_progress_lines_and_quiet_silences_them(tmp_path):
    done = _run(tmp_path / "a")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    progress = [m for m in map(LINE.match, lines) if m]
    assert [(m.group(1), m.group(2)) for m in progress] == [("1", "2"), ("2", "2")], done.stderr
    assert progress[0].group(3).startswith("about") and progress[-1].group(3) == "done"
    assert "manipex run quick: 2 units to run" in lines
    assert any("no normalisation in front of the model" in line for line in lines)
    again = _run(tmp_path / "a")  # finished: nothing to do, says so
    assert again.returncode == 0 and "already done: 2 units" in again.stderr and "report rebuilt" in again.stderr
    assert not any(map(LINE.match, again.stderr.splitlines()))
    quiet = _run(tmp_path / "b", "--quiet")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert not any(map(LINE.match, quiet.stderr.splitlines())) and "units to run" not in quiet.stderr
    assert "no normalisation in front of the model" in quiet.stderr  # a fact of the results, not progress


def test_lines_come_per_unit_or_every_interval_first_and_last_always(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(_progress, "_now", lambda: clock[0])
    out = io.StringIO()
    bar = LineProgress(total=10, initial=2, desc="manipex run quick", unit="unit", interval=30, file=out,
                       started=90.0)
    for _ in range(8):  # 8 units of 5 s: lines at the first, after 30 s, and at the last
        clock[0] += 5
        bar.set_postfix_str("unit", refresh=False)
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == [
        "manipex run quick: 3/10 units (30 %), 15s elapsed, about 35s left",
        "manipex run quick: 9/10 units (90 %), 45s elapsed, about 5.0s left",
        "manipex run quick: 10/10 units (100 %), 50s elapsed, done",
    ]
    out = io.StringIO()
    with LineProgress(range(3), desc="slow", unit="unit", interval=30, file=out) as bar:
        for _ in bar:
            clock[0] += 40  # slower than the interval: one line per unit
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "slow: 1/3 units (33 %)", "slow: 2/3 units (67 %)", "slow: 3/3 units (100 %)"]


def test_progress_bar_gives_lines_only_where_asked_and_no_bar_is_shown(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.delenv("MANIPEX_PROGRESS", raising=False)
    monkeypatch.setattr(_progress, "interactive", lambda: False)
    assert isinstance(progress_bar(total=3, log_lines=True), LineProgress)
    assert progress_bar(total=3, log_lines=True).interval == _progress.DEFAULT_INTERVAL
    monkeypatch.setenv("MANIPEX_PROGRESS_INTERVAL", "0.5")
    assert progress_bar(total=3, log_lines=True).interval == 0.5
    for options in ({}, {"enabled": False}):  # not asked, or --quiet: a disabled bar, as before
        bar = progress_bar(total=3, log_lines=bool(options), **options)
        assert isinstance(bar, tqdm) and bar.disable
    monkeypatch.setenv("MANIPEX_PROGRESS", "0")
    bar = progress_bar(total=3, log_lines=True)
    assert isinstance(bar, tqdm) and bar.disable
    monkeypatch.setattr(_progress, "interactive", lambda: True)  # a terminal: the bar, unchanged
    monkeypatch.delenv("MANIPEX_PROGRESS")
    bar = progress_bar(total=3, log_lines=True, file=io.StringIO())
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0s"), (4.25, "4.2s"), (12.4, "12s"), (65, "1m05s"),
                                           (7380, "2h03m")])
def test_durations_of_log_lines(seconds, text):
    assert _progress.duration(seconds) == text
