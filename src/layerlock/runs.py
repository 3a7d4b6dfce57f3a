"""The run directory: atomic files, metrics logs, charts, model and checkpoint files.

Every file is written atomically: to a temporary file in the same folder, flushed and
fsynced, then moved over the target with ``os.replace``, so a crash leaves either the old
file or the new one, never a torn one. Only the main process (rank 0) writes; on other ranks
the writers do nothing. Weights are saved as safetensors; checkpoints are read only with
``safetensors`` or ``torch.load(weights_only=True)``, never by unpickling arbitrary objects.

Layout written by ``layerlock finetune``::

    RUN_DIR/config.yaml          resolved config
    RUN_DIR/steps.csv, steps.jsonl      one row per logged step
    RUN_DIR/epochs.csv, epochs.jsonl    one row per epoch (after evaluation)
    RUN_DIR/events.jsonl         unlock events (step, epoch, label)
    RUN_DIR/loss_accuracy.png, trainable_params.png
    RUN_DIR/model.safetensors    final weights
    RUN_DIR/checkpoint.pt        resumable state (tensors and plain values only)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from torch import nn

from .errors import LayerlockError, output_errors
from .yaml_io import read_yaml

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "MODEL_FILE",
    "MetricsLogger",
    "RunDir",
    "atomic_write",
    "atomic_writer",
    "fresh_dir",
    "is_main_process",
    "load_checkpoint",
    "load_run_config",
    "load_weights",
    "read_jsonl",
    "save_checkpoint",
    "save_weights",
]

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
STEPS = "steps"
EPOCHS = "epochs"
EVENTS_FILE = "events.jsonl"


def fresh_dir(path: str | Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... when it already holds a run.

    Example:
        >>> fresh_dir("runs/never-used-yet")
        PosixPath('runs/never-used-yet')
    """
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        return path
    i = 2
    while (path.parent / f"{path.name}-{i}" / CONFIG_FILE).exists():
        i += 1
    return path.parent / f"{path.name}-{i}"


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run directory was started with (its ``config.yaml``).

    Raises:
        LayerlockError: ``run_dir`` is not a layerlock run directory.

    Example:
        >>> load_run_config("runs/finetune")["run"]["epochs"]  # doctest: +SKIP
        16
    """
    path = Path(run_dir) / CONFIG_FILE
    if Path(run_dir).is_file():
        raise LayerlockError(f"{run_dir} is a file; pass its run directory")
    if not Path(run_dir).is_dir():
        raise LayerlockError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise LayerlockError(
            f"{run_dir} is not a layerlock run directory (no {CONFIG_FILE}); "
            "pass the out_dir of an earlier finetune run"
        )
    loaded = read_yaml(path, "run config")
    if not isinstance(loaded, dict):
        raise LayerlockError(f"{path} does not hold a config mapping")
    return loaded


def is_main_process(rank: int | None = None) -> bool:
    """Whether this process writes files: ``rank == 0``, or rank 0 of torch.distributed.

    Example:
        >>> is_main_process(), is_main_process(1)
        (True, False)
    """
    if rank is not None:
        return rank == 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and move it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_writer(target) as f:
        ...     _ = f.write("hello")
        >>> target.read_text()
        'hello'
    """
    path = Path(path)
    # a read-only, full or missing location: one line naming the folder
    with output_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with output_errors(path.parent):
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform (Windows)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to ``path`` atomically and return the path.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "x.bin", b"\\x00\\x01")
        >>> p.read_bytes()
        b'\\x00\\x01'
    """
    mode = "wb" if isinstance(data, bytes) else "w"
    kwargs = {} if isinstance(data, bytes) else {"encoding": "utf-8", "newline": ""}
    with atomic_writer(path, mode, **kwargs) as f:
        f.write(data)
    return Path(path)


def _state_dict(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise LayerlockError(f"cannot save {name!r}: {type(tensor).__name__} is not a tensor")
        t = tensor.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        # safetensors refuses tensors sharing memory (tied weights): store a copy of each
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out


def save_weights(
    path: str | Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model's (or a state dict's) tensors as a safetensors file, atomically.

    Tied (shared) tensors are stored as separate copies. ``metadata`` values are stored as
    strings (non-strings as JSON).

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = save_weights(pathlib.Path(tempfile.mkdtemp()) / "m.safetensors", torch.nn.Linear(2, 1))
        >>> sorted(load_weights(p))
        ['bias', 'weight']
    """
    from safetensors.torch import save

    meta = {"format": "pt"}
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return atomic_write(path, save(_state_dict(model), metadata=meta))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors or, for other files, ``torch.load(weights_only=True)``.

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        LayerlockError: The file is missing, or neither safetensors nor loadable with
            ``weights_only=True`` (the message says how to convert it).

    Example:
        >>> load_weights("model.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    _need_file(path, "weights file")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise LayerlockError(f"{path} is a corrupt safetensors file: {exc}") from exc
    obj = _torch_load(path, "weights file")
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LayerlockError(
            f"{path} does not hold a state dict of tensors (found {type(obj).__name__}); "
            "save model.state_dict() or a safetensors file"
        )
    return dict(obj)


def _is_safetensors(path: Path) -> bool:
    """Detect safetensors by content: 8-byte little-endian header size, then a JSON object."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    size = int.from_bytes(head[:8], "little")
    return 0 < size <= path.stat().st_size - 8


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors and UnpicklingError from weights_only
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise LayerlockError(
            f"{what} {path} is not a safetensors file and cannot be loaded with "
            f"torch.load(weights_only=True) ({type(exc).__name__}: {first}); if you trust it, "
            "convert it: safetensors.torch.save_file(torch.load(f, weights_only=False), 'x.safetensors')"
        ) from exc


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Save a resumable checkpoint (``torch.save``) atomically.

    ``state`` must hold only what ``torch.load(weights_only=True)`` can read back: tensors,
    numbers, strings, ``None`` and lists / tuples / dicts of them (optimizer state dicts
    are fine; convert numpy RNG state with ``.tolist()``).

    Raises:
        LayerlockError: ``state`` holds other objects (checked before anything is written).

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "c.pt", {"step": 3})
        >>> load_checkpoint(p)["step"]
        3
    """
    bad = _first_unsafe(state, "state")
    if bad:
        raise LayerlockError(
            f"checkpoint entry {bad} cannot be restored with weights_only=True; "
            "store tensors, numbers, strings and lists / dicts of them"
        )
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return atomic_write(path, buffer.getvalue())


_SAFE_SCALARS = (torch.Tensor, int, float, str, bool, bytes, type(None), torch.dtype, torch.device)


def _first_unsafe(obj: Any, where: str) -> str | None:
    if isinstance(obj, _SAFE_SCALARS):
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            found = _first_unsafe(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _first_unsafe(v, f"{where}[{i}]")
            if found:
                return found
        return None
    return f"{where} ({type(obj).__module__}.{type(obj).__name__})"


def _need_file(path: Path, what: str) -> None:
    """Raise unless ``path`` is a regular file, saying what it is instead."""
    if path.is_file():
        return
    if path.is_dir():
        raise LayerlockError(f"{what} {path} is a folder, not a file")
    if path.exists():
        raise LayerlockError(f"{what} {path} is not a regular file")
    raise LayerlockError(f"{what} {path} does not exist")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``).

    Raises:
        LayerlockError: Missing file, or not loadable with ``weights_only=True``.

    Example:
        >>> load_checkpoint("runs/a/checkpoint.pt")  # doctest: +SKIP
    """
    path = Path(path)
    _need_file(path, "checkpoint")
    obj = _torch_load(path, "checkpoint")
    if not isinstance(obj, dict):
        raise LayerlockError(f"checkpoint {path} holds {type(obj).__name__}, not a dict")
    return obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file; a torn last line (crash mid-write) is ignored.

    Example:
        >>> read_jsonl("runs/a/epochs.jsonl")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class MetricsLogger:
    """Append metric rows to ``<kind>.csv`` and ``<kind>.jsonl`` (kinds: steps, epochs).

    Columns may appear at any time (``lr/blocks.3`` when a group unlocks): the CSV is then
    rewritten, atomically, with the wider header; missing values are empty cells. JSON Lines
    hold each row as logged. On other ranks than 0 nothing is written.

    Resuming: ``MetricsLogger(run_dir, resume_step=S, resume_epoch=E)`` drops every row past
    step ``S`` (and events past it) and every epoch row past epoch ``E`` (the last epoch the
    checkpoint evaluated), so the rows written after resuming continue the files without
    duplicates.

    Example:
        >>> import tempfile
        >>> log = MetricsLogger(tempfile.mkdtemp())
        >>> log.log_step({"step": 1, "epoch": 0.5, "loss": 2.3, "lr/head": 1e-3})
        >>> log.log_epoch({"epoch": 1, "step": 2, "val_acc": 0.5})
        >>> [r["loss"] for r in log.rows("steps")]
        [2.3]
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        rank: int | None = None,
        resume_step: int | None = None,
        resume_epoch: int | None = None,
    ) -> None:
        self.dir = Path(run_dir)
        self.writer = is_main_process(rank)
        self._columns: dict[str, list[str]] = {}
        if not self.writer:
            return
        with output_errors(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        for kind in (STEPS, EPOCHS):
            rows = read_jsonl(self.dir / f"{kind}.jsonl")
            if resume_step is None:
                rows = []
            else:
                rows = [r for r in rows if int(r.get("step", 0)) <= resume_step]
            if kind == EPOCHS and resume_epoch is not None:
                # an epoch evaluated after the checkpoint (a crash between its row and the
                # checkpoint) is evaluated again on resume: drop its first row
                rows = [r for r in rows if int(r.get("epoch", 0)) <= resume_epoch]
            self._rewrite(kind, rows)
        events = read_jsonl(self.dir / EVENTS_FILE) if resume_step is not None else []
        events = [e for e in events if int(e.get("step", 0)) <= (resume_step or 0)]
        atomic_write(self.dir / EVENTS_FILE, "".join(json.dumps(e) + "\n" for e in events))

    def _rewrite(self, kind: str, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        self._columns[kind] = _ordered(columns)
        atomic_write(self.dir / f"{kind}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(kind, rows)

    def _write_csv(self, kind: str, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns[kind], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        atomic_write(self.dir / f"{kind}.csv", buffer.getvalue())

    def _append(self, kind: str, row: Mapping[str, Any]) -> None:
        if not self.writer:
            return
        clean = {str(k): _json_value(v) for k, v in row.items()}
        columns = self._columns[kind]
        with output_errors(self.dir), (self.dir / f"{kind}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if any(k not in columns for k in clean):
            columns.extend(k for k in clean if k not in columns)
            self._columns[kind] = _ordered(columns)
            self._write_csv(kind, read_jsonl(self.dir / f"{kind}.jsonl"))
            return
        with (
            output_errors(self.dir),
            (self.dir / f"{kind}.csv").open("a", encoding="utf-8", newline="") as f,
        ):
            csv.DictWriter(f, fieldnames=columns, lineterminator="\n").writerow(
                {k: _csv_value(v) for k, v in clean.items()}
            )

    def log_step(self, row: Mapping[str, Any]) -> None:
        """Append a per-step row; it must have ``step`` (global step, 1-based after it ran).

        Suggested columns: ``step, epoch`` (fractional), ``loss, accuracy``, ``lr/<group>``,
        ``trainable_params, unlocked_groups, images_per_s``.
        """
        _require_step(row, "step row")
        self._append(STEPS, row)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Append a per-epoch row; it must have ``epoch`` and ``step`` (global step at its end).

        Suggested columns: ``train_loss, train_acc, val_loss, val_acc, val_top5``,
        ``lr/<group>, trainable_params, seconds, images_per_s``.
        """
        _require_step(row, "epoch row")
        if "epoch" not in row:
            raise LayerlockError("epoch row needs an 'epoch' value")
        self._append(EPOCHS, row)

    def log_event(self, step: int, epoch: float, label: str, **extra: Any) -> None:
        """Record an event (``"unlock blocks.3"``) at a step; charts mark it with a line."""
        if not self.writer:
            return
        event = {"step": int(step), "epoch": float(epoch), "label": label, **extra}
        with output_errors(self.dir), (self.dir / EVENTS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _json_value(v) for k, v in event.items()}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self, kind: str) -> list[dict[str, Any]]:
        """The rows logged so far: ``kind`` is ``"steps"``, ``"epochs"`` or ``"events"``."""
        if kind not in (STEPS, EPOCHS, "events"):
            raise LayerlockError(f"unknown metrics kind {kind!r}; use steps, epochs or events")
        return read_jsonl(self.dir / f"{kind}.jsonl")

    def columns(self, kind: str) -> list[str]:
        """The CSV header of ``kind`` as it stands."""
        return list(self._columns.get(kind, []))


def _require_step(row: Mapping[str, Any], what: str) -> None:
    if "step" not in row:
        raise LayerlockError(f"{what} needs a 'step' value, got keys {sorted(row)}")


def _ordered(columns: list[str]) -> list[str]:
    first = [c for c in ("step", "epoch") if c in columns]
    return first + [c for c in columns if c not in first]


#: A text cell starting with one of these is a formula to spreadsheet programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_value(value: Any) -> Any:
    """A CSV cell: numbers as they are, text that a spreadsheet would run as a formula
    (``=HYPERLINK(...)`` as a class name) prefixed with ``'``, as spreadsheets expect;
    text that is a plain number (``-1``, ``-inf``) is left as it is.

    Example:
        >>> _csv_value("=1+1"), _csv_value("cat"), _csv_value(-0.5), _csv_value("-inf")
        ("'=1+1", 'cat', '-0.5', '-inf')
    """
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_START) and not _number(value) else value
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


class RunDir:
    """A run directory; every write is atomic and happens only on rank 0.

    Example:
        >>> import tempfile, torch
        >>> run = RunDir(tempfile.mkdtemp())
        >>> _ = run.write_yaml("config.yaml", {"lr": 0.001})
        >>> run.read_yaml("config.yaml")
        {'lr': 0.001}
    """

    def __init__(self, path: str | Path, *, rank: int | None = None) -> None:
        self.path = Path(path)
        self.rank = rank
        self.writer = is_main_process(rank)
        if self.writer:
            with output_errors(self.path):
                self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run directory."""
        return self.path / name

    def write_text(self, name: str, text: str | bytes) -> Path | None:
        """Write a file atomically (rank 0 only; returns ``None`` elsewhere)."""
        return atomic_write(self.path / name, text) if self.writer else None

    def write_yaml(self, name: str, obj: Any) -> Path | None:
        """Write ``obj`` as YAML (``yaml.safe_dump``, keys in insertion order)."""
        return self.write_text(name, yaml.safe_dump(obj, sort_keys=False))

    def write_json(self, name: str, obj: Any) -> Path | None:
        """Write ``obj`` as indented JSON."""
        return self.write_text(name, json.dumps(obj, indent=2, default=_json_value) + "\n")

    def write_csv(
        self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
    ) -> Path | None:
        """Write rows as CSV; columns default to every key, in first-seen order."""
        if columns is None:
            seen: list[str] = []
            for row in rows:
                seen.extend(k for k in row if k not in seen)
            columns = seen
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return self.write_text(name, buffer.getvalue())

    def read_yaml(self, name: str) -> Any:
        """Read a YAML file of the run (``yaml.safe_load``)."""
        path = self.path / name
        if not path.is_file():
            raise LayerlockError(f"{path} does not exist")
        return read_yaml(path, "run file")

    def save_weights(
        self,
        model: nn.Module | Mapping[str, torch.Tensor],
        name: str = MODEL_FILE,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Save the model's weights as safetensors (see :func:`save_weights`)."""
        return save_weights(self.path / name, model, metadata) if self.writer else None

    def save_checkpoint(self, state: Mapping[str, Any], name: str = CHECKPOINT_FILE) -> Path | None:
        """Save a resumable checkpoint (see :func:`save_checkpoint`)."""
        return save_checkpoint(self.path / name, state) if self.writer else None

    def load_checkpoint(self, name: str = CHECKPOINT_FILE) -> dict[str, Any]:
        """Load the checkpoint safely (every rank may read)."""
        return load_checkpoint(self.path / name)

    def has_checkpoint(self, name: str = CHECKPOINT_FILE) -> bool:
        """Whether a checkpoint exists (a folder in its place too: loading it says so)."""
        return (self.path / name).exists()

    def metrics(
        self, resume_step: int | None = None, resume_epoch: int | None = None
    ) -> MetricsLogger:
        """A :class:`MetricsLogger` on this directory (truncated past the resume point)."""
        return MetricsLogger(
            self.path, rank=self.rank, resume_step=resume_step, resume_epoch=resume_epoch
        )

    def plot(self) -> list[Path]:
        """Draw the charts from the logged metrics (see :func:`layerlock.charts.plot_run`)."""
        from .charts import plot_run

        return plot_run(self.path, rank=self.rank)
