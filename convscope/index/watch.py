"""Keep an index up to date: follow its folders, and update it as photos come, change and go.

A watch holds the index's writer lock for its life (a second writer gets one line naming it) and
runs :func:`.build.build` with ``update=True`` once per batch of changes: unchanged files'
rows are copied, new and changed ones computed, gone ones dropped, and the new version appears
by one rename (a kill at any moment leaves the last complete version; the next watch resumes).
``watchdog`` events say only *where* to look: a path they name waits until it has *settled*
(its size and mtime unchanged for ``settle`` seconds, or gone that long), so a photo still being
copied is not read half-written; a file the build finds written within the last ``settle``
seconds (a copy that began after the events were read) is not read either, and waits for the
next round (:func:`.build.build`'s ``settled``).

>>> stop = threading.Event()
>>> watch(load_model(), ["photos/"], "photos.index", on_change=lambda r: print(r.line()), stop=stop)
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ArgumentError
from ..stores import state, writer_lock
from .build import build, check_out
from .media import MEDIA_EXTENSIONS
from .store import DB_NAME, IndexStore, read_path

#: Seconds a path must stay unchanged (size and mtime) before it is read.
SETTLE = 2.0


@dataclasses.dataclass
class Round:
    """What one update of a watch did: the paths ``added``, ``changed`` and ``removed``, the
    files ``skipped`` (path, reason), those ``waiting`` (still being written: the next round
    reads them), and the index after it (``files``, ``entries``, ``seconds`` it took)."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    skipped: list[tuple[str, str]]
    waiting: list[str]
    files: int
    entries: int
    seconds: float

    def line(self) -> str:
        """One line for people: ``index updated: 2 new, 1 changed, 1 gone, 0 skipped (40 files, 1.2 s)``."""
        wait = f", {len(self.waiting)} still being written" if self.waiting else ""
        return (f"index updated: {len(self.added)} new, {len(self.changed)} changed, {len(self.removed)} gone, "
                f"{len(self.skipped)} skipped{wait} ({self.files} files, {self.seconds:.1f} s)")


@dataclasses.dataclass
class _Seen:
    sig: tuple | None  # (size, mtime_ns), ("dir",) or None (gone); () before the first look
    since: float  # when it last changed
    born: float = 0.0  # when an event first named it


class _Pending:
    """The paths events named, each with its last stat and since when it has not changed."""

    def __init__(self, settle: float, clock: Callable[[], float] = time.time):
        self.settle = settle
        # a path still being written holds back the others (one round for a batch of copies)
        # at most this long: then the settled ones are read, and it waits on its own
        self.patience = max(10 * settle, 5.0)
        self.clock = clock
        self.lock = threading.Lock()
        self.paths: dict[str, _Seen] = {}
        self.wake = threading.Event()

    def touch(self, path: str) -> None:
        with self.lock:
            was = self.paths.get(path)
            now = self.clock()
            self.paths[path] = _Seen((), now, was.born if was is not None else now)
        self.wake.set()

    def look(self) -> bool:
        """Stat every pending path; whether to update now: all have settled, or some have and
        one of them has waited :attr:`patience` seconds."""
        now = self.clock()
        with self.lock:
            items = list(self.paths.items())
        every, some, oldest = True, False, now
        for path, seen in items:
            sig = _signature(path)
            with self.lock:
                if self.paths.get(path) is not seen:
                    every = False  # touched meanwhile
                    continue
                if sig != seen.sig:
                    self.paths[path] = seen = _Seen(sig, now if seen.sig != () else seen.since, seen.born)
            ok = now - seen.since >= self.settle
            every, some = every and ok, some or ok
            oldest = min(oldest, seen.born)
        return bool(items) and (every or (some and now - oldest >= self.patience))

    def settled(self, path: str, st: os.stat_result) -> bool:
        """Whether the build may read ``path`` now (its stat ``st``); else it waits (pending)."""
        now, sig = self.clock(), (st.st_size, st.st_mtime_ns)
        with self.lock:
            seen = self.paths.get(path)
            if seen is not None and seen.sig == sig:
                return now - seen.since >= self.settle
            if seen is None and now - st.st_mtime >= self.settle:
                return True
            # written within the last seconds (or since its events were read): the next round reads it
            self.paths[path] = _Seen(sig, min(now, st.st_mtime) if seen is None else now, now)
        self.wake.set()
        return False

    def take(self) -> dict[str, _Seen]:
        with self.lock:
            self.wake.clear()
            return dict(self.paths)

    def done(self, taken: dict[str, _Seen]) -> None:
        """Forget the paths of a finished round that no event touched since."""
        with self.lock:
            for path, seen in taken.items():
                if self.paths.get(path) is seen:
                    del self.paths[path]
            if self.paths:
                self.wake.set()


