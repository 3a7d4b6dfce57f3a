"""Layer groups: an ordered, complete partition of a model's parameters.

A model's parameters are split into groups, input side first: the input group (stem,
patch embedding, class and position embeddings), one group per block, and the output
side (final norm, head). :func:`layer_groups` picks an adapter for the model's family
and checks that the result is a partition; everything else in layerlock works on the
:class:`LayerGroups` it returns.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from torch import nn

from .adapters import MODEL_LEVEL, GroupSpec, select_adapter
from .adapters.matcher import matcher_groups
from .errors import (
    ConfigError,
    LayerlockError,
    PartitionError,
    UnknownGroupError,
    abbreviate,
    shorten,
    suggest,
)

__all__ = [
    "GroupSelector",
    "LayerGroup",
    "LayerGroups",
    "layer_groups",
    "require_module",
    "unwrap",
]

#: What ``LayerGroups.select`` and ``lock(groups=...)`` accept: an index (negative counts
#: from the top), a name, a glob pattern, a slice, a string spec ``"0,3:5,blocks.*"``, or a
#: sequence of those.
GroupSelector = int | str | slice | Sequence[int | str | slice]


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's model inside DDP / DataParallel / FSDP1 / ``torch.compile`` wrappers.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> unwrap(torch.nn.DataParallel(m)) is m
        True
    """
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and type(model).__name__ in {
            "DistributedDataParallel",
            "DataParallel",
            "FullyShardedDataParallel",
        }:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


@dataclass(frozen=True)
class LayerGroup:
    """One layer group.

    Attributes:
        name: Unique name (``"blocks.3"``, ``"head"``, ``"visual.layer.11"``).
        index: Position in the model's order, 0 = input side.
        param_names: Names of the parameters in the group, in model order.
        modules: Names of the largest modules whose parameters all lie in this group.
        num_params: Number of scalar parameters (tied parameters counted once).
        tower: Tower of a multi-tower model (``"visual"``, ``"text"``, ``"model"``) or None.
        params: The parameter tensors themselves, in ``param_names`` order.
    """

    name: str
    index: int
    param_names: tuple[str, ...]
    modules: tuple[str, ...]
    num_params: int
    tower: str | None = None
    params: tuple[nn.Parameter, ...] = field(default=(), repr=False, compare=False)


