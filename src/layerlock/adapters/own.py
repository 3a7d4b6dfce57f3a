"""Models that name their own groups: a ``layer_groups()`` method.

The protocol (OpenCLIP main's, which layerlock's own classifiers follow too): a module
whose ``layer_groups()`` returns, input side first, either

- a sequence of ``(name, members)`` pairs, ``members`` being submodules, parameters or
  parameter names of the module (``None`` entries are skipped), or
- a :class:`~layerlock.LayerGroups` of the module (its groups' parameters are used);

is split exactly so (the method is looked up on the class: a ``layer_groups`` property is
not one). A method with a ``coarse`` parameter is called with
``coarse=...``; one without it gives its groups for both. Every parameter must be in
exactly one group (a tied parameter counts for the first group that names it; empty
groups are dropped), else :class:`~layerlock.PartitionError` names what is missing.

Selection: this adapter is tried right after the OpenCLIP one, whose towers implement the
same method (that adapter reuses it and adds OpenCLIP's placement rules), and before every
other. A ``layer_groups`` method that returns something else (another library's method of
that name) falls back to the adapter that would be chosen without this rule, with a
note. While a model's method runs, the model is not offered to this adapter again, so a
method may itself call ``layerlock.layer_groups(self)`` to start from another adapter.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, cast

from torch import nn

from ..errors import PartitionError, abbreviate
from .base import Adapter, GroupSpec

__all__ = ["OwnAdapter", "own_groups"]

#: A group as the method gives it: name, members, tower (``None`` for one-tower models).
RawGroup = tuple[str, list[Any], str | None]

# ids of the models whose own layer_groups() is running (in this thread / task)
_RUNNING: ContextVar[frozenset[int]] = ContextVar("layerlock_own_groups", default=frozenset())


@contextlib.contextmanager
def _running(model: nn.Module) -> Iterator[None]:
    token = _RUNNING.set(_RUNNING.get() | {id(model)})
    try:
        yield
    finally:
        _RUNNING.reset(token)


def _method(model: nn.Module) -> Callable[..., Any] | None:
    """The bound ``layer_groups`` method, looked up on the class (a property is not one)."""
    if not callable(getattr(type(model), "layer_groups", None)):
        return None
    return cast("Callable[..., Any]", model.layer_groups)


def _takes_coarse(fn: Callable[..., Any] | None) -> bool:
    if fn is None:
        return False
    try:
        return "coarse" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _as_raw(result: Any) -> list[RawGroup] | None:
    """The groups in ``result``, or None when it is not in one of the protocol's forms."""
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        return None
    raw: list[RawGroup] = []
    for item in result:
        if hasattr(item, "param_names") and isinstance(getattr(item, "name", None), str):
            members = list(getattr(item, "params", ()) or item.param_names)
            raw.append((item.name, members, getattr(item, "tower", None)))
            continue
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not isinstance(item[0], str)
            or isinstance(item[1], (str, bytes))
        ):
            return None
        try:
            members = list(item[1])
        except TypeError:
            return None
        if not all(m is None or isinstance(m, (nn.Module, nn.Parameter, str)) for m in members):
            return None
        raw.append((item[0], members, None))
    return raw


def own_groups(model: nn.Module, coarse: bool = False) -> list[RawGroup] | None:
    """Call ``model.layer_groups()`` and return its groups, or None outside the protocol.

    Example:
        >>> import torch.nn as nn
        >>> class Net(nn.Sequential):
        ...     def layer_groups(self):
        ...         return [("body", [self[0]]), ("head", [self[1]])]
        >>> [name for name, _, _ in own_groups(Net(nn.Linear(2, 2), nn.Linear(2, 1)))]
        ['body', 'head']
    """
    fn = _method(model)
    if fn is None or id(model) in _RUNNING.get():
        return None  # a method that asks layerlock for its model's groups wants another rule
    with _running(model):
        result = fn(coarse=coarse) if _takes_coarse(fn) else fn()
    return _as_raw(result)


class OwnAdapter(Adapter):
    """Any module with a ``layer_groups()`` method (see the module docstring).

    Example:
        >>> import torch.nn as nn, layerlock
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)
        ...     def layer_groups(self):
        ...         return [("body", [self.body]), ("head", [self.head])]
        >>> groups = layerlock.layer_groups(Net())
        >>> groups.names, groups.adapter
        (['body', 'head'], 'own')
    """

    def __init__(self) -> None:
        super().__init__(name="own")

    def matches(self, model: nn.Module) -> bool:
        return _method(model) is not None and id(model) not in _RUNNING.get()

    def groups(self, model: nn.Module, coarse: bool = False) -> list[GroupSpec]:
        self.notes = []
        what = f"{type(model).__name__}.layer_groups()"
        raw = own_groups(model, coarse)
        if raw is None:
            from . import select_adapter

            with _running(model):
                fallback = select_adapter(model)
                specs = fallback.groups(model, coarse)
            self.notes = [
                f"{what} does not return layer groups (a list of (name, [modules or "
                f"parameters]) or LayerGroups); using the {fallback.name} adapter",
                *fallback.notes,
            ]
            return specs
        if coarse and not _takes_coarse(_method(model)):
            self.notes.append(f"{what} has no coarse form; its groups are used as they are")
        return _resolve(model, raw, what)


def _member_params(model: nn.Module, member: Any, params: dict[str, nn.Parameter]) -> list[Any]:
    if isinstance(member, nn.Parameter):
        return [member]
    if isinstance(member, nn.Module):
        return list(member.parameters())
    if isinstance(member, str):
        if member in params:
            return [params[member]]
        raise PartitionError(
            f"{type(model).__name__}.layer_groups() names parameter {member!r}, which the "
            f"model does not have; parameters: {abbreviate(list(params))}"
        )
    return []


def _resolve(model: nn.Module, raw: list[RawGroup], what: str) -> list[GroupSpec]:
    named = dict(model.named_parameters())
    name_of = {id(p): n for n, p in named.items()}
    order = {n: i for i, n in enumerate(named)}
    taken: set[int] = set()
    specs: list[GroupSpec] = []
    for gname, members, tower in raw:
        ids: list[int] = []
        for member in members:
            for p in _member_params(model, member, named):
                if id(p) not in name_of:
                    raise PartitionError(
                        f"{what} puts a tensor that is not a parameter of the model in "
                        f"group {gname!r} (shape {tuple(p.shape)})"
                    )
                if id(p) not in taken:
                    taken.add(id(p))
                    ids.append(id(p))
        if ids:
            params = sorted((name_of[i] for i in ids), key=order.__getitem__)
            specs.append(GroupSpec(gname, tuple(params), tower))
    missing = [n for n, p in named.items() if id(p) not in taken]
    if missing:
        raise PartitionError(
            f"{what} puts no group on {len(missing)} parameter(s): {abbreviate(missing)}; "
            "every parameter must be in exactly one group (or choose another adapter, "
            "e.g. layer_groups(model, adapter='generic'))"
        )
    return specs


ADAPTER = OwnAdapter
