"""Groups from a timm-style ``group_matcher``: a dict of regexes, in order.

Numbering is timm's own (``timm.models.group_with_matcher``), so layerlock's groups are
exactly those of timm's ``group_parameters`` and ``param_groups_layer_decay``. layerlock
only adds names: the common module path of a group's parameters (``layer1.0``,
``stages.2``), else the matcher key with its captured numbers (``stem``, ``blocks.11``),
and ``head`` for what no regex matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import GroupSpec

__all__ = ["matcher_groups", "name_groups"]

Matcher = dict[str, Any] | Callable[[str], Any]


def matcher_groups(model: nn.Module, matcher: Matcher) -> list[GroupSpec]:
    """Split ``model`` with a timm-style matcher.

    Args:
        model: Any module.
        matcher: ``{"stem": r"^embed", "blocks": [(r"^layers\\.(\\d+)", None), (r"^norm", (99999,))]}``
            as timm's ``group_matcher`` returns, or a callable name -> ordinal.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
        >>> [g.name for g in matcher_groups(m, {"stem": r"^0\\.", "blocks": r"^(\\d+)\\."})]
        ['stem', '1', '2']
    """
    from timm.models._manipulate import group_with_matcher

    _validate(matcher)
    names = [n for n, _ in model.named_parameters()]
    numbered = group_with_matcher(((n, None) for n in names), matcher)
    ordered = [list(numbered[i]) for i in sorted(numbered)]
    # keep model order inside each group (timm sorts group keys, not members)
    position = {n: i for i, n in enumerate(names)}
    ordered = [sorted(g, key=position.__getitem__) for g in ordered]
    return [GroupSpec(n, tuple(p)) for n, p in zip(name_groups(ordered, matcher), ordered)]


def _validate(matcher: Matcher) -> None:
    if callable(matcher):
        return
    if not isinstance(matcher, dict) or not matcher:
        raise ConfigError(
            f"a group matcher must be a non-empty dict of regexes (timm's group_matcher "
            f"format) or a callable, got {matcher!r}"
        )
    for key, spec in matcher.items():
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for entry in entries:
            if spec is None:
                continue
            regex = entry[0] if isinstance(entry, (list, tuple)) else entry
            try:
                re.compile(regex)
            except (re.error, TypeError) as exc:
                raise ConfigError(
                    f"group matcher key {key!r}: bad regex {regex!r} ({exc})"
                ) from exc


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]  # module paths, without the tensor name
    if not parts:
        return ""
    prefix = parts[0]
    for p in parts[1:]:
        k = 0
        while k < min(len(prefix), len(p)) and prefix[k] == p[k]:
            k += 1
        prefix = prefix[:k]
    return ".".join(prefix)


def _label(name: str, matcher: Matcher) -> tuple[str, bool] | None:
    """Label a parameter by the matcher entry it hits: ``(label, primary)``.

    The label is the matched module path (``blocks.11``, ``layer1.0``, ``stages.2``) when
    the regex captured numbers and matched whole path components, else the matcher key
    (``stem``). ``primary`` is False for entries that attach a parameter to another group
    (a suffix such as timm's ``(99999,)``). Unmatched names get ``("head", True)``.
    """
    if callable(matcher):
        return None
    for key, spec in matcher.items():
        if spec is None:
            continue
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for regex, suffix in entries:
            m = re.match(regex, name)
            if not m:
                continue
            text = m.group(0).rstrip(".")
            whole = name == text or name.startswith(text + ".")
            caps = [c for c in m.groups() if c is not None]
            if caps and whole:
                label = text
            elif caps:
                label = ".".join([key, *caps])
            else:
                label = key
            return label, suffix is None
    return "head", True


def name_groups(groups: Sequence[Sequence[str]], matcher: Matcher) -> list[str]:
    """Name numbered groups (see :func:`_label`); names are made unique.

    The unmatched group (the classifier) is named by its common module path (``head``,
    ``fc``, ``classifier``); callable matchers name every group that way.
    """
    result: list[str] = []
    for i, params in enumerate(groups):
        labels = [lab for p in params if (lab := _label(p, matcher))]
        primary = [lab for lab, is_primary in labels if is_primary]
        name = (primary or [lab for lab, _ in labels] or [""])[0]
        if name == "head" or not name:
            name = _common_prefix(params) or name
        result.append(name or f"group.{i}")
    seen: dict[str, int] = {}
    for n in result:
        seen[n] = seen.get(n, 0) + 1
    return [n if seen[n] == 1 else f"{n}#{i}" for i, n in enumerate(result)]
