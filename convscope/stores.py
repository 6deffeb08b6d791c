"""Store folders on disk: the one protocol of the atlas and the index.

A store is a folder whose database (``atlas.sqlite``, ``index.sqlite``) is its commit point::

    <db_name>        the committed store: it appears (or is replaced) by one atomic rename
    .partial/        a build in progress: its checkpoint, its database until the commit
    .lock            while a build writes: who it is (:func:`writer_lock`)
    ...              the store's other files, written and fsynced before the commit

A build writes into ``.partial/`` (and into new files of the folder that the committed database
does not name yet), fsyncs every file it wrote (:func:`fsync_tree`, :func:`fsync_file`), then
renames its finished database over ``<db_name>`` (:func:`commit`: one rename, then an fsync of the
folder). A reader therefore sees the old store or the new one, never a mix; a build stopped at
any point leaves a folder that :func:`state` calls ``PARTIAL`` (or ``UPDATING``) and that the
build resumes. :func:`state` is the one place that reads a folder's state from what it holds.
One build writes a folder at a time: :func:`writer_lock`, which both builds hold from their first
look at the folder to their commit, refuses a second writer with one line naming the first.

>>> state("photos.index", "index.sqlite")
<State.COMPLETE: 'complete'>
"""
from __future__ import annotations

import contextlib
import datetime
import enum
import errno
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from .errors import ConvscopeError, FolderInUseError

#: The folder a build in progress lives in, inside the store's folder.
PARTIAL = ".partial"
#: The writer lock's file, inside the store's folder, while a build holds it.
LOCK = ".lock"
#: The folders whose writer lock this process holds, and the thread holding each: that thread may
#: take it again (a watch holds its index's lock between the updates it runs), no other may.
_HELD: dict[str, int] = {}


class State(enum.Enum):
    """What a store folder holds, by names alone (the database's own format and ``complete``
    flag are checked by the store's ``open``)."""

    ABSENT = "absent"  #: no folder, or an empty one: a build may start there
    PARTIAL = "partial"  #: a build stopped before its commit, nothing committed: resume it
    COMPLETE = "complete"  #: a committed store (maybe with a finished build's leftovers)
    UPDATING = "updating"  #: a committed store, and a build over it that stopped before its commit
    FOREIGN = "foreign"  #: a file, or a folder holding something else

    @property
    def committed(self) -> bool:
        """Whether a committed store is there to read."""
        return self in (State.COMPLETE, State.UPDATING)

    @property
    def unfinished(self) -> bool:
        """Whether a build stopped there before its commit (it may be resumed)."""
        return self in (State.PARTIAL, State.UPDATING)


def state(root: str | os.PathLike, db_name: str) -> State:
    """The state of the store folder ``root`` whose committed database is ``db_name``.

    A ``.partial/`` folder counts as a build in progress unless a committed database is there
    and ``.partial/`` holds no database of its own (then it is what a finished build left before
    cleaning up). Never raises for a folder that cannot be looked at: that one is FOREIGN.

    >>> state("new-folder", "atlas.sqlite")
    <State.ABSENT: 'absent'>
    """
    root = Path(root)
    try:
        if not root.exists():
            return State.ABSENT
        if not root.is_dir():
            return State.FOREIGN
        committed = (root / db_name).is_file()
        partial = (root / PARTIAL).is_dir()
        if committed:
            return State.UPDATING if partial and (root / PARTIAL / db_name).exists() else State.COMPLETE
        if partial:
            return State.PARTIAL
        return State.FOREIGN if any(p.name != LOCK for p in root.iterdir()) else State.ABSENT
    except OSError:
        return State.FOREIGN


def check_folder(root: str | os.PathLike, db_name: str, *, kind: str, resume: bool, reuse: bool = False,
                 reuse_hint: str, resume_hint: str) -> State:
    """The state of ``root`` (see :func:`state`) when a build of a ``kind`` may go there, else
    :class:`~convscope.errors.FolderInUseError` naming the parameter ``out``: a file; an unfinished
    build not told to ``resume`` (``resume_hint`` says how); a committed store neither resumed nor
    ``reuse``d (an update; ``reuse_hint`` says how); a folder holding something else. The atlas's
    and the index's builds, and the CLI before it loads a model, ask here.

    >>> check_folder("atlas/", "atlas.sqlite", kind="atlas", resume=False, reuse_hint="...", resume_hint="...")
    <State.ABSENT: 'absent'>
    """
    root = Path(root)
    writer = lock_holder(root)
    if writer is not None:
        raise FolderInUseError(f"{root} is being written by another {kind} build ({writer}); wait for it to end, "
                               "or give another `out`", param="out")
    held = state(root, db_name)
    if root.exists() and not root.is_dir():
        raise FolderInUseError(f"`out` {root} is a file; give a folder for the {kind}", param="out")
    if held.unfinished and not resume:
        what = "update" if held is State.UPDATING else "build"
        raise FolderInUseError(f"{root} holds an unfinished {kind} {what}; {resume_hint}", param="out")
    if held.committed and not (reuse or resume):
        raise FolderInUseError(f"{root} already holds an {kind}; {reuse_hint}, or another `out`", param="out")
    if held is State.FOREIGN:
        raise FolderInUseError(f"{root} is not empty and holds no {kind}; give a new or empty folder as `out`",
                               param="out")
    return held


