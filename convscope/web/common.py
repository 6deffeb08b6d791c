"""What every page group of the gallery shares: its errors (each with its HTTP status), the
status and one-line reason of any exception, the error answer (JSON on ``/api/...``, a page
elsewhere), and the confined serving of image files.

>>> raise NotFound("there is no unit 99")              # 404, said in one line
>>> error_status(ImageTooLarge("upload", "too large (...)"))
(413, 'not a usable image: too large (...)')
>>> path, media_type = confined_image(atlas.root, "layers/conv1/unit_0000/top_00_patch.png", "atlas image")
>>> parse_number("9223372036854775808", "file", stop=2**63)   # NotFound: 404, said in one line
"""
from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path
from typing import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..data import ImageTooLarge
from ..errors import ConvscopeError, ImageError
from ..evolve import RunUnreadable

TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed", 408: "Too slow",
          413: "Too large", 421: "Wrong host", 503: "Unavailable"}


class NotFound(ConvscopeError, LookupError):
    """A layer, unit, example, entry or file the server does not have; the message says which."""

    status = 404


class Unavailable(ConvscopeError, LookupError):
    """A page the server has no data for (an atlas page on a server started with an index
    only, say); the message says why."""

    status = 404


class ModelUnavailable(ConvscopeError):
    """The model a page needs cannot be loaded; 503 with the reason."""

    status = 503


class BadNumber(ConvscopeError, ValueError):
    """A number in a URL that is not a whole number; 400."""

    status = 400


#: Ids in URLs (units, ranks, entry rows, file ids) are SQLite's and numpy's 64-bit integers.
MAX_ID = 2**63 - 1


def parse_number(text: str | int, what: str = "unit", *, stop: int | None = None) -> int:
    """A unit, rank, entry row or file id named in a URL, range-checked before anything uses it:
    :class:`BadNumber` (400) for what is not a whole number; :class:`NotFound` (404, one line)
    for a negative one, or one of ``stop`` or more (default: past a 64-bit integer). A number
    of more than 20 digits is never converted: it is out of range.

    >>> parse_number("7", "entry", stop=10)
    7
    """
    text, many = str(text), (what[:-1] + "ies" if what.endswith("y") else what + "s")
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise BadNumber(f"{what} must be a whole number, got {text[:40]!r}")
    shown = text if len(text) <= 40 else f"{text[:20]}... ({len(digits)} digits)"
    if text.startswith("-"):
        raise NotFound(f"there is no {what} {shown}; {many} start at 0")
    value = int(digits) if len(digits) <= 20 else MAX_ID + 1
    if stop is not None and value >= stop:
        there = f"{many} run from 0 to {stop - 1}" if stop > 0 else f"there are no {many}"
        raise NotFound(f"there is no {what} {shown}; {there}")
    if value > MAX_ID:
        raise NotFound(f"there is no {what} {shown}; no {what} is that large")
    return value


#: The status of the library's own errors that are not a bad request (400).
LIBRARY_STATUS = ((ImageTooLarge, 413), (RunUnreadable, 404))


