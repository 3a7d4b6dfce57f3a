"""Controls of a running job: a progress bar with ETA, and Ctrl-C as a stop request.

Example:
    >>> bar = Progress(enabled=False, total=10, done=0)
    >>> bar.update("epoch 1/1"); bar.close()
"""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["Progress", "StopFlag"]


class Progress:
    """A rich progress bar with ETA on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("training", total=total, completed=done)

    def update(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description)

    def describe(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class StopFlag:
    """SIGINT sets a flag (checked between steps) instead of raising mid-step."""

    def __init__(self) -> None:
        self.raised = False
        self._old: Any = None

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
