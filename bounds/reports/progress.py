"""Progress bars for long work; silent when `quiet`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Steps:
    """Advance a progress bar (or nothing) by a number of units."""

    def __init__(self, progress: Progress | None = None, task=None) -> None:
        self._progress, self._task = progress, task

    def advance(self, units: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, units)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, quiet: bool) -> Iterator[Steps]:
    """A transient rich progress bar on standard error, or a no-op when `quiet` or when
    standard error is not a terminal (redirected to a file or a pipe, a bar is only noise)."""
    from rich.console import Console

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield Steps()
        return

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield Steps(progress, progress.add_task(description, total=total))
