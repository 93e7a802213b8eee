"""A crash-safe, append-only result store, and the lock that gives a run folder one writer.

Every finished unit of work (e.g. one batch of images x one method x one defense) is appended
to ``results[-rank<r>].jsonl`` as a single line ``{"unit": id, "rows": [...]}`` written with one
``write`` and ``fsync``; a process killed mid-write leaves at most one partial last line, which
is ignored on reading and cut off before the next append. A run started again skips the units
already in the store, so a killed run loses no finished results and repeats none. Shards of a
distributed run (one file per rank) are read together.

Reading never fails on a damaged file: a line that is not UTF-8, not JSON, or not a record
(``{"unit": str, "rows": [{column: scalar, ...}, ...]}``) is skipped with a
:class:`DamagedResultsWarning` naming the file and its line numbers, and counted in
:attr:`ResultStore.damaged`; every valid line is kept, and a unit whose only record was damaged
is simply run again on resume. Reading creates and changes nothing (a report may read a folder
that a run is writing).

One run writes a shard at a time: :class:`FolderLock` (``results[-rank<r>].jsonl.lock``) is held
while a run writes it. The lock is an ``flock`` where the system has one, which the kernel
releases when its process dies, even by ``kill -9``; elsewhere a file created exclusively that
records its process id and host, and is taken over when that process is no longer alive on this
host. A second run on a folder in use fails at once with :class:`FolderInUseError`.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from .._files import open_no_follow, replacing
from .._validation import short
from .config import ConfigError

try:  # POSIX; absent on Windows, where the exclusive-file lock is used
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RESULT_SHARD = re.compile(r"^results(?:-rank\d+)?\.jsonl$")
#: the largest meta.json read, in bytes
MAX_META_BYTES = 16 << 20


class DamagedResultsWarning(UserWarning):
    """Lines of a results file that are not records were skipped."""


class DamagedMetaError(ConfigError):
    """``meta.json`` of a run folder cannot be read as a run's record."""


class FolderInUseError(RuntimeError):
    """Another process holds the run folder (its shard) for writing."""


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _record(raw: bytes) -> Tuple[Optional[Dict[str, Any]], bool]:
    """``(record, damaged)`` of one line: a valid record, or None and whether the line is damage
    (a blank line is not)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, True
    if not text.strip():
        return None, False
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # not JSON; an integer of more than 4300 digits; deep nesting
        return None, True
    if not (isinstance(record, dict) and isinstance(record.get("unit"), str) and record["unit"]
            and isinstance(record.get("rows"), list)
            and all(isinstance(row, dict) and all(_scalar(v) for v in row.values()) for row in record["rows"])):
        return None, True
    return record, False


def _lines_text(lines: List[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:10])
    return shown + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")


class ResultStore:
    """Results of one run in folder ``root``; ``rank`` selects the shard this process writes.

    Making a store reads and writes nothing; the folder is created by the first write.
    :attr:`damaged` lists ``(file, line)`` of the lines the last read skipped."""

    def __init__(self, root: os.PathLike | str, rank: int = 0) -> None:
        self.root = Path(root)
        self.path = self.root / ("results.jsonl" if rank == 0 else f"results-rank{rank}.jsonl")
        self.damaged: List[Tuple[Path, int]] = []
        self._warned: Set[Tuple[Path, Tuple[int, ...]]] = set()
        self._repaired = False

    @staticmethod
    def _repair(path: Path) -> None:
        """End the file with a whole line: a partial last line left by a killed writer is cut off
        (one that is a whole record, only missing its newline, gets it)."""
        try:
            with os.fdopen(open_no_follow(path, os.O_RDWR), "r+b") as f:
                data = f.read()
                if not data or data.endswith(b"\n"):
                    return
                start = data.rfind(b"\n") + 1
                record, _ = _record(data[start:])
                if record is not None:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(start)
        except FileNotFoundError:
            return

    def shards(self) -> List[Path]:
        """The results files of every rank, rank 0 first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if RESULT_SHARD.match(p.name) and p.is_file())

    def _records(self) -> Iterator[Dict[str, Any]]:
        damaged: List[Tuple[Path, int]] = []
        for shard in self.shards():
            lines = shard.read_bytes().split(b"\n")
            bad = []
            for number, raw in enumerate(lines, 1):
                record, is_damaged = _record(raw)
                if record is not None:
                    yield record
                elif is_damaged and number < len(lines):  # the last piece, without a newline, may be being written
                    bad.append(number)
            damaged += [(shard, n) for n in bad]
            if bad and (shard, tuple(bad)) not in self._warned:
                self._warned.add((shard, tuple(bad)))
                warnings.warn(f"{shard}: {len(bad)} damaged line{'s' if len(bad) > 1 else ''} skipped (line "
                              f"{_lines_text(bad)}): not UTF-8, not JSON or not a record; the other lines are kept, "
                              "and units found only on damaged lines run again when the run is resumed",
                              DamagedResultsWarning, stacklevel=2)
        self.damaged = damaged

    def damaged_text(self) -> str:
        """The damaged lines of the last read, per file, for a report; empty if none."""
        by_file: Dict[Path, List[int]] = {}
        for path, line in self.damaged:
            by_file.setdefault(path, []).append(line)
        return "; ".join(f"{path.name}: line {_lines_text(lines)}" for path, lines in by_file.items())

    def done(self) -> Set[str]:
        """Ids of the finished units (in any shard)."""
        return {r["unit"] for r in self._records()}

    def append(self, unit: str, rows: List[Dict[str, Any]]) -> None:
        """Record a finished unit atomically (one line, one write, fsync)."""
        line = (json.dumps({"unit": unit, "rows": rows}, default=float) + "\n").encode()
        if not self._repaired:
            self.root.mkdir(parents=True, exist_ok=True)
            self._repair(self.path)
            self._repaired = True
        fd = open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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
            unit = record["unit"]
            if unit in seen:
                continue
            seen.add(unit)
            for row in record["rows"]:
                row = {"unit": unit, **row}
                row["unit"] = unit
                out.append(row)
        return out

    def frame(self):
        """The results as a pandas DataFrame, sorted by unit id."""
        import pandas as pd

        df = pd.DataFrame(self.rows())
        return df.sort_values("unit", kind="stable").reset_index(drop=True) if len(df) else df

    def write_meta(self, meta: Dict[str, Any]) -> None:
        """Write ``meta.json`` atomically (config, seed, versions, device)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with replacing(self.root / "meta.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())

    def meta(self) -> Optional[Dict[str, Any]]:
        """The run's record (``meta.json``), or None where there is none; a
        :class:`DamagedMetaError` where it cannot be read as one."""
        path = self.root / "meta.json"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_META_BYTES + 1)
        except FileNotFoundError:
            return None
        except NotADirectoryError:  # the folder is a file
            return None
        except OSError as err:
            raise DamagedMetaError(f"{path} cannot be read: {err.strerror or err}") from None

        def damaged(why: str) -> DamagedMetaError:
            return DamagedMetaError(f"{path} is damaged ({why}); it records the config of the results beside it: "
                                    "restore it, or delete the folder (or use another --out) to start afresh")

        if len(raw) > MAX_META_BYTES:
            raise damaged(f"larger than {MAX_META_BYTES >> 20} MB")
        try:
            meta = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise damaged("not UTF-8 text") from None
        except (ValueError, RecursionError) as err:
            raise damaged(f"not JSON: {short(str(err), 100)[1:-1]}") from None
        if not isinstance(meta, dict):
            raise damaged(f"a {type(meta).__name__}, not a JSON object")
        if not isinstance(meta.get("experiment"), str):
            raise damaged("no experiment name")
        if not isinstance(meta.get("config"), dict):
            raise damaged("no config table")
        return meta

    def lock(self) -> "FolderLock":
        """The lock of this store's shard (not yet taken: ``with store.lock(): ...``)."""
        return FolderLock(self.path.with_name(self.path.name + ".lock"), self.root)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (unsure: True)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows: os.kill(pid, 0) would terminate the process
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's
        return True
    return True