class LayerGroups(Sequence[LayerGroup]):
    """The ordered layer groups of one model; a sequence of :class:`LayerGroup`.

    Index it by position or by name; :meth:`select` resolves selections for
    ``lock(groups=...)``.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2))
        >>> groups = layer_groups(model)
        >>> groups.names
        ['0', '1', '2']
        >>> groups["2"].num_params
        10
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup],
        *,
        model: nn.Module,
        adapter: str,
        coarse: bool,
        module_group: dict[str, int],
        notes: Sequence[str] = (),
    ) -> None:
        self._groups = tuple(groups)
        self._by_name = {g.name: g for g in self._groups}
        self.model = model
        self.adapter = adapter
        self.coarse = coarse
        self.notes = tuple(notes)
        #: Module name -> index of the group all its parameters lie in (modules whose
        #: parameters span several groups are absent).
        self.module_group = module_group
        self._param_group = {n: g.index for g in self._groups for n in g.param_names}

    # -- sequence protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._groups)

    @overload
    def __getitem__(self, key: int | str) -> LayerGroup: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[LayerGroup]: ...
    def __getitem__(self, key: int | str | slice) -> LayerGroup | Sequence[LayerGroup]:
        if isinstance(key, str):
            if key not in self._by_name:
                raise UnknownGroupError(self._unknown(key))
            return self._by_name[key]
        if isinstance(key, int) and not -len(self) <= key < len(self):
            raise UnknownGroupError(
                f"group index {key} out of range; this model has {len(self)} groups "
                f"(0..{len(self) - 1}, or -1..-{len(self)} from the top)"
            )
        return self._groups[key]

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self._groups)

    def __repr__(self) -> str:
        return f"LayerGroups({len(self)} groups via {self.adapter!r}: {abbreviate(self.names)})"

    # -- views -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Group names in order."""
        return [g.name for g in self._groups]

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters over all groups."""
        return sum(g.num_params for g in self._groups)

    @property
    def towers(self) -> list[str | None]:
        """Towers in order of first appearance (``[None]`` for a single-tower model)."""
        seen: list[str | None] = []
        for g in self._groups:
            if g.tower not in seen:
                seen.append(g.tower)
        return seen

    def tower_indices(self, tower: str | None) -> list[int]:
        """Indices of the groups of one tower, input side first."""
        return [g.index for g in self._groups if g.tower == tower]

    def group_of(self, param_name: str) -> LayerGroup:
        """Return the group that holds parameter ``param_name``."""
        if param_name not in self._param_group:
            raise UnknownGroupError(
                f"no parameter named {param_name!r}" + suggest(param_name, self._param_group)
            )
        return self._groups[self._param_group[param_name]]

    def first_unlocked_by(self, index: int) -> int:
        """The smallest ``unlocked_groups`` k that makes group ``index`` trainable.

        In a multi-tower model k counts within the group's tower; model-level groups
        (CLIP's ``logit_scale``) are unlocked by any k >= 1.
        """
        g = self[index]
        if g.tower == MODEL_LEVEL:
            return 1
        members = self.tower_indices(g.tower)
        return len(members) - members.index(g.index)

    # -- selection ---------------------------------------------------------------------
    def select(self, spec: GroupSelector, *, within: Sequence[int] | None = None) -> list[int]:
        """Resolve a selection to sorted group indices.

        Args:
            spec: An int (negative counts from the top), a name, a glob pattern
                (``"blocks.1*"``), a slice, a string ``"0,3:5,head"``, or a list of these.
            within: Restrict the selection to these indices (a tower); ints and slices then
                count within it.

        Returns:
            Sorted, unique indices into this sequence.

        Raises:
            UnknownGroupError: When an element matches nothing or the selection is empty.

        Example:
            >>> import torch.nn as nn
            >>> groups = layer_groups(nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)]))
            >>> groups.select("0,-1"), groups.select(slice(1, 3)), groups.select("[34]")
            ([0, 4], [1, 2], [3, 4])
        """
        pool = list(range(len(self))) if within is None else list(within)
        items: list[Any]
        if isinstance(spec, (list, tuple)):
            items = list(spec)
        else:
            items = [spec]
        chosen: set[int] = set()
        for item in items:
            if isinstance(item, str) and "," in item and item not in self._by_name:
                chosen.update(
                    self.select([p.strip() for p in item.split(",") if p.strip()], within=pool)
                )
                continue
            chosen.update(self._select_one(item, pool))
        if not chosen:
            raise UnknownGroupError(
                f"the selection {spec!r} is empty; groups: {abbreviate([self._groups[i].name for i in pool])}"
            )
        return sorted(chosen)

    def _select_one(self, item: Any, pool: list[int]) -> list[int]:
        names = [self._groups[i].name for i in pool]
        if isinstance(item, bool):
            raise UnknownGroupError(f"a group selector cannot be a bool ({item!r})")
        if isinstance(item, int):
            if not -len(pool) <= item < len(pool):
                raise UnknownGroupError(
                    f"group index {item} out of range; valid: 0..{len(pool) - 1} "
                    f"or -1..-{len(pool)} ({len(pool)} groups)"
                )
            return [pool[item]]
        if isinstance(item, slice):
            return pool[item]
        if not isinstance(item, str):
            raise UnknownGroupError(
                f"cannot select groups with {item!r} ({type(item).__name__}); use an int, "
                "a name, a glob pattern, a slice or a string like '0,3:5,head'"
            )
        text = item.strip()
        if text in names:
            return [pool[names.index(text)]]
        if re.fullmatch(r"-?\d+", text):
            return self._select_one(int(text), pool)
        m = re.fullmatch(r"(-?\d*):(-?\d*)", text)
        if m:
            start = int(m.group(1)) if m.group(1) else None
            stop = int(m.group(2)) if m.group(2) else None
            hit = pool[slice(start, stop)]
            if not hit:
                raise UnknownGroupError(
                    f"slice {text!r} selects no group of {len(pool)} (0..{len(pool) - 1})"
                )
            return hit
        if any(c in text for c in "*?["):
            hit = [pool[i] for i, n in enumerate(names) if fnmatch.fnmatchcase(n, text)]
            if not hit:
                raise UnknownGroupError(
                    f"pattern {text!r} matches no group; groups: {abbreviate(names)}"
                )
            return hit
        raise UnknownGroupError(self._unknown(text, names))

    def _unknown(self, name: str, names: Sequence[str] | None = None) -> str:
        names = self.names if names is None else list(names)
        hint = suggest(name, names)
        return f"unknown group {name!r}{hint}{' ' if hint else '. '}Groups: {abbreviate(names)}"

    # -- rendering ---------------------------------------------------------------------
    def as_dicts(self) -> list[dict[str, Any]]:
        """Plain-data view, one dict per group (for ``--json``)."""
        return [
            {
                "index": g.index,
                "name": g.name,
                "tower": g.tower,
                "num_params": g.num_params,
                "param_names": list(g.param_names),
                "modules": list(g.modules),
                "first_unlocked_by": self.first_unlocked_by(g.index),
            }
            for g in self._groups
        ]


def require_module(model: object) -> None:
    """Raise :class:`~layerlock.errors.ConfigError` unless ``model`` is a ``torch.nn.Module``.

    Example:
        >>> require_module("resnet18")
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: expected a torch.nn.Module, got str 'resnet18'; build the model first (layerlock.models.build_model)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"expected a torch.nn.Module, got {type(model).__name__} {shorten(model, 40)}; "
            "build the model first (layerlock.models.build_model)"
        )


