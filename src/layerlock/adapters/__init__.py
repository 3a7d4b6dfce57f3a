"""Per-family adapters that split a model into layer groups.

An adapter is chosen from the model's class and module without importing libraries the
caller has not imported: a model can only be an OpenCLIP model if ``open_clip`` is
already in ``sys.modules``.

Order: OpenCLIP models and towers first (they define ``layer_groups()`` in OpenCLIP's
form, which that adapter reuses with its own placement rules); then any other module that
names its own groups with a ``layer_groups()`` method (:mod:`.own`: layerlock's
``OpenCLIPClassifier`` is one), so ``layer_groups(model)``, ``lock`` and a job that uses
the method agree; then transformers, timm, torchvision, and the generic fallback.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..errors import LayerlockError, suggest
from .base import MODEL_LEVEL, Adapter, GroupSpec

__all__ = ["ADAPTER_NAMES", "MODEL_LEVEL", "Adapter", "GroupSpec", "select_adapter"]

#: Adapters in the order they are tried; the last one matches any module.
ADAPTER_NAMES = ("open_clip", "own", "transformers", "timm", "torchvision", "generic")


def _load(name: str) -> Adapter:
    module = importlib.import_module(f"{__name__}.{name}")
    return module.ADAPTER()


def select_adapter(model: nn.Module, name: str | None = None) -> Adapter:
    """Return the adapter for ``model`` (or the one called ``name``).

    Example:
        >>> import torch.nn as nn
        >>> select_adapter(nn.Sequential(nn.Linear(2, 2))).name
        'generic'
    """
    if name is not None:
        if name not in ADAPTER_NAMES:
            raise LayerlockError(
                f"unknown adapter {name!r}{suggest(name, ADAPTER_NAMES)} "
                f"Adapters: {', '.join(ADAPTER_NAMES)}"
            )
        return _load(name)
    for candidate in ADAPTER_NAMES:
        adapter = _load(candidate)
        if adapter.matches(model):
            return adapter
    raise AssertionError("unreachable: the generic adapter matches every module")
