"""Placeholder while the torchvision adapter is written; matches nothing."""

from __future__ import annotations

from torch import nn

from .base import Adapter, GroupSpec


class _Pending(Adapter):
    def __init__(self) -> None:
        super().__init__(name="torchvision")

    def matches(self, model: nn.Module) -> bool:
        return False

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        raise NotImplementedError


ADAPTER = _Pending