def layer_groups(
    model: nn.Module,
    coarse: bool = False,
    *,
    matcher: dict[str, Any] | None = None,
    adapter: str | None = None,
) -> LayerGroups:
    """Split ``model`` into ordered layer groups, input side first.

    The adapter is chosen from the model's family (OpenCLIP, Hugging Face transformers,
    timm, torchvision, or the generic fallback) without importing libraries the caller
    has not imported. A model that names its own groups with a ``layer_groups()`` method
    (OpenCLIP's form ``[(name, [modules or parameters]), ...]``, or a :class:`LayerGroups`)
    is split by it, so this function, :func:`~layerlock.lock` and code that calls the
    method agree (:mod:`layerlock.adapters.own`). The result is checked to be a complete
    partition: every parameter in exactly one group, tied parameters once.

    Args:
        model: The model; DDP / DataParallel / ``torch.compile`` wrappers are looked through.
        coarse: Use the family's coarse grouping (timm: one group per stage).
        matcher: A timm-style ``group_matcher`` dict of regexes that overrides the adapter.
        adapter: Force an adapter by name (``"open_clip"``, ``"own"``, ``"transformers"``,
            ``"timm"``, ``"torchvision"``, ``"generic"``).

    Returns:
        The groups as a :class:`LayerGroups` sequence.

    Raises:
        ConfigError: When ``model`` is not a ``torch.nn.Module``.
        LayerlockError: When the model has no parameters or the adapter name is unknown.
        PartitionError: When the adapter's groups are not a partition (a bug).

    Example:
        >>> import timm
        >>> groups = layer_groups(timm.create_model("test_vit", num_classes=3))
        >>> groups.names[0], groups.names[-1], len(groups)
        ('stem', 'head', 8)
    """
    require_module(model)
    base = unwrap(model)
    named = dict(base.named_parameters())
    if not named:
        raise LayerlockError(
            f"{type(base).__name__} has no parameters: there is nothing to group or lock"
        )
    if matcher is not None:
        specs, used, notes = matcher_groups(base, matcher), "matcher", []
    else:
        chosen = select_adapter(base, adapter)
        specs, used, notes = chosen.groups(base, coarse), chosen.name, list(chosen.notes)
    return _build(base, specs, used, coarse, named, notes)


