"""The errors layerlock raises.

Every error derives from :class:`LayerlockError`; subclasses also inherit the built-in
type they refine, so ``except KeyError`` keeps working for lookups.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "ConfigError",
    "LayerlockError",
    "MissingDependencyError",
    "OutputError",
    "PartitionError",
    "ScheduleError",
    "UnknownGroupError",
    "UnknownModelError",
    "suggest",
]


class LayerlockError(Exception):
    """Base class of every error layerlock raises on purpose."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class UnknownGroupError(LayerlockError, KeyError):
    """A group name, index or pattern that matches nothing."""


class PartitionError(LayerlockError, RuntimeError):
    """An adapter produced groups that are not a complete, disjoint partition."""


class ScheduleError(LayerlockError, ValueError):
    """A schedule that is malformed or does not fit the model."""


class ConfigError(LayerlockError, ValueError):
    """A configuration or command-line value that is not valid."""


class UnknownModelError(LayerlockError, ValueError):
    """A model name that the family's registry does not know."""


class MissingDependencyError(LayerlockError, ImportError):
    """An optional dependency that a feature needs is not installed."""


class OutputError(LayerlockError, OSError):
    """A run directory or output file that cannot be written (read-only, full, too long)."""


@contextlib.contextmanager
def output_errors(folder: object) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing into ``folder`` into one :class:`OutputError` line.

    Example:
        >>> with output_errors("/proc/x"):
        ...     open("/proc/x/y", "w")
        Traceback (most recent call last):
        ...
        layerlock.errors.OutputError: cannot write in /proc/x: No such file or directory (ENOENT)
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        why = (exc.strerror or str(exc) or type(exc).__name__) + (f" ({code})" if code else "")
        raise OutputError(f"cannot write in {folder}: {why}") from exc


def suggest(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'x'?"`` for close matches of ``value``, or ``""``.

    Example:
        >>> suggest("block.3", ["blocks.3", "head"])
        "; did you mean 'blocks.3'?"
    """
    matches = difflib.get_close_matches(value, list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"


def abbreviate(names: Sequence[str], keep: int = 3) -> str:
    """Render a long list of names as ``"a, b, c ... y, z"``.

    Example:
        >>> abbreviate([f"blocks.{i}" for i in range(12)])
        'blocks.0, blocks.1, blocks.2 ... blocks.10, blocks.11'
    """
    names = list(names)
    if len(names) <= 2 * keep + 1:
        return ", ".join(names)
    return ", ".join(names[:keep]) + " ... " + ", ".join(names[-2:])


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length noted.

    Messages quote user values with it, so that a megabyte-long value gives a short line.

    Example:
        >>> shorten("x" * 1000, limit=20)
        "'xxxxxxxxxxxxx... (1,002 characters)"
        >>> shorten(3)
        '3'
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 6, 8)]}... ({len(text):,} characters)"


def require(module: str, extra: str, what: str) -> None:
    """Raise :class:`MissingDependencyError` when ``module`` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{what} need {module}: pip install 'layerlock[{extra}]'")
