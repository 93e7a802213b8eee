"""Files written atomically (a temporary file, then ``os.replace``) get the mode a plain
``open(path, "w")`` would give them: ``0o666`` less the process's umask. ``tempfile.mkstemp``
creates its files ``0o600``, so a run folder's ``report.html`` and ``meta.json`` and a saved
checkpoint were private while ``results.jsonl`` beside them was not."""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from typing import Iterator

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


#: ``os.O_NOFOLLOW`` where the platform has it (not on Windows: there the link is checked first).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LinkedFileError(OSError):
    """A file of a run folder that manipex would write is a symbolic link: writing through it
    would change the file it points to, which may be anyone's."""

    def __init__(self, path) -> None:
        super().__init__(f"{path} is a symbolic link: manipex never writes through a link in a run folder (it would "
                         f"change the file it points to, {os.path.realpath(path)}); remove the link or choose another "
                         "--out folder")
        self.path = path


def open_no_follow(path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags, mode)`` that refuses a symbolic link at ``path``
    (:class:`LinkedFileError`, naming it) instead of opening the file it points to."""
    if os.path.islink(path):
        raise LinkedFileError(path)
    try:
        return os.open(path, flags | NOFOLLOW, mode)
    except OSError:
        if NOFOLLOW and os.path.islink(path):  # made a link between the check and the open (ELOOP)
            raise LinkedFileError(path) from None
        raise


@contextlib.contextmanager
def replacing(path) -> Iterator[str]:
    """Write a file whole: yields the name of a new temporary file beside ``path`` (a random
    name, created exclusively, the plain mode), which replaces ``path`` when the block ends, and
    is removed if it raises. A symbolic link at ``path`` is replaced, never written through."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        yield tmp
        give_plain_mode(tmp)  # after the write: a writer may have made the file anew (safetensors does)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def refuse_outside_links(folder) -> None:
    """Refuse a run folder that holds a symbolic link to somewhere outside it
    (:class:`LinkedFileError`, naming the entry): a run, a resume or a report writes its files
    there, and writing one would change the file the link points to. Links are not followed
    while looking."""
    root = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            entry = os.path.join(dirpath, name)
            if os.path.islink(entry) and os.path.commonpath([root, os.path.realpath(entry)]) != root:
                raise LinkedFileError(entry)
