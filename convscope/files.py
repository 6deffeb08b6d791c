"""Files on disk: the cache folder, atomic writes, a full disk, and file names shown to people.

Every file convscope writes that a reader (or a resumed run) may open is written through
:func:`atomic_write`: to a temporary file beside the target, flushed and fsynced, then renamed over
it, so a reader sees the old file or the new one and never half of one, also after a crash or a
full disk (the temporary file is removed and the previous file is left as it was; a full disk
raises :class:`DiskFullError`, one line). A process killed mid-write cannot remove its temporary
file: :func:`remove_stale_temps` clears those of dead processes from a folder a resumed run owns.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import sqlite3
from pathlib import Path
from typing import IO, Iterator

from .errors import ConvscopeError

#: errno values that mean "no room left": the disk, or the user's quota on it.
_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
_TEMP_NAME = re.compile(r"^\.(.+)\.([0-9]+)\.tmp$")  # temp_path's pattern: .<name>.<pid>.tmp


class DiskFullError(ConvscopeError, OSError):
    """The disk (or the quota) filled up while writing ``path``; ``strerror`` is the system's
    words and ``hint`` the next step. An :class:`OSError` with ``errno.ENOSPC`` too.

    >>> str(DiskFullError("atlas/scan_state.pt"))
    'disk full while writing atlas/scan_state.pt (No space left on device); free some space and try again'
    """

    def __init__(self, path: str | os.PathLike, strerror: str = "No space left on device",
                 hint: str = "free some space and try again"):
        OSError.__init__(self, errno.ENOSPC, strerror, os.fspath(path))
        self.path = os.fspath(path)
        self.hint = hint

    def __str__(self) -> str:
        return f"disk full while writing {printable_path(self.path)} ({self.strerror}); {self.hint}"

    def __reduce__(self):
        return type(self), (self.path, self.strerror, self.hint)

    def with_hint(self, hint: str) -> "DiskFullError":
        """The same error with another next step (a resumable run says how to resume)."""
        return type(self)(self.path, self.strerror, hint)


def disk_full_cause(exc: BaseException) -> Exception | None:
    """The ``ENOSPC``/``EDQUOT`` :class:`OSError` behind ``exc`` (itself, or one it was raised
    from or while handling: ``torch.save`` turns its file's OSError into a RuntimeError), or
    SQLite's ``SQLITE_FULL`` ("database or disk is full"), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        if isinstance(exc, sqlite3.OperationalError) and (
                getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "database or disk is full" in str(exc)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


_SQLITE_FULL = getattr(sqlite3, "SQLITE_FULL", 13)


def as_disk_full(exc: BaseException, path: str | os.PathLike) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` for writing ``path`` if a full disk caused it, else None."""
    if isinstance(exc, DiskFullError):
        return exc
    cause = disk_full_cause(exc)
    if cause is None:
        return None
    if not isinstance(cause, OSError):  # SQLite's: its own words
        return DiskFullError(path, str(cause).splitlines()[0] if str(cause) else "database or disk is full")
    return DiskFullError(path, cause.strerror or os.strerror(cause.errno))


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike, hint: str = "free some space and try again") -> Iterator[None]:
    """Inside the block, any error a full disk caused (an ``ENOSPC`` OSError, SQLite's, or one
    wrapped by ``torch.save``) leaves as one :class:`DiskFullError` with ``hint`` as its next
    step, naming the file that was written (or ``path``: SQLite's errors name none). Other
    errors pass unchanged.

    >>> with disk_full_as_error(out, "free some space and run again with resume=True"):
    ...     build_everything(out)
    """
    try:
        yield
    except Exception as exc:
        cause = disk_full_cause(exc)
        full = as_disk_full(exc, getattr(cause, "filename", None) or path)
        if full is None:
            raise
        raise full.with_hint(hint) from None


def printable_path(text: str | bytes | os.PathLike) -> str:
    r"""A file name as one line for people: control characters and other invisible ones are
    escaped (``\n``, ``\r``, ``\t``, ``\xNN``, ``\uNNNN``: C0, DEL, C1, line and paragraph
    separators, bidirectional overrides), undecodable bytes (``surrogateescape``) show as
    ``\xNN``; letters of any script, spaces and backslashes are kept as they are. For reading,
    not for parsing back (JSON output carries the exact name).

    >>> printable_path("photos/cat\nerror: forged.jpg")
    'photos/cat\\nerror: forged.jpg'
    >>> printable_path("Zürich/été.jpg")
    'Zürich/été.jpg'
    """
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    text = os.fspath(text) if not isinstance(text, str) else text
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
            continue
        code = ord(ch)
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def cache_dir(*parts: str) -> Path:
    """``$CONVSCOPE_CACHE`` (default ``~/.cache/convscope``), joined with ``parts``; not created."""
    root = os.environ.get("CONVSCOPE_CACHE") or (Path.home() / ".cache" / "convscope")
    return Path(root).joinpath(*parts)


def safe_name(name: str) -> str:
    """A layer name (or any user-given name) as one file or folder name: dotted names are kept,
    anything else odd becomes ``_``. The one rule for every folder convscope names after a layer."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".") or "_"


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_write` uses beside ``path`` (hidden, per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit flush, fsync and rename it to ``path``.

    On an error (``ENOSPC`` included) the temporary file is removed and ``path`` is untouched.

    >>> with atomic_write("out/result.json", "w") as f:
    ...     f.write("{}")
    """
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_write opens files for writing only, not mode {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = as_disk_full(exc, path)
        if full is not None and full is not exc:
            raise full from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_stale_temps(folder: str | os.PathLike, *, name: str | None = None, recursive: bool = True) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` (and its subfolders)
    when its process was killed mid-write: ``.<name>.<pid>.tmp`` whose process is gone (or is
    this one: its own writes remove theirs), only those of target ``name`` if given. Temporary
    files of a process still running are kept. Returns what was removed.

    >>> remove_stale_temps("atlas/")          # before resuming a build killed while writing
    [PosixPath('atlas/.scan_state.pt.4121.tmp')]
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for root, dirs, names in os.walk(folder):
        if not recursive:
            dirs.clear()
        for entry in names:
            match = _TEMP_NAME.match(entry)
            if match is None or (name is not None and match.group(1) != name) or _running(int(match.group(2))):
                continue
            p = Path(root) / entry
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return sorted(removed)


def _running(pid: int) -> bool:
    """Whether another process ``pid`` runs now (a temporary file of it may be in use)."""
    if pid == os.getpid() or pid <= 0 or os.name != "posix":  # Windows' os.kill(pid, 0) is not a probe
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def json_number(value) -> float | None:
    """A number as the project's JSON and SQLite records hold it: ``None`` for a missing, NaN or
    infinite value (JSON has no NaN), else a float.

    >>> json_number(float("nan")) is None
    True
    """
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


__all__ = [
    "DiskFullError", "as_disk_full", "atomic_write", "cache_dir", "disk_full_as_error", "disk_full_cause", "printable_path",
    "remove_stale_temps", "safe_name", "temp_path", "write_bytes_atomic", "write_text_atomic",
]