class _NoFlock(Exception):
    """This file system does not support flock."""


class FolderLock:
    """An exclusive lock on ``path`` (a lock file in the run folder ``folder``), held by one
    process at a time, released on :meth:`release`, at exit of a ``with`` block, and when its
    process dies (the kernel drops an ``flock``; a lock file whose process is gone is stale and
    taken over). It records the holder's pid and host for the message of the refused run."""

    def __init__(self, path: os.PathLike | str, folder: Optional[os.PathLike | str] = None) -> None:
        self.path = Path(path)
        self.folder = Path(folder) if folder is not None else self.path.parent
        self._fd: Optional[int] = None
        self._flock = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _info(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()

    def _holder(self) -> Optional[Dict[str, Any]]:
        for _ in range(10):  # the holder writes its pid just after it takes the lock
            try:
                raw = self.path.read_bytes()[:4096]
            except OSError:
                return None
            try:
                info = json.loads(raw.decode("utf-8"))
                if isinstance(info, dict) and isinstance(info.get("pid"), int):
                    return info
            except ValueError:
                pass
            time.sleep(0.02)
        return None

    def _busy(self, info: Optional[Dict[str, Any]]) -> FolderInUseError:
        if info is None:
            who = "pid unknown"
        else:
            who = f"pid {info['pid']}"
            host = info.get("host")
            if isinstance(host, str) and host != socket.gethostname():
                who += f" on host {host[:60]}"
        return FolderInUseError(f"{self.folder} is being written by another manipex run ({who}); wait for it or use "
                                "another --out")

    def acquire(self) -> "FolderLock":
        """Take the lock, or raise :class:`FolderInUseError` at once naming the holder."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            try:
                self._acquire_flock()
                return self
            except _NoFlock:
                pass
        self._acquire_exclusive()
        return self

    def _acquire_flock(self) -> None:
        for _ in range(20):
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(self._holder()) from None
                raise _NoFlock() from err
            try:  # the holder before us removed the file as we opened it: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, self._info())
            self._fd, self._flock = fd, True
            return
        raise self._busy(self._holder())

    def _acquire_exclusive(self) -> None:
        for _ in range(5):
            try:
                fd = open_no_follow(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                info = self._holder()
                if info is None:
                    try:  # a holder killed between creating the file and writing its pid
                        stale = time.time() - self.path.stat().st_mtime > 10
                    except FileNotFoundError:
                        continue
                else:
                    stale = info.get("host") == socket.gethostname() and not _pid_alive(info["pid"])
                if not stale:
                    raise self._busy(info) from None
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            os.write(fd, self._info())
            self._fd, self._flock = fd, False
            return
        raise self._busy(self._holder())

    def release(self) -> None:
        """Give the lock up (and remove the lock file); nothing if it is not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(fd)  # drops the flock
