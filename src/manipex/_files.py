"""Files written atomically (a temporary file, then ``os.replace``) get the mode a plain
``open(path, "w")`` would give them: ``0o666`` less the process's umask. ``tempfile.mkstemp``
creates its files ``0o600``, so a run folder's ``report.html`` and ``meta.json`` and a saved
checkpoint were private while ``results.jsonl`` beside them was not."""
from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()
_MODE: list = []


def created_mode() -> int:
    """``0o666 & ~umask``, the umask read once (``os.umask`` has no read-only form: it is set and
    put back under a lock, before any file of ours is written)."""
    if not _MODE:
        with _LOCK:
            if not _MODE:
                mask = os.umask(0o022)
                os.umask(mask)
                _MODE.append(0o666 & ~mask)
    return _MODE[0]


def give_plain_mode(path_or_fd) -> None:
    """Set a temporary file's mode to :func:`created_mode` before it replaces the real one."""
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, created_mode())
    else:
        os.chmod(path_or_fd, created_mode())
