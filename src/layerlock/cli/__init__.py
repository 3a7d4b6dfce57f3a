"""The ``layerlock`` command line: ``groups``, ``plan``, ``finetune``, ``compare``, ``bench``.

Each subcommand lives in its own module here and exports ``add_parser(subparsers)`` and
``run(args) -> int``. Results go to stdout, logs and hints to stderr. Exit codes: 0 ok,
1 a :class:`~layerlock.errors.LayerlockError` (one line; ``LAYERLOCK_DEBUG=1`` shows the
traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence

from ..errors import LayerlockError

__all__ = ["add_model_arguments", "examples", "main"]

SUBCOMMANDS = ("groups", "plan", "finetune", "compare", "wise", "bench")


def _modules() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            found.append((name, importlib.import_module(f"{__name__}.{name}")))
    return found


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per available subcommand."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="layerlock",
        description="Fine-tune pretrained models by layer groups: inspect, lock, unlock progressively.",
        epilog="Run 'layerlock COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"layerlock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _, module in _modules():
        module.add_parser(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``layerlock`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LayerlockError as exc:
        if os.environ.get("LAYERLOCK_DEBUG"):
            raise
        print(f"layerlock {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"layerlock {args.command}: interrupted", file=sys.stderr)
        return 130


def examples(*lines: str) -> str:
    """Format an ``--help`` epilog of examples."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


#: ``MODEL`` of the commands that build a model from a spec (``layerlock.models.build_model``).
MODEL_HELP = "timm:NAME | open_clip:NAME | hf:NAME | torchvision:NAME | module:PATH:FACTORY"


def add_model_arguments(p: argparse.ArgumentParser, *, pretrained_help: str) -> None:
    """The positional ``MODEL`` and the ``--coarse`` / ``--pretrained`` flags that build it."""
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "--coarse", action="store_true", help="the family's coarse grouping (timm: stages)"
    )
    p.add_argument(
        "--pretrained", nargs="?", const=True, default=False, metavar="TAG", help=pretrained_help
    )
