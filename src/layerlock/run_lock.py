"""One owner per run directory: an OS lock held while a process writes into it.

Two processes writing one run directory (two ``--resume`` of the same run, or two new runs
given the same ``out_dir`` at the same moment) would interleave their metric rows and
overwrite each other's checkpoints. :class:`RunLock` takes an exclusive, non-blocking
``flock`` on ``<run_dir>/.lock`` and writes the owner's pid and host into it. The kernel
releases the lock when its process ends, however it ends (``kill -9`` included), so a lock
left by a dead process is never in the way: the file may remain, but nobody holds it.
Where ``fcntl`` does not exist (Windows) the file is created exclusively instead, and a
lock whose pid is no longer alive on this host is taken over.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder):
    ...     RunLock(folder).acquire()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerlock.run_lock.RunDirBusyError: run directory ... is in use by process ... on ...; wait for it to finish or use another out_dir
"""

from __future__ import annotations

import json
import os
import socket
import weakref
from pathlib import Path
from typing import IO, Any

from .errors import LayerlockError, output_errors

__all__ = ["LOCK_FILE", "RunDirBusyError", "RunLock"]

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


#: Locks this process holds. A forked child (a DataLoader worker) shares the lock's open
#: file and would keep it held after its parent died (``kill -9``), until it noticed and
#: exited itself; children therefore drop their copy of every lock file at fork.
_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _drop_in_child() -> None:
    for lock in list(_HELD):
        if lock._file is not None:
            lock._file.close()  # the child's descriptor only: the parent keeps its own
            lock._file = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_child)


class RunDirBusyError(LayerlockError):
    """Another live process owns the run directory."""


class RunLock:
    """An exclusive lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Args:
        run_dir: The run directory (created if missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirBusyError` naming the owner."""
        with output_errors(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is None:  # pragma: no cover - Windows
                self._acquire_by_pid()
                return self
            f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(self.path)
            f.close()
            raise RunDirBusyError(_busy(self.path.parent, owner)) from None
        try:
            with output_errors(self.path.parent):
                f.seek(0)
                f.truncate()
                f.write(json.dumps(_me()))
                f.flush()
        except BaseException:
            f.close()
            raise
        self._file = f
        _HELD.add(self)
        return self

    def _acquire_by_pid(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _read_owner(self.path)
                here = owner is not None and owner.get("host") == socket.gethostname()
                if here and owner is not None and not _alive(int(owner.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                raise RunDirBusyError(_busy(self.path.parent, owner)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(_me()))
            return
        raise RunDirBusyError(_busy(self.path.parent, _read_owner(self.path)))

    def release(self) -> None:
        """Give the lock up (the lock file stays; it is harmless without a holder)."""
        _HELD.discard(self)
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        elif fcntl is None and self.path.exists():  # pragma: no cover - Windows
            self.path.unlink(missing_ok=True)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._file is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _busy(run_dir: Path, owner: dict[str, Any] | None) -> str:
    who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
    return (
        f"run directory {run_dir} is in use by {who}; wait for it to finish or use another out_dir"
    )


def _alive(pid: int) -> bool:  # pragma: no cover - Windows
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
