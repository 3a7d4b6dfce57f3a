"""Audit: prove that locked parameters and frozen BatchNorm statistics did not change.

:func:`fingerprint` records a digest of every parameter that is locked
(``requires_grad=False``) and of the buffers of every BatchNorm whose statistics are
frozen (or of all BatchNorms with ``buffers="all_bn"``); :func:`audit` compares the
model with such a fingerprint and lists what changed.

Example:
    >>> import torch
    >>> from layerlock import lock
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> _ = lock(model, 1)
    >>> before = fingerprint(model)
    >>> audit(model, before).ok
    True
    >>> with torch.no_grad():
    ...     _ = model[0].weight.add_(1.0)
    >>> print(audit(model, before))
    1 of 2 locked parameter(s) changed: 0.weight
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import ConfigError, abbreviate
from .groups import unwrap
from .lock import frozen_bn_modules

__all__ = ["AuditReport", "Fingerprint", "audit", "fingerprint"]


def _digest(t: torch.Tensor) -> str:
    data = t.detach().cpu().contiguous()
    raw = data.reshape(-1).view(torch.uint8) if data.numel() else data.reshape(-1)
    h = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16)
    h.update(f"{tuple(data.shape)}{data.dtype}".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Digests of locked parameters and frozen BatchNorm buffers, by name."""

    params: dict[str, str]
    buffers: dict[str, str]


@dataclass(frozen=True)
class AuditReport:
    """What :func:`audit` found.

    Attributes:
        changed_params: Locked parameters whose values changed.
        changed_buffers: BatchNorm buffers that changed.
        checked_params: Number of parameters compared.
        checked_buffers: Number of buffers compared.
    """

    changed_params: tuple[str, ...]
    changed_buffers: tuple[str, ...]
    checked_params: int
    checked_buffers: int

    @property
    def ok(self) -> bool:
        """True when nothing changed."""
        return not self.changed_params and not self.changed_buffers

    def __str__(self) -> str:
        if self.ok:
            return (
                f"unchanged: {self.checked_params} locked parameter(s), "
                f"{self.checked_buffers} BatchNorm buffer(s)"
            )
        parts = []
        if self.changed_params:
            parts.append(
                f"{len(self.changed_params)} of {self.checked_params} locked parameter(s) "
                f"changed: {abbreviate(self.changed_params)}"
            )
        if self.changed_buffers:
            parts.append(
                f"{len(self.changed_buffers)} of {self.checked_buffers} BatchNorm buffer(s) "
                f"changed: {abbreviate(self.changed_buffers)}"
            )
        return "; ".join(parts)


def fingerprint(
    model: nn.Module, *, buffers: Literal["frozen_bn", "all_bn", "none"] = "frozen_bn"
) -> Fingerprint:
    """Digest the locked parameters and BatchNorm buffers of ``model`` as they are now.

    Args:
        model: The model (wrappers are looked through).
        buffers: ``"frozen_bn"``: buffers of BatchNorms whose stats layerlock froze;
            ``"all_bn"``: of every BatchNorm; ``"none"``.

    Returns:
        A :class:`Fingerprint` (digests only: cheap to keep for large models).

    Example:
        >>> import torch
        >>> fingerprint(torch.nn.Linear(2, 2)).params  # nothing locked
        {}
    """
    if buffers not in ("frozen_bn", "all_bn", "none"):
        raise ConfigError(f"buffers must be 'frozen_bn', 'all_bn' or 'none', got {buffers!r}")
    base = unwrap(model)
    params = {n: _digest(p) for n, p in base.named_parameters() if not p.requires_grad}
    bufs: dict[str, str] = {}
    if buffers != "none":
        chosen = set(frozen_bn_modules(base)) if buffers == "frozen_bn" else None
        for mname, m in base.named_modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and (
                chosen is None or mname in chosen
            ):
                for bname, b in m.named_buffers(recurse=False):
                    if b is not None:
                        bufs[f"{mname}.{bname}" if mname else bname] = _digest(b)
    return Fingerprint(params, bufs)


def audit(model: nn.Module, before: Fingerprint) -> AuditReport:
    """Compare ``model`` with a :class:`Fingerprint` taken earlier.

    Only the parameters and buffers in the fingerprint are compared (those locked when
    it was taken).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2).requires_grad_(False)
        >>> fp = fingerprint(m)
        >>> audit(m, fp).ok, audit(m, fp).checked_params
        (True, 2)
    """
    base = unwrap(model)
    named = dict(base.named_parameters())
    bufs = dict(base.named_buffers())
    changed_p = tuple(
        n for n, d in before.params.items() if n not in named or _digest(named[n]) != d
    )
    changed_b = tuple(
        n for n, d in before.buffers.items() if n not in bufs or _digest(bufs[n]) != d
    )
    return AuditReport(changed_p, changed_b, len(before.params), len(before.buffers))
