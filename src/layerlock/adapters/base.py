"""What an adapter is: a named rule that splits one model family into layer groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODEL_LEVEL", "Adapter", "GroupSpec"]

#: Tower name of groups that belong to a multi-tower model as a whole (CLIP's logit_scale).
MODEL_LEVEL = "model"


@dataclass(frozen=True)
class GroupSpec:
    """One group as an adapter proposes it: a name and the parameter names it holds.

    Attributes:
        name: Unique group name (``"blocks.3"``, ``"visual.layer.0"``).
        params: Parameter names as ``model.named_parameters()`` yields them.
        tower: Tower the group belongs to in a multi-tower model (``"visual"``,
            ``"text"``, or :data:`MODEL_LEVEL`), ``None`` for single-tower models.
    """

    name: str
    params: tuple[str, ...]
    tower: str | None = None


@dataclass
class Adapter:
    """Base class of the per-family adapters.

    Subclasses implement :meth:`matches` without importing optional libraries (look at
    ``sys.modules`` and ``type(model).__module__``) and :meth:`groups`.
    """

    name: str = "base"
    notes: list[str] = field(default_factory=list)

    def matches(self, model: nn.Module) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:  # pragma: no cover
        raise NotImplementedError
