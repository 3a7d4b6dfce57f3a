"""What a data set is, as a short digest: to notice when a resumed run's data changed.

A run directory records the digest of its training and evaluation data; a resume whose
data differs (files added, removed, rewritten, relabelled) is refused instead of silently
training short epochs on other samples.

- Files on disk (ImageFolder, CSV): every ``(path, label, size, mtime)``.
- Arrays in memory (the demo): the image bytes and the labels.
- Hugging Face datasets: the dataset's own fingerprint, its length and labels.
- Anything else: its type, length and labels.

Example:
    >>> import numpy as np
    >>> from layerlock.data import ArrayImageDataset
    >>> a = ArrayImageDataset(np.zeros((2, 4, 4), np.uint8), [0, 1], ["x", "y"])
    >>> dataset_digest(a) == dataset_digest(a), len(dataset_digest(a))
    (True, 16)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

__all__ = ["dataset_digest"]


def dataset_digest(dataset: Any) -> str:
    """A 16-hex-digit digest of ``dataset``'s samples and labels (see the module doc)."""
    h = hashlib.sha256(type(dataset).__qualname__.encode())
    h.update(str(len(dataset)).encode())
    samples = getattr(dataset, "samples", None)
    images = getattr(dataset, "images", None)
    hf = getattr(dataset, "hf", None)
    if isinstance(samples, list):
        for path, label in samples:
            h.update(f"{path}\0{label}\0{_stat(path)}\n".encode())
    elif isinstance(images, np.ndarray):
        h.update(np.ascontiguousarray(images).tobytes())
    elif hf is not None:
        h.update(str(getattr(hf, "_fingerprint", "")).encode())
    targets = getattr(dataset, "targets", None)
    if isinstance(targets, list):
        h.update(",".join(str(t) for t in targets).encode())
    indices = getattr(dataset, "indices", None)  # torch.utils.data.Subset
    if indices is not None:
        h.update(dataset_digest(dataset.dataset).encode())
        h.update(",".join(str(int(i)) for i in indices).encode())
    return h.hexdigest()[:16]


def _stat(path: Any) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"
