"""Progress bars for work longer than a second (rich, on stderr)."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    flag = os.environ.get("CONVSCOPE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


class Bar:
    """A manual progress bar: ``with Bar(total, "scanning") as bar: bar.advance(n)``."""

    def __init__(self, total: int | None, description: str, disable: bool | None = None):
        self.disable = (not enabled()) if disable is None else disable
        self.total = total
        self.description = description
        self._progress = None

    def __enter__(self) -> "Bar":
        if not self.disable:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **kwargs)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def track(iterable: Iterable[T], total: int | None = None, description: str = "working", disable: bool | None = None) -> Iterator[T]:
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Bar(total, description, disable) as bar:
        for item in iterable:
            yield item
            bar.advance()
