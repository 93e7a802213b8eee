"""Recorded rows of every experiment at the tiny budgets of ``test_experiments.py`` (issue 27:
"behaviour unchanged, shown"). Recorded once before the architecture change and compared after
every change: a refactor that changes a number shows here, with the unit and column named.

``MANIPEX_RECORD_GOLDEN=1 pytest tests/test_experiments.py -k tiny_budget`` rewrites them (only
on purpose, saying in the commit why the rows changed). The rows come from float32 attacks whose
last bits depend on the CPU's kernels, so they are compared where they were recorded: on the same
torch version and CPU capability (``torch.backends.cpu.get_cpu_capability()``), within a
tolerance for the reduction order of two processes (the resume test's 1e-3 relative); on another
machine the comparison is skipped and says why.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
#: columns that are not results: when the run happened and how long it took
VOLATILE = ("seconds", "elapsed", "time", "wall", "started", "finished")


def machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _clean(rows):
    out = []
    for row in rows:
        out.append({k: v for k, v in row.items() if not any(word in k for word in VOLATILE)})
    # in an order that float noise cannot change: by the row's non-float values
    return sorted(out, key=lambda r: json.dumps({k: v for k, v in r.items() if not isinstance(v, float)},
                                                sort_keys=True, default=str))


def _close(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-6 + 1e-3 * abs(b)


def check_rows(name: str, rows) -> None:
    """Compare ``rows`` (the run's stored rows) with the recorded ones; record them when
    ``MANIPEX_RECORD_GOLDEN=1``."""
    path = GOLDEN / f"{name}.json"
    rows = _clean(rows)
    if os.environ.get("MANIPEX_RECORD_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=0, sort_keys=True, default=str) + "\n")
        return
    if not path.exists():
        pytest.fail(f"no recorded rows for {name!r}: record them with MANIPEX_RECORD_GOLDEN=1")
    recorded = json.loads(path.read_text())
    if recorded["machine"] != machine():
        pytest.skip(f"rows recorded on {recorded['machine']}, this machine is {machine()}")
    want = recorded["rows"]
    rows = json.loads(json.dumps(rows, default=str))  # the recorded types: tuples as lists, numpy as float
    assert len(rows) == len(want), f"{name}: {len(rows)} rows, recorded {len(want)}"
    for got, expected in zip(rows, want):
        assert set(got) == set(expected), f"{name}, unit {got.get('unit')}: columns {sorted(set(got) ^ set(expected))}"
        differ = [k for k in expected if not _close(got[k], expected[k])]
        assert not differ, f"{name}, unit {got.get('unit')}: " + ", ".join(
            f"{k} {got[k]!r} (recorded {expected[k]!r})" for k in differ)
