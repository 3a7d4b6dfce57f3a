"""timm models: the model's own ``group_matcher`` (fine or coarse)."""

from __future__ import annotations

from torch import nn

from .base import Adapter, GroupSpec
from .generic import GenericAdapter
from .matcher import matcher_groups

__all__ = ["TimmAdapter"]


class TimmAdapter(Adapter):
    """Any model with a timm-style ``group_matcher(coarse)`` method.

    The numbering is exactly that of ``timm.models.group_parameters``; timm models without
    ``group_matcher`` (MetaFormer family, PiT, ...) fall back to the generic adapter.
    """

    def __init__(self) -> None:
        super().__init__(name="timm")

    def matches(self, model: nn.Module) -> bool:
        return callable(getattr(model, "group_matcher", None)) or type(model).__module__.startswith(
            "timm."
        )

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        fn = getattr(model, "group_matcher", None)
        if not callable(fn):
            fallback = GenericAdapter()
            self.notes = [f"{type(model).__name__} has no group_matcher; using the generic adapter"]
            return fallback.groups(model, coarse)
        self.notes = []
        return matcher_groups(model, fn(coarse=coarse))


ADAPTER = TimmAdapter
