"""How config keys are spelled: nested, dotted, a section's shorthand, or the old flat names.

:func:`dotted_keys` turns all of them into dotted keys (``unfreeze.lr``); the flat keys of the
previous release (:data:`LEGACY_KEYS`) come with a deprecation message each.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..errors import shorten, suggest
from .sections import SECTIONS

__all__ = [
    "LEGACY_KEYS",
    "all_keys",
    "dotted_keys",
    "suggest_key",
]

#: The field a section given a scalar sets (``model=timm:x`` is ``model.name``).
_PRIMARY = {
    "model": "name",
    "data": "source",
    "unfreeze": "schedule",
    "cache": "mode",
    "eval": "sets",
    "retain": "set",
}

#: Flat keys of the previous release -> their dotted keys (accepted, with a warning,
#: for one release). ``model``, ``data`` and ``cache`` need no entry: a scalar given to
#: a section sets its primary field.
LEGACY_KEYS: dict[str, str] = {
    "pretrained": "model.pretrained",
    "checkpoint": "model.checkpoint",
    "zero_shot_head": "model.zero_shot_head",
    "prompt": "model.prompt",
    "data_path": "data.path",
    **{
        name: f"data.{name}"
        for name in (
            "train_csv",
            "val_csv",
            "csv_img_key",
            "csv_label_key",
            "csv_separator",
            "hf_image_key",
            "hf_label_key",
            "train_split",
            "val_split",
            "bad_images",
            "shots_per_class",
            "augmentation",
            "deterministic_train_transform",
            "workers",
        )
    },
    **{
        name: f"unfreeze.{name}"
        for name in (
            "schedule",
            "lr",
            "weight_decay",
            "layer_decay",
            "warmup_steps",
            "unlock_warmup_steps",
            "freeze_bn_stats",
        )
    },
    "cache_budget_mb": "cache.budget_mb",
    "cache_views": "cache.views",
    "cache_dtype": "cache.dtype",
    **{
        name: f"run.{name}"
        for name in (
            "epochs",
            "batch_size",
            "grad_clip",
            "label_smoothing",
            "precision",
            "device",
            "seed",
            "out_dir",
            "resume",
            "log_every",
        )
    },
}


def all_keys() -> list[str]:
    return ["task"] + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def dotted_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Normalise nested, dotted, shorthand and old flat keys to dotted keys.

    Dashes in keys become underscores. Nothing is validated but the shape: unknown keys
    pass through (``_build`` reports them).

    Returns:
        ``(values by dotted key, deprecation messages, problems)``.

    Example:
        >>> flat, old, _ = dotted_keys({"model": "timm:x", "run": {"epochs": 2}, "lr": 0.1})
        >>> flat
        {'model.name': 'timm:x', 'run.epochs': 2, 'unfreeze.lr': 0.1}
        >>> old
        ["config key 'lr' is deprecated: use 'unfreeze.lr' (the flat name stops working in the next release)"]
    """
    out: dict[str, Any] = {}
    deprecations: list[str] = []
    problems: list[str] = []
    for raw, value in values.items():
        key = str(raw).strip().replace("-", "_")
        if key in SECTIONS:
            if isinstance(value, SECTIONS[key]):
                value = {f.name: getattr(value, f.name) for f in fields(SECTIONS[key])}
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    sub = str(sub).strip().replace("-", "_")
                    if key == "towers" and isinstance(v, Mapping):  # towers: {text: {lr: x}}
                        for leaf, w in v.items():
                            out[_tower_key(f"towers.{sub}.{leaf}")] = w
                        continue
                    out[f"{key}.{sub}"] = v
            elif key in _PRIMARY:
                out[f"{key}.{_PRIMARY[key]}"] = value
            else:
                problems.append(f"{key}: expected a mapping of {key}.* keys, got {shorten(value)}")
        elif key in LEGACY_KEYS:
            new = LEGACY_KEYS[key]
            out[new] = value
            deprecations.append(
                f"config key {key!r} is deprecated: use {new!r} "
                "(the flat name stops working in the next release)"
            )
        else:
            out[_tower_key(key)] = value
    return out, deprecations, problems


def _tower_key(key: str) -> str:
    """``towers.text.lr`` -> ``towers.text_lr``; ``towers.text.schedule`` -> ``towers.text``."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "towers":
        return key
    _, tower, leaf = parts
    leaf = leaf.strip().replace("-", "_")
    return f"towers.{tower}" if leaf == "schedule" else f"towers.{tower}_{leaf}"


def suggest_key(key: str, known: list[str]) -> str:
    """``"; did you mean 'run.epochs'?"`` for a misspelt dotted, flat or bare field name."""
    section, dot, leaf = key.partition(".")
    if dot and section in SECTIONS:
        leaves = [f.name for f in fields(SECTIONS[section])]
        close = difflib.get_close_matches(leaf, leaves, n=3, cutoff=0.6)
        return suggest(key, [f"{section}.{m}" for m in close], n=len(close) or 1)
    if dot:
        return suggest(key, known)
    by_leaf: dict[str, list[str]] = {}
    for full in known:
        by_leaf.setdefault(full.rpartition(".")[2], []).append(full)
    for old, new in LEGACY_KEYS.items():
        by_leaf.setdefault(old, []).append(new)
    matches: list[str] = []
    for leaf in difflib.get_close_matches(key, list(by_leaf), n=3, cutoff=0.6):
        matches.extend(m for m in by_leaf[leaf] if m not in matches)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches[:3]) + "?"
