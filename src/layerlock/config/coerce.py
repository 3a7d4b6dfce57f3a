"""Config values: text and YAML values coerced to the annotated types, ``key=value``
overrides parsed, and the problems found rendered as one message.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..errors import ConfigError, shorten
from ..yaml_io import load_yaml

__all__ = [
    "coerce",
    "format_problems",
    "is_none",
    "parse_overrides",
    "plain_value",
    "type_hints",
]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


#: A problem line longer than this is cut in the middle (values are shortened where
#: they are quoted; this bounds what a message quotes from anywhere else).
_MAX_PROBLEM_CHARS = 400


def _cut(line: str) -> str:
    if len(line) <= _MAX_PROBLEM_CHARS:
        return line
    return f"{line[:300]} ... {line[-80:]}"


def format_problems(problems: list[str]) -> str:
    problems = [_cut(p) for p in problems]
    if len(problems) == 1:
        return f"bad configuration: {problems[0]}"
    return f"{len(problems)} problems in the configuration:\n" + "\n".join(
        f"  {p}" for p in problems
    )


def plain_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Path, Schedule: their text form
    return str(value)


def is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


_SIMPLE = (bool, int, float, str)


def coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the annotated type."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        # only the types a config file can spell (a Schedule is given as its text)
        options = [
            a
            for a in args
            if a in _SIMPLE or typing.get_origin(a) in (dict, tuple, Literal) or a is dict
        ]
        if type(None) in args and is_none(value):
            return None
        # bool | str (pretrained): a boolean word is a bool, anything else the string
        if bool in options and str in options:
            if isinstance(value, bool):
                return value
            text = str(value).strip()
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            return text
        errors = []
        for option in options:
            try:
                return coerce(value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if value is None:
        raise ValueError("must not be empty")
    if origin is Literal:
        text = str(value).strip()
        if text in args:
            return text
        raise ValueError(f"expected {' or '.join(repr(a) for a in args)}, got {shorten(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {shorten(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {shorten(value)}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {shorten(value)}") from None
        if not number.is_integer():
            raise ValueError(f"expected an integer, got {shorten(value)}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {shorten(value)}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {shorten(value)}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {shorten(value)}")
        return str(value)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = load_yaml(text, "value")
                except ConfigError:
                    raise ValueError(
                        f"expected a list such as [pos_embed], got {shorten(value)}"
                    ) from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list such as [pos_embed], got {shorten(value)}")
        return tuple(str(v) for v in value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = load_yaml(value, "value")
            except ConfigError as exc:
                raise ValueError(f"expected a mapping, got {shorten(value)} ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping such as {{hflip: 0.0}}, got {shorten(value)}")
        return dict(value)
    raise ValueError(f"unsupported type {tp}")  # pragma: no cover - all fields handled above


def parse_overrides(
    overrides: Sequence[str] | Mapping[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Turn ``["unfreeze.lr=1e-3", "data.path=x"]`` or a dict into a dict plus problems.

    ``key=value`` strings keep the value as text (types are applied by
    :class:`FinetuneConfig`); dashes in keys become underscores.

    Example:
        >>> parse_overrides(["unfreeze.lr=1e-3", "bad"])
        ({'unfreeze.lr': '1e-3'}, ["override 'bad' is not key=value"])
    """
    if isinstance(overrides, Mapping):
        return {str(k).replace("-", "_"): v for k, v in overrides.items()}, []
    out: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            problems.append(f"override {shorten(item)} is not key=value")
            continue
        out[key] = value
    return out, problems
