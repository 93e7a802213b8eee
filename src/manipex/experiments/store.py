"""A crash-safe, append-only result store.

Every finished unit of work (e.g. one batch of images x one method x one defense) is appended
to ``results[-rank<r>].jsonl`` as a single line ``{"unit": id, "rows": [...]}`` written with one
``write`` and ``fsync``; a process killed mid-write leaves at most one partial last line, which
is ignored on reading and cut off before the next append. A run started again skips the units
already in the store, so a killed run loses no finished results and repeats none. Shards of a
distributed run (one file per rank) are read together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set


class ResultStore:
    """Results of one run in folder ``root``; ``rank`` selects the shard this process writes."""

    def __init__(self, root: os.PathLike | str, rank: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / ("results.jsonl" if rank == 0 else f"results-rank{rank}.jsonl")
        self._repair(self.path)

    @staticmethod
    def _repair(path: Path) -> None:
        """Cut off a partial last line left by a killed writer."""
        if not path.exists():
            return
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def _records(self) -> Iterator[Dict[str, Any]]:
        for shard in sorted(self.root.glob("results*.jsonl")):
            for line in shard.read_text().splitlines():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a partial line of another shard being written
                    continue

    def done(self) -> Set[str]:
        """Ids of the finished units (in any shard)."""
        return {r["unit"] for r in self._records()}

    def append(self, unit: str, rows: List[Dict[str, Any]]) -> None:
        """Record a finished unit atomically (one line, one write, fsync)."""
        line = (json.dumps({"unit": unit, "rows": rows}, default=float) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rows(self) -> List[Dict[str, Any]]:
        """All result rows, each with its unit id, first record of a unit winning."""
        seen: Set[str] = set()
        out: List[Dict[str, Any]] = []
        for record in self._records():
            if record["unit"] in seen:
                continue
            seen.add(record["unit"])
            out.extend({"unit": record["unit"], **row} for row in record["rows"])
        return out

    def frame(self):
        """The results as a pandas DataFrame, sorted by unit id."""
        import pandas as pd

        df = pd.DataFrame(self.rows())
        return df.sort_values("unit", kind="stable").reset_index(drop=True) if len(df) else df

    def write_meta(self, meta: Dict[str, Any]) -> None:
        """Write ``meta.json`` atomically (config, seed, versions, device)."""
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, self.root / "meta.json")

    def meta(self) -> Optional[Dict[str, Any]]:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None
