"""Any ``nn.Module``: the longest block list is the spine.

The longest ``nn.ModuleList`` / ``nn.Sequential`` (counted in children that hold
parameters) gives one group per child; parameters registered before it form the input
group ``stem`` and those registered after it the output group ``head``. When that list
sits in a staged model (``stages.2.blocks``), the same list of every stage
(``stages.*.blocks``) joins the spine, and what lies between two stages (a downsample)
joins the next block. Models without such a list get one group per top-level child.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, GroupSpec

__all__ = ["GenericAdapter", "find_block_list"]


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def find_block_list(model: nn.Module) -> tuple[str, nn.Module] | None:
    """Return ``(name, container)`` of the longest block list, or ``None``.

    Ties go to the list holding more parameters, then to the first registered.
    """
    best: tuple[int, int, str, nn.Module] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        kids = [c for c in module.children() if _has_params(c)]
        if len(kids) < 2:
            continue
        size = sum(p.numel() for p in module.parameters())
        key = (len(kids), size)
        if best is None or key > best[:2]:
            best = (len(kids), size, name, module)
    return None if best is None else (best[2], best[3])


def _spine(model: nn.Module, prefix: str, container: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of ``container`` and of its siblings at the same path pattern, in order."""
    parts = prefix.split(".") if prefix else []
    lists: list[tuple[str, nn.Module]] = [(prefix, container)]
    if any(p.isdigit() for p in parts):
        lists = []
        for name, module in model.named_modules():
            other = name.split(".")
            if (
                len(other) == len(parts)
                and all(a == b or (a.isdigit() and b.isdigit()) for a, b in zip(parts, other))
                and isinstance(module, (nn.ModuleList, nn.Sequential))
            ):
                lists.append((name, module))
    blocks: list[tuple[str, nn.Module]] = []
    for lname, lmod in lists:
        base = f"{lname}." if lname else ""
        blocks += [(f"{base}{c}", m) for c, m in lmod.named_children() if _has_params(m)]
    return blocks


class GenericAdapter(Adapter):
    """Fallback for any module (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(name="generic")

    def matches(self, model: nn.Module) -> bool:
        return True

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        names = [n for n, _ in model.named_parameters()]
        found = find_block_list(model)
        if found is None:
            return self._top_level(model, names)
        blocks = _spine(model, *found)
        block_of: dict[str, str] = {}
        for bname, _ in blocks:
            for n in names:
                if n.startswith(bname + "."):
                    block_of[n] = bname
        stem: list[str] = []
        head: list[str] = []
        per_block: dict[str, list[str]] = {b: [] for b, _ in blocks}
        between: list[str] = []  # after one block, before the next: joins the next
        for n in names:
            if n in block_of:
                per_block[block_of[n]] += between
                between = []
                per_block[block_of[n]].append(n)
            elif any(per_block.values()):
                between.append(n)
            else:
                stem.append(n)
        head = between
        specs = [GroupSpec("stem", tuple(stem))] if stem else []
        specs += [GroupSpec(b, tuple(p)) for b, p in per_block.items() if p]
        if head:
            specs.append(GroupSpec("head", tuple(head)))
        return specs

    @staticmethod
    def _top_level(model: nn.Module, names: list[str]) -> list[GroupSpec]:
        order: list[str] = []
        members: dict[str, list[str]] = {}
        for n in names:
            key = n.split(".", 1)[0] if "." in n else "stem"
            if key not in members:
                order.append(key)
                members[key] = []
            members[key].append(n)
        return [GroupSpec(k, tuple(members[k])) for k in order]


ADAPTER = GenericAdapter