def error_status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and one-line reason for an exception raised while serving a request: a
    web error's ``status``, a library error's by its type (:data:`LIBRARY_STATUS`, else 400)."""
    if isinstance(exc, HTTPException):
        reasons = {404: "no such page; start from / or see /api", 405: "this URL does not accept that method"}
        generic = not exc.detail or exc.detail in ("Not Found", "Method Not Allowed")
        return exc.status_code, reasons.get(exc.status_code, str(exc.detail)) if generic else exc.detail
    status = getattr(exc, "status", None) or next((s for kind, s in LIBRARY_STATUS if isinstance(exc, kind)), None)
    if isinstance(exc, ImageError):
        advice = "; send a smaller image or a JPEG" if isinstance(exc, ImageTooLarge) else ""
        return (status or 400), f"not a usable image: {exc.reason}{advice}"
    if isinstance(exc, ConvscopeError):
        return (status or 400), str(exc)
    if isinstance(exc, ValueError):
        return 400, str(exc).splitlines()[0] if str(exc) else "bad request"
    return 500, "internal error; the server log has the details"


def error_response(page: Callable[..., Response], request: Request, status: int, reason: str,
                   headers: dict | None = None) -> Response:
    """The answer to a failed request: ``{"error", "status"}`` under ``/api``, else the error
    page rendered by ``page`` (:attr:`convscope.web.site.Site.page`); with the error's own
    ``headers`` (a full queue's ``Retry-After``, see :func:`error_headers`)."""
    if request.url.path.startswith("/api/") or request.url.path == "/api":
        response = JSONResponse({"error": reason, "status": status}, status_code=status)
    else:
        response = page("error.html", status=status, code=status, title=TITLES.get(status, "Error"), reason=reason)
    if status == 408:  # the rest of a late body is not waited for
        response.headers["Connection"] = "close"
    response.headers.update(headers or {})
    return response


def error_headers(exc: Exception) -> dict:
    """The headers an error's answer carries: its ``headers`` (``Retry-After`` of a full
    queue, :class:`convscope.web.workers.Busy`; an ``HTTPException``'s own), else none."""
    return dict(getattr(exc, "headers", None) or {})


class Memo:
    """Values computed once per key and kept, shared by request threads: ``memo(key, fn)`` is
    the value kept for ``key``, else ``fn()`` kept. ``fn`` runs outside the lock (two threads
    asking at once may both compute it; the first value kept is the one every caller gets)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict = {}

    def __call__(self, key, fn):
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = fn()
        with self._lock:
            return self._values.setdefault(key, value)

    def get(self, key, default=None):
        with self._lock:
            return self._values.get(key, default)

    def put(self, key, value) -> None:
        with self._lock:
            self._values[key] = value

    def forget(self, *keys) -> None:
        with self._lock:
            for key in keys:
                self._values.pop(key, None)


def jpeg(image, quality: int = 88) -> bytes:
    """A PIL image as JPEG bytes."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


#: The image files the server hands out: by suffix, each checked to begin as its suffix says
#: (so a file named .png is served only if it is a PNG).
IMAGE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".webp": (b"RIFF",),
}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}


def _no_follow(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def confined_image(root, relative: str, what: str, suffixes=None) -> tuple[Path, str]:
    """The path and media type of the image ``relative`` inside folder ``root``, to serve: a
    regular file reached through no symbolic link, with one of ``suffixes`` (default: those of
    :data:`IMAGE_MAGIC`), whose first bytes are those of its suffix's format; :class:`NotFound`
    (naming ``what``, e.g. "atlas image") otherwise."""
    missing = what.rsplit(" ", 1)[0] + " file"  # "atlas image" -> "no such atlas file"
    suffix = Path(relative).suffix.lower()
    if suffix not in (suffixes or IMAGE_MAGIC):
        raise NotFound(f"no such {what} {relative!r}")
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise NotFound(f"no such {what} {relative!r}")
    path, mode = Path(root).resolve(), None
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise NotFound(f"no such {missing} {relative!r}") from None
        if stat.S_ISLNK(mode):
            raise NotFound(f"no such {what} {relative!r} (links are not served)")
    if not stat.S_ISREG(mode):
        raise NotFound(f"no such {missing} {relative!r}")
    try:
        with open(path, "rb", opener=_no_follow) as f:
            head = f.read(12)
    except OSError:
        raise NotFound(f"no such {missing} {relative!r}") from None
    if not head.startswith(IMAGE_MAGIC[suffix]) or (suffix == ".webp" and head[8:12] != b"WEBP"):
        raise NotFound(f"no such {what} {relative!r} (the file is not a {suffix[1:].upper()} image)")
    return path, MEDIA_TYPES[suffix]
