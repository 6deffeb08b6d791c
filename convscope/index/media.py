"""Photos and videos as the index reads them: which files, video frames, thumbnails.

Photos decode through :func:`convscope.data.load_photo` (one read of the file: pixels at reduced
scale, size, EXIF date and sha256; every bad file is one :class:`~convscope.errors.ImageError`
line). Videos decode with PyAV, each frame checked against :mod:`convscope.data`'s budget;
``video_frames`` samples ``fps`` frames per second of video time.

>>> paths, errors = expand_media(["holiday/", "clip.mp4"])
>>> [t for t, _ in video_frames("clip.mp4", fps=1.0)]  # [0.0, 1.0, 2.0]
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from ..data import IMAGE_EXTENSIONS, MAX_BYTES, MAX_PIXELS, check_pixels, expand_inputs, pixel_bytes
from ..errors import ImageError

VIDEO_EXTENSIONS = frozenset(".mp4 .mov .mkv .avi .webm .m4v".split())
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 80


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a video (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def expand_media(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[ImageError]]:
    """:func:`convscope.data.expand_inputs`, with folders yielding videos as well as photos.

    Files, globs and ``@LIST`` files behave exactly as there; a folder gives its files with image
    or video extensions, recursively, sorted. Duplicates are kept once, first place wins.
    """
    paths: list[Path] = []
    errors: list[ImageError] = []
    for item in inputs:
        p = Path(os.fspath(item))
        if p.is_dir():
            paths.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_EXTENSIONS))
        else:
            found, missing = expand_inputs([item])
            paths.extend(found)
            errors.extend(missing)
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(Path(key))
    return unique, errors


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (a video's, or a touched file's on update:
    photos are hashed by :func:`convscope.data.load_photo` from the bytes they decode)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_SIZE, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG of ``image`` fitted into ``size`` x ``size`` pixels (aspect kept)."""
    w, h = image.size
    scale = min(1.0, size / max(w, h))
    thumb = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- video


@dataclasses.dataclass
class VideoInfo:
    """What a video's header says: ``duration`` in seconds (None if unknown), frame ``size``
    (width, height), ``taken`` (the container's creation time, ISO 8601, or None); ``sha256``
    of the file, where the reader hashed it."""

    duration: float | None
    size: tuple[int, int]
    taken: str | None
    sha256: str | None = None


def _open_container(path: str | os.PathLike):
    import av

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        container = av.open(str(path))
    except ImageError:
        raise
    except (OSError, av.error.FFmpegError) as exc:
        raise ImageError(path, f"not a readable video ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})") from None
    if not container.streams.video:
        container.close()
        raise ImageError(path, "holds no video stream")
    return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's header (fast: no frame is decoded). Raises :class:`ImageError`."""
    with _open_container(path) as container:
        stream = container.streams.video[0]
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        taken = container.metadata.get("creation_time") or stream.metadata.get("creation_time")
        if taken:
            taken = taken.replace("Z", "")[:19] if "T" in taken else None
        return VideoInfo(duration, (stream.codec_context.width, stream.codec_context.height), taken or None)


def video_frames(path: str | os.PathLike, fps: float = 1.0, first: int = 0, stop: int | None = None, *,
                 target_size: int | None = None, max_pixels: int = MAX_PIXELS,
                 max_bytes: int = MAX_BYTES) -> Iterator[tuple[float, Image.Image]]:
    """Sampled frames ``(time in seconds from the start, RGB image)``, for sample times ``k / fps``
    with ``first <= k < stop``: each is the first frame shown at or after its time (a frame
    serves at most one sample). Seeks to the key frame before ``first / fps``, so a long video
    can be read in pieces. ``target_size``: frames larger than twice that (shorter side) are
    scaled down by FFmpeg to a shorter side of ``target_size`` on conversion, cheaper than a
    full-size RGB frame. Raises :class:`ImageError` for a file PyAV cannot decode, and
    :class:`~convscope.data.ImageTooLarge` for frames over ``max_pixels`` or ``max_bytes``
    (:func:`convscope.data.load_image`'s budget).

    >>> [t for t, _ in video_frames("clip.mp4", fps=1.0)]     # a 3 s clip
    [0.0, 1.0, 2.0]
    """
    if not fps > 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    import av

    eps = 1e-3  # frame times are rounded to the container's time base
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        k = first
        if first > 0:
            container.seek(int((start + first / fps) / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None or frame.time is None:
                continue
            t = frame.time - start
            if t + eps < k / fps:
                continue
            if stop is not None and k >= stop:
                break
            yield round(t, 3), _to_image(frame, target_size, path, max_pixels, max_bytes)
            k = max(k + 1, math.floor((t + eps) * fps) + 1)
            if stop is not None and k >= stop:
                break
    except (OSError, av.error.FFmpegError) as exc:
        raise ImageError(path, f"video cannot be decoded ({str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__})") from None
    finally:
        container.close()


def _to_image(frame, target_size: int | None, path, max_pixels: int, max_bytes: int) -> Image.Image:
    w, h = frame.width, frame.height
    short = min(w, h)
    size = (w, h)
    if target_size and short > 2 * target_size:
        scale = target_size / short
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    check_pixels(path, w, h, max_pixels, max_bytes, cost=size[0] * size[1] * pixel_bytes("RGB"))  # (the frame is decoded already)
    return frame.to_image() if size == (w, h) else frame.to_image(width=size[0], height=size[1])


def frame_at(path: str | os.PathLike, time: float) -> Image.Image:
    """The frame shown at ``time`` seconds into a video (the first at or after it, else the last).
    Raises :class:`ImageError`."""
    last = None
    for t, image in video_frames(path, fps=1000.0, first=max(0, int(time * 1000) - 1)):
        last = image
        if t + 1e-3 >= time:
            return image
    if last is None:
        raise ImageError(path, f"no frame at {time} s")
    return last
