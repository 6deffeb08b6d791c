"""Progress bars for work longer than a second, on stderr: one bar per phase.

A :class:`Bar` draws a rich bar (count, elapsed, time left) when stderr is a terminal. When it is
not (a log file, a pipe, CI) and the bar is on anyway (``CONVSCOPE_PROGRESS=1``, or a caller
passed ``disable=False``), it writes a plain line every :data:`LINE_EVERY` seconds and one at the
end, so a long phase in a log is never silent: rich alone would print the bar once, when done.

A bar opened while another is open in the same thread draws nothing and counts into the open
one: a command that runs a library call per layer opens one bar for the whole phase, with the
total of what the library calls will count, and the library's own bars add to it.

>>> with Bar(len(paths), "scanning") as bar:
...     for batch in batches:
...         bar.advance(len(batch))
"""
from __future__ import annotations

import contextvars
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

LINE_EVERY = 10.0  # seconds between plain progress lines off a terminal

_open: contextvars.ContextVar["Bar | None"] = contextvars.ContextVar("convscope_open_bar", default=None)


def enabled() -> bool:
    """Whether bars show by default: ``CONVSCOPE_PROGRESS`` if set (0/no/false: off), otherwise
    when stderr is a terminal."""
    flag = os.environ.get("CONVSCOPE_PROGRESS")
    if flag is not None:
        return flag.strip().lower() not in ("0", "", "false", "no", "off")
    return sys.stderr.isatty()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Bar:
    """A manual progress bar: ``with Bar(total, "scanning") as bar: bar.advance(n)``.

    ``total``: the count at the end (``None``: unknown, no time left shown). ``disable``:
    ``None`` follows :func:`enabled`, ``True`` hides it, ``False`` shows it. Inside another open
    bar it shows nothing and advances that one instead.
    """

    def __init__(self, total: int | None, description: str, disable: bool | None = None):
        self.disable = (not enabled()) if disable is None else disable
        self.total = total
        self.description = description
        self.completed = 0
        self._progress = None
        self._parent: Bar | None = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> "Bar":
        parent = _open.get()
        if parent is not None:
            self._parent = parent
            return self
        _open.set(self)
        self._started = self._last_line = time.monotonic()
        if self.disable:
            return self
        if sys.stderr.isatty():
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
        if self._parent is not None:
            self._parent.advance(n)
            return
        self.completed += n
        if self.disable:
            return
        if self._progress is not None:
            self._progress.advance(self._task, n)
        elif time.monotonic() - self._last_line >= LINE_EVERY:
            self._line()

    def update(self, **kwargs) -> None:
        """Change ``total``, ``description`` or ``completed`` (a nested bar ignores this)."""
        if self._parent is not None:
            return
        for key in ("total", "description", "completed"):
            if key in kwargs:
                setattr(self, key, kwargs[key])
        if self._progress is not None:
            self._progress.update(self._task, **kwargs)

    def _line(self, done: bool = False) -> None:
        now = time.monotonic()
        self._last_line = now
        elapsed = now - self._started
        count = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        if done:
            tail = f"in {_clock(elapsed)}"
        elif self.total and self.completed:
            tail = f"{_clock(elapsed)} elapsed, {_clock(elapsed / self.completed * max(self.total - self.completed, 0))} left"
        else:
            tail = f"{_clock(elapsed)} elapsed"
        sys.stderr.write(f"{self.description} {count} {tail}\n")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self._parent is not None:
            return
        if _open.get() is self:
            _open.set(None)
        if self._progress is not None:
            self._progress.__exit__(*exc)
        elif not self.disable and exc[0] is None:
            self._line(done=True)


def track(iterable: Iterable[T], total: int | None = None, description: str = "working", disable: bool | None = None) -> Iterator[T]:
    """Iterate with a :class:`Bar` that advances by one per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Bar(total, description, disable) as bar:
        for item in iterable:
            yield item
            bar.advance()
