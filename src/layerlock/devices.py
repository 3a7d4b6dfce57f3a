"""Devices and precision: where a run computes and in which float type.

Example:
    >>> resolve_device("cpu", 0)
    device(type='cpu')
    >>> resolve_precision("auto", torch.device("cpu")) is None  # fp32 on the CPU
    True
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["autocast", "resolve_device", "resolve_precision"]


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """The device for ``choice`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

    ``auto`` takes this process's CUDA device (``local_rank`` under torchrun), else MPS,
    else the CPU.

    Raises:
        ConfigError: A device that this machine does not have.

    Example:
        >>> resolve_device("auto", 0).type in {"cpu", "cuda", "mps"}
        True
    """
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {choice!r} requested but no CUDA device is available; use auto or cpu"
        )
    if choice == "mps" and not _mps_available():
        raise ConfigError("device: 'mps' requested but MPS is not available here; use auto or cpu")
    if choice == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(choice)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``choice`` (``fp32``, ``bf16``, ``auto``); ``None`` = fp32.

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere (CPU autocast
    to bf16 is slower than fp32 on most CPUs).

    Raises:
        ConfigError: bf16 on a CUDA device without bf16 support.

    Example:
        >>> resolve_precision("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if choice == "fp32":
        return None
    if choice == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision: bf16 is not supported on {device}; use fp32 or auto")
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op context for fp32.

    Example:
        >>> with autocast(torch.device("cpu"), None):
        ...     pass
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