def open_committed(root: str | os.PathLike, db_name: str, *, kind: str, format: str, build_hint: str,
                   rebuild_hint: str, resume_hint: str, incomplete: type[ConvscopeError]) -> sqlite3.Connection:
    """The committed database of the store folder ``root``, opened read-only (rows as
    :class:`sqlite3.Row`, shareable between threads), once :func:`state` and its ``format`` and
    ``complete`` meta entries say it is a finished ``kind`` (``"atlas"``, ``"index"``). Anything
    else raises one line: ``incomplete`` (a build that stopped: ``resume_hint``), or
    :class:`~convscope.errors.ConvscopeError` (nothing there: ``build_hint``; another file:
    ``rebuild_hint``).

    >>> conn = open_committed("atlas/", "atlas.sqlite", kind="atlas", format="convscope-atlas", ...)
    """
    root = Path(root)
    db = root / db_name
    held = state(root, db_name)
    if held is State.PARTIAL:
        raise incomplete(f"the {kind} in {root} is incomplete (its build stopped before the end); {resume_hint}")
    if not held.committed:
        if not root.is_dir():
            raise ConvscopeError(f"no {kind} folder {root}; {build_hint}")
        raise ConvscopeError(f"{root} holds no {kind} ({db_name} is missing); {build_hint}")
    try:
        conn = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'complete')")}
    except (sqlite3.DatabaseError, ValueError) as exc:
        raise ConvscopeError(f"{db} is not a readable {kind} database ({exc}); {rebuild_hint}") from None
    if meta.get("format") != format:
        conn.close()
        raise ConvscopeError(f"{db} is not a convscope {kind}; {rebuild_hint}")
    if meta.get("complete") is not True:
        conn.close()
        raise incomplete(f"the {kind} in {root} is incomplete (its build stopped before the end); {resume_hint}")
    return conn


def lock_holder(root: str | os.PathLike) -> str | None:
    """Who holds the writer lock of the store folder ``root`` (``"pid 123, since 2026-12-05
    13:20:01 UTC"``), if another process does; None when nobody does (a lock file left by a
    process that died holds nothing: the system released its lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, no lock
        return None
    try:
        fd = os.open(Path(root) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            return _describe_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe_holder(fd: int) -> str | None:
    """The holder's words from the lock file: None when it is this process."""
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        who = {}
    pid = who.get("pid") if isinstance(who, dict) else None
    if pid == os.getpid():
        return None
    if not isinstance(pid, int):
        return "a process that is starting"
    return f"pid {pid}, since {who.get('since', 'an unknown time')}"


@contextlib.contextmanager
def writer_lock(root: str | os.PathLike, *, kind: str) -> Iterator[None]:
    """Hold the writer lock of the store folder ``root`` (made if missing) for the block: a
    second build of the folder, in another process, gets :class:`~convscope.errors.FolderInUseError`
    naming the first (its pid and since when), from here and from :func:`check_folder`. The lock
    is an ``flock`` on ``root/.lock``: the system releases it when its process dies, so the lock
    of a killed build is taken over by the next one. Both builds hold it from their first look at
    the folder to their commit and cleanup. The thread that holds it may take it again (a watch
    holds it for its life, its updates within); another thread of the process may not.

    >>> with writer_lock("photos.index", kind="index"):
    ...     build_there()
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one writer at a time is the user's to keep
        yield
        return
    root = Path(root)
    key = os.path.realpath(root)
    holder = _HELD.get(key)
    if holder == threading.get_ident():
        yield
        return
    if holder is not None:
        raise FolderInUseError(f"{root} is being written by another {kind} build of this process; wait for it to "
                               "end, or give another `out`", param="out")
    if root.exists() and not root.is_dir():
        raise FolderInUseError(f"`out` {root} is a file; give a folder for the {kind}", param="out")
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _describe_holder(fd) if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) else None
            os.close(fd)
            if holder is None:
                raise
            raise FolderInUseError(f"{root} is being written by another {kind} build ({holder}); wait for it to "
                                   "end, or give another `out`", param="out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file we locked as it left: lock the new one
    try:
        since = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since}).encode(), 0)
        _HELD[key] = threading.get_ident()
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the unlock: a waiting opener of the old file sees it is gone
        os.close(fd)


def partial_dir(root: str | os.PathLike) -> Path:
    """The ``.partial/`` folder of the store folder ``root``."""
    return Path(root) / PARTIAL


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (before the commit names it)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (new names, renames) to disk, where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder cannot be opened for fsync on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot fsync folders (EINVAL): the names stand anyway
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder`` and the folders themselves (a store's arrays, written
    by ``np.save`` and memory maps, before the commit makes them part of the store)."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            fsync_file(Path(root) / name)
        fsync_dir(root)


def sync_written(folder: str | os.PathLike) -> None:
    """Flush everything written under ``folder`` before a commit names it: one ``os.sync()``
    where the system has it (an atlas writes tens of thousands of PNGs, at 0.4 ms an fsync
    apiece), else :func:`fsync_tree` (Windows has no ``os.sync``)."""
    if hasattr(os, "sync"):
        os.sync()
    else:
        fsync_tree(folder)


def commit(finished: str | os.PathLike, dest: str | os.PathLike) -> None:
    """The commit point: rename a finished, fsynced database to ``dest`` (one atomic rename),
    then fsync the folder so that the rename itself survives a crash. From here on the store
    reads as complete."""
    dest = Path(dest)
    os.replace(finished, dest)
    fsync_dir(dest.parent)


def remove_partial(root: str | os.PathLike) -> None:
    """Remove ``.partial/`` (after the commit, or to start a build again)."""
    shutil.rmtree(partial_dir(root), ignore_errors=True)


__all__ = ["LOCK", "PARTIAL", "State", "check_folder", "commit", "fsync_dir", "fsync_file", "fsync_tree", "lock_holder",
           "open_committed", "partial_dir", "remove_partial", "state", "sync_written", "writer_lock"]
