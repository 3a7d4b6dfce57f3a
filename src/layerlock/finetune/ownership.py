"""Who owns a run directory, and what it was started on.

:func:`claim_run_dir` takes the run directory's lock (:class:`~layerlock.run_lock.RunLock`):
the resumed directory, or the first free ``out_dir``, ``out_dir-2`` ... for a new run (one
that another process has claimed but not written yet is skipped). :func:`data_record` is
what ``data.json`` holds: the classes, in order, and a digest of each split's samples;
:func:`check_same_data` refuses a resume whose classes changed (their indices would), and
one whose samples changed unless ``run.allow_data_change`` is set (then it is logged).

Example:
    >>> import tempfile
    >>> path, lock = claim_run_dir(tempfile.mkdtemp() + "/run")
    >>> path.name, lock.held
    ('run', True)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..data import dataset_len
from ..data.identity import dataset_digest
from ..errors import LayerlockError
from ..run_lock import RunDirBusyError, RunLock
from ..runs import CONFIG_FILE, atomic_write, fresh_dir

__all__ = ["DATA_FILE", "check_same_data", "claim_run_dir", "data_record"]

DATA_FILE = "data.json"
MAX_OUT_DIR_TRIES = 1000


def claim_run_dir(path: str | Path, *, resume: bool = False) -> tuple[Path, RunLock]:
    """Lock ``path`` (``resume``) or the first free directory next to it; return both.

    Raises:
        RunDirBusyError: The resumed directory is in use by another process.
        LayerlockError: No free directory after many tries.
    """
    if resume:
        return Path(path), RunLock(path).acquire()
    base = Path(path)
    candidate = fresh_dir(base)
    for _ in range(MAX_OUT_DIR_TRIES):
        try:
            lock = RunLock(candidate).acquire()
        except RunDirBusyError:  # another run claimed it and is writing its config
            candidate = _next_dir(candidate)
            continue
        if not (candidate / CONFIG_FILE).exists():
            return candidate, lock
        lock.release()
        candidate = _next_dir(candidate)
    raise LayerlockError(f"no free run directory next to {base} after {MAX_OUT_DIR_TRIES} tries")


def data_record(classes: Sequence[str], train: Dataset, val: Dataset) -> dict[str, Any]:
    """Classes, sample counts and data digests (what ``data.json`` holds)."""
    return {
        "classes": list(classes),
        "train": {"samples": dataset_len(train), "digest": dataset_digest(train)},
        "val": {"samples": dataset_len(val), "digest": dataset_digest(val)},
    }


def check_same_data(run_dir: Path, now: dict[str, Any], *, allow: bool) -> str | None:
    """Compare ``now`` with the run's ``data.json``; the note to log when allowed to differ.

    Raises:
        LayerlockError: Other classes, or other samples without ``allow``.
    """
    path = run_dir / DATA_FILE
    if not path.is_file():
        return None  # a run of the previous release: nothing recorded
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("classes") != now["classes"]:
        raise LayerlockError(
            f"cannot resume {run_dir}: its classes were {_short(saved.get('classes'))}, "
            f"the data now gives {_short(now['classes'])}; class indices would change"
        )
    changed = [
        f"{split} {saved[split]['samples']} -> {now[split]['samples']} samples"
        for split in ("train", "val")
        if saved.get(split, {}).get("digest") != now[split]["digest"]
    ]
    if not changed:
        return None
    what = "; ".join(changed) + " (or files rewritten)"
    if not allow:
        raise LayerlockError(
            f"cannot resume {run_dir}: its data changed since it started ({what}); "
            "restore the data, or pass run.allow_data_change=true to continue on the new data"
        )
    atomic_write(path, json.dumps({**now, "previous": saved}, indent=2) + "\n")
    return f"data changed on resume: {what}"


def _next_dir(path: Path) -> Path:
    """``runs/a`` -> ``runs/a-2``, ``runs/a-2`` -> ``runs/a-3``."""
    stem, _, number = path.name.rpartition("-")
    if stem and number.isdigit():
        return path.parent / f"{stem}-{int(number) + 1}"
    return path.parent / f"{path.name}-2"


def _short(values: Any, most: int = 6) -> str:
    items = [str(v) for v in values or []]
    text = ", ".join(items[:most]) + (f" ... ({len(items)} in all)" if len(items) > most else "")
    return f"[{text}]"