def _signature(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ("dir",) if os.path.isdir(path) else (st.st_size, st.st_mtime_ns)


def _roots(inputs: Iterable) -> list[tuple[Path, bool]]:
    """The folders to follow: (folder, recursive) for each input folder, a file's own folder,
    a glob's folder up to its first wildcard."""
    out = []
    for item in inputs:
        text = os.fspath(item)
        if text.startswith("@"):
            raise ArgumentError(f"a watch follows folders, files and globs, not @LIST files ({text}); "
                                "give the folders the list's files are in", param="inputs")
        parts = Path(os.path.abspath(text)).parts
        for i, part in enumerate(parts):
            if any(c in part for c in "*?["):
                out.append((Path(*parts[:i]), True))
                break
        else:
            p = Path(*parts)
            out.append((p, True) if p.is_dir() or not p.suffix else (p.parent, False))
    return out


def _snapshot(out: Path) -> dict[str, tuple]:
    """The files of the committed index in ``out``: path -> (size, sha256)."""
    if not state(out, DB_NAME).committed:
        return {}
    with IndexStore.open(out) as idx:
        return {read_path(r[0]): (r[1], r[2]) for r in idx.query("SELECT path, size, sha256 FROM files")}


def watch(model, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, settle: float = SETTLE,
          stop: threading.Event | None = None, on_change: Callable[[Round], None] | None = None,
          on_skip: Callable[[str, str], None] | None = None, on_note: Callable[[str], None] | None = None,
          **options) -> Path:
    """Build or update the index in ``out`` over ``inputs`` (folders, files, globs), then keep
    it up to date until ``stop`` is set (runs in the calling thread; the default never stops):
    a photo added or changed is searchable ``settle`` seconds after it was last written and a
    round of update later, a deleted one disappears. ``on_change(round)`` is called after each
    update (:class:`Round`; the first is the catch-up of what changed while nobody watched),
    ``on_skip(path, reason)`` for each file that cannot be read, ``on_note(line)`` for a folder
    that is gone (the index keeps its files until it is back). ``options``: :func:`.build.build`'s
    (``fps``, ``batch_size``, ``workers``, ``layers``, ``text``, ...). Returns ``out``.

    >>> watch(load_model(), ["photos/"], "photos.index", settle=2.0, stop=stop)
    """
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    if not (isinstance(settle, (int, float)) and settle >= 0):
        raise ValueError(f"settle must be seconds (a number >= 0), got {settle!r}")
    inputs = [os.fspath(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    roots = _roots(inputs)
    out = Path(out)
    check_out(out, update=True, resume=True)
    stop = stop or threading.Event()
    options.setdefault("progress", False)
    pending = _Pending(float(settle))
    skip_out = os.path.realpath(out) + os.sep

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
                return
            for path in (event.src_path, getattr(event, "dest_path", "")):
                path = os.fsdecode(path)
                if not path or os.path.realpath(path).startswith(skip_out):
                    continue
                if event.is_directory or Path(path).suffix.lower() in MEDIA_EXTENSIONS:
                    pending.touch(os.path.normpath(path))

    handler, observer = Handler(), Observer()
    watched: dict[Path, object] = {}
    missing: set[Path] = set()

    def follow() -> bool:
        """(Re)schedule the roots there; whether every root is there (a note for each gone)."""
        for root, recursive in roots:
            there = root.is_dir()
            if there and root not in watched:
                watched[root] = observer.schedule(handler, str(root), recursive=recursive)
                if root in missing:
                    missing.discard(root)
                    pending.touch(str(root))
            elif not there and root not in missing:
                missing.add(root)
                if root in watched:
                    with contextlib.suppress(OSError, KeyError):  # (watchdog, a folder gone)
                        observer.unschedule(watched.pop(root))
                if on_note is not None:
                    on_note(f"{root} is gone (deleted, or its disk unmounted); the index keeps its files until it is back")
        return not missing

    def update() -> None:
        taken, started, before = pending.take(), time.time(), _snapshot(out)
        skipped: list[tuple[str, str]] = []

        def skip(path, reason):
            skipped.append((path, reason))
            if on_skip is not None:
                on_skip(path, reason)

        held = state(out, DB_NAME)
        build(model, inputs, out, update=held.committed, resume=True, on_skip=skip, settled=pending.settled, **options)
        pending.done(taken)
        after = _snapshot(out)
        with pending.lock:
            waiting = sorted(p for p, s in pending.paths.items() if s.sig not in ((), None, ("dir",)))
        report = Round(added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)),
                       changed=sorted(p for p in after if p in before and after[p] != before[p]),
                       skipped=skipped, waiting=waiting, files=len(after), entries=_entries(out),
                       seconds=time.time() - started)
        if on_change is not None:
            on_change(report)

    with writer_lock(out, kind="index"):
        observer.start()
        try:
            if follow():
                update()  # what changed while nobody watched
            tick = max(0.05, min(0.25, settle / 4))
            while not stop.is_set():
                if not pending.wake.is_set() and not pending.paths:
                    pending.wake.wait(tick)  # (an event ends the wait at once, a stop within a tick)
                    follow()
                    continue
                if pending.look() and follow():
                    update()
                else:
                    stop.wait(tick)
                    follow()
        finally:
            observer.stop()
            with contextlib.suppress(OSError, KeyError):  # (watchdog, a folder gone)
                observer.join(timeout=5)
    return out


def _entries(out: Path) -> int:
    with IndexStore.open(out) as idx:
        return idx.entries


__all__ = ["Round", "SETTLE", "watch"]