def _build(
    model: nn.Module,
    specs: Sequence[GroupSpec],
    adapter: str,
    coarse: bool,
    named: dict[str, nn.Parameter],
    notes: Sequence[str],
) -> LayerGroups:
    check_partition(specs, named, adapter)
    owner: dict[int, int] = {}
    for i, spec in enumerate(specs):
        for n in spec.params:
            owner[id(named[n])] = i
    module_group = _module_groups(model, owner)
    # Largest modules of each group: those whose parent is not wholly in the same group.
    largest: dict[int, list[str]] = {i: [] for i in range(len(specs))}
    for mname, gi in module_group.items():
        parent = mname.rsplit(".", 1)[0] if "." in mname else ""
        if mname and module_group.get(parent) != gi:
            largest[gi].append(mname)
    groups = [
        LayerGroup(
            name=spec.name,
            index=i,
            param_names=tuple(spec.params),
            modules=tuple(largest[i]),
            num_params=sum(named[n].numel() for n in spec.params),
            tower=spec.tower,
            params=tuple(named[n] for n in spec.params),
        )
        for i, spec in enumerate(specs)
    ]
    return LayerGroups(
        groups, model=model, adapter=adapter, coarse=coarse, module_group=module_group, notes=notes
    )


def check_partition(
    specs: Sequence[GroupSpec], named: dict[str, nn.Parameter], adapter: str = "adapter"
) -> None:
    """Raise :class:`PartitionError` unless ``specs`` split ``named`` exactly once each.

    Example:
        >>> import torch.nn as nn
        >>> from layerlock.adapters import GroupSpec
        >>> lin = nn.Linear(2, 2)
        >>> check_partition([GroupSpec("a", ("weight",))], dict(lin.named_parameters()))
        Traceback (most recent call last):
        ...
        layerlock.errors.PartitionError: adapter puts no group on 1 parameter(s): bias
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    names: set[str] = set()
    for spec in specs:
        if spec.name in names:
            problems.append(f"group name {spec.name!r} used twice")
        names.add(spec.name)
        if not spec.params:
            problems.append(f"group {spec.name!r} is empty")
        for p in spec.params:
            if p not in named:
                problems.append(f"group {spec.name!r} names unknown parameter {p!r}")
            elif p in seen:
                problems.append(f"parameter {p!r} is in groups {seen[p]!r} and {spec.name!r}")
            else:
                seen[p] = spec.name
    missing = [n for n in named if n not in seen]
    if missing:
        problems.append(f"puts no group on {len(missing)} parameter(s): {abbreviate(missing)}")
    if problems:
        raise PartitionError(f"{adapter} " + "; ".join(problems))


def _module_groups(model: nn.Module, owner: dict[int, int]) -> dict[str, int]:
    """Map each module name to the group holding all parameters below it, where unique.

    Parameter-less modules (activations, non-affine norms) take their parent's group, or
    failing that the group of the closest parameter-owning module registered before them
    (an activation follows its conv / norm), else after them.
    """
    result: dict[str, int] = {}
    pending: list[str] = []
    order = [n for n, _ in model.named_modules(remove_duplicate=False)]
    for name, module in model.named_modules(remove_duplicate=False):
        found = {owner[id(p)] for p in module.parameters() if id(p) in owner}
        if len(found) == 1:
            result[name] = found.pop()
        elif not found:
            pending.append(name)
    position = {n: i for i, n in enumerate(order)}
    for name in pending:
        parent = name
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent in result:
                result[name] = result[parent]
                break
        else:
            idx = position[name]
            before = [n for n in reversed(order[:idx]) if n in result and n]
            after = [n for n in order[idx + 1 :] if n in result and not n.startswith(name + ".")]
            near = before or after
            if near:
                result[name] = result[near[0]]
    return result
