"""Files on disk: the cache folder and atomic writes.

Every file convscope writes that a reader (or a resumed run) may open is written through
:func:`atomic_write`: to a temporary file beside the target, flushed and fsynced, then renamed over
it, so a reader sees the old file or the new one and never half of one, also after a crash or a
full disk (the temporary file is removed and the previous file is left as it was).
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import IO, Iterator


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


__all__ = ["atomic_write", "cache_dir", "safe_name", "temp_path", "write_bytes_atomic", "write_text_atomic"]
