"""The feature cache on disk: one self-checking file per cache key, published atomically.

Layout of ``features-<key digest>.llfeat``::

    bytes 0..8      magic  b"LLFEAT01"
    bytes 8..16     length of the JSON header (little-endian uint64)
    bytes 16..      JSON header: key, shape, dtype, payload size and CRC-32
    HEADER_BYTES..  labels (int64, one per row), then the features (row-major)

A file is trusted only when the magic, the header's key, shape and dtype, the file size
and the payload's CRC-32 all match; anything else (a torn write, a truncated copy, a
flipped byte, another version) is reported with a reason and the cache is filled again.

Writers never touch a published file. A fill writes a fresh temporary file in the same
directory (created with ``O_EXCL``: no two writers share one), memory-maps it, and when
the payload is complete writes the header, ``fsync``\\ s it and renames it over the
final name (``os.replace``, atomic on POSIX): readers see the old file or the complete
new one, never a half-written one. An interrupted fill leaves at most its temporary file
(removed when the fill raises; a killed process leaves a ``.tmp`` file that no reader
opens). An advisory lock (``flock`` on ``<name>.lock``) makes a second run with the same
key wait for the first one's fill and then reuse it instead of filling twice.

Example:
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> w = FileWriter(Path(d) / "f.llfeat", {"k": 1}, (3, 2), torch.float16)
    >>> _ = w.features.fill_(1), w.labels.copy_(torch.arange(3)), w.publish()
    >>> feats, labels = open_published(Path(d) / "f.llfeat", {"k": 1}, (3, 2), torch.float16)
    >>> float(feats.sum()), labels.tolist()
    (6.0, [0, 1, 2])
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "FILE_SUFFIX",
    "FileWriter",
    "file_lock",
    "map_published",
    "open_published",
    "problem_with",
]

FILE_SUFFIX = ".llfeat"
MAGIC = b"LLFEAT01"
HEADER_BYTES = 4096  # header region; the payload starts page-aligned after it
_CRC_CHUNK = 64 * 2**20
_NUMPY: dict[torch.dtype, type[np.generic]] = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.bfloat16: np.uint16,
}


def _sizes(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, int]:
    rows = shape[0]
    return rows * 8, math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _crc(mm: np.ndarray) -> int:
    crc = 0
    flat = mm.reshape(-1).view(np.uint8)
    for i in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[i : i + _CRC_CHUNK].tobytes(), crc)
    return crc


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < 16 or head[:8] != MAGIC:
        raise ValueError("not a layerlock feature file (bad magic)")
    n = int.from_bytes(head[8:16], "little")
    if not 0 < n <= HEADER_BYTES - 16:
        raise ValueError("bad header length")
    header: dict[str, Any] = json.loads(head[16 : 16 + n])
    return header


def problem_with(
    path: Path, key: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype
) -> str | None:
    """Why the file at ``path`` cannot be trusted for ``key`` (one line), or None.

    Reads the whole payload once (CRC-32).
    """
    if not path.is_file():
        return "no file"
    try:
        header = _read_header(path)
    except (OSError, ValueError) as e:
        return f"unreadable header ({e})"
    if header.get("key") != key:
        return "the header's key differs"
    if header.get("shape") != list(shape) or header.get("dtype") != str(dtype):
        return "the header's shape or dtype differs"
    labels, feats = _sizes(shape, dtype)
    size = path.stat().st_size
    if size != HEADER_BYTES + labels + feats or header.get("payload") != labels + feats:
        return f"size {size:,} bytes, expected {HEADER_BYTES + labels + feats:,} (truncated?)"
    payload = np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_BYTES)
    if _crc(payload) != header.get("crc32"):
        return "checksum mismatch (corrupt)"
    return None


def open_published(
    path: Path, key: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(features, labels)`` memory-mapped from a valid file, or None (see :func:`problem_with`)."""
    if problem_with(path, key, shape, dtype) is not None:
        return None
    return map_published(path, shape, dtype)


def map_published(
    path: Path, shape: tuple[int, ...], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` of a file :func:`problem_with` found valid, memory-mapped."""
    return _map(path, shape, dtype, mode="c")


def _map(
    path: Path, shape: tuple[int, ...], dtype: torch.dtype, mode: Literal["c", "r+"]
) -> tuple[torch.Tensor, torch.Tensor]:
    labels_bytes, _ = _sizes(shape, dtype)
    # mode "c" (copy-on-write): writable tensors without touching the file
    lab = np.memmap(path, dtype=np.int64, mode=mode, offset=HEADER_BYTES, shape=(shape[0],))
    feats = np.memmap(
        path, dtype=_NUMPY[dtype], mode=mode, offset=HEADER_BYTES + labels_bytes, shape=shape
    )
    features = torch.from_numpy(feats)
    if dtype == torch.bfloat16:
        features = features.view(torch.bfloat16)
    return features, torch.from_numpy(lab)


class FileWriter:
    """A temporary feature file to fill in place, then :meth:`publish` (or :meth:`discard`).

    Args:
        path: The final path (published by renaming the temporary file onto it).
        key: The cache key (stored in the header, compared on open).
        shape: Shape of the features (rows first).
        dtype: Storage dtype.

    Attributes:
        features: The memory-mapped features to fill.
        labels: The memory-mapped labels to fill.
    """

    def __init__(
        self, path: Path, key: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype
    ) -> None:
        self.path, self.key, self.shape, self.dtype = path, key, shape, dtype
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.tmp = path.with_name(f".{path.name}.{token}.tmp")
        labels, feats = _sizes(shape, dtype)
        self.payload = labels + feats
        fd = os.open(self.tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            os.ftruncate(fd, HEADER_BYTES + self.payload)
        finally:
            os.close(fd)
        self.features, self.labels = _map(self.tmp, shape, dtype, mode="r+")

    def publish(self) -> Path:
        """Write the header, fsync, rename onto the final path; return it."""
        payload = np.memmap(self.tmp, dtype=np.uint8, mode="r+", offset=HEADER_BYTES)
        header = {
            "key": self.key,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "payload": self.payload,
            "crc32": _crc(payload),
        }
        text = json.dumps(header, sort_keys=True).encode()
        if len(text) > HEADER_BYTES - 16:
            raise ValueError("cache key too long for the header")
        del payload
        self.features = self.labels = torch.empty(0)  # drop the writable mappings
        with self.tmp.open("r+b") as f:
            f.write(MAGIC + len(text).to_bytes(8, "little") + text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file (an interrupted fill)."""
        self.features = self.labels = torch.empty(0)
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (waits for another holder)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
