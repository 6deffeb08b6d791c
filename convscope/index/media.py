"""Photos and videos as the index reads them: which files, video frames, thumbnails.

Photos decode through :func:`convscope.data.load_photo` (one read of the file: pixels at reduced
scale, size, EXIF date and sha256; every bad file is one :class:`~convscope.errors.ImageError`
line). Videos decode with PyAV, each frame checked against :mod:`convscope.data`'s budget;
``video_frames`` samples ``fps`` frames per second of video time.

>>> paths, errors = expand_media(["holiday/", "clip.mp4"])
>>> [t for t, _ in video_frames("clip.mp4", fps=1.0)]  # [0.0, 1.0, 2.0]
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from ..data import (DANGLING_LINK, IMAGE_EXTENSIONS, MAX_BYTES, MAX_PIXELS, check_pixels, expand_inputs, open_regular,
                    pixel_bytes)
from ..errors import ImageError
from ..geo import container_position

#: Videos PyAV reads, phones and cameras (3GP of older phones, AVCHD .mts and .m2ts of camcorders) included.
VIDEO_EXTENSIONS = frozenset(".mp4 .mov .mkv .avi .webm .m4v .3gp .3g2 .mts .m2ts .mpg .mpeg".split())
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
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in MEDIA_EXTENSIONS)
            paths.extend(f for f in found if f.is_file())
            errors.extend(ImageError(f, DANGLING_LINK) for f in found
                          if f.is_symlink() and not f.exists())
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
    with open_regular(path) as f:
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
    """What a video holds: ``duration`` in seconds (None if unknown) and ``frames`` (at most
    that many can be decoded), both read from its packets, not from what its header claims;
    frame ``size`` (width, height, as the header says); ``taken`` (the container's creation time,
    ISO 8601, or None); ``sha256`` of the file, where the reader hashed it; ``gps`` (latitude,
    longitude from the container's ISO 6709 location, or None) and ``notes`` (why a location
    there was ignored: :func:`convscope.geo.container_position`)."""

    duration: float | None
    size: tuple[int, int]
    taken: str | None
    sha256: str | None = None
    frames: int = 0
    gps: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()


@contextlib.contextmanager
def _open_container(path: str | os.PathLike):
    """A video's PyAV container, on the file :func:`convscope.data.open_regular` opened (a FIFO
    or a device is refused, never opened)."""
    import av

    path = Path(path)
    with open_regular(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
        try:
            container = av.open(f)
        except (OSError, av.error.FFmpegError) as exc:
            raise ImageError(path, f"not a readable video ({_reason(exc)})") from None
        try:
            if not container.streams.video:
                raise ImageError(path, "holds no video stream")
            yield container
        finally:
            container.close()


def _reason(exc: Exception) -> str:
    """FFmpeg's words for an error, without the name it gives the file (an opened file's is its
    descriptor number, which differs from run to run)."""
    words = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return words[:100]


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """What a video holds, read from its packets without decoding a frame (a read of the file):
    its duration and its number of frames are those of the packets there, whatever the header
    claims. Raises :class:`ImageError`."""
    import av

    with _open_container(path) as container:
        stream = container.streams.video[0]
        taken = container.metadata.get("creation_time") or stream.metadata.get("creation_time")
        if taken:
            taken = taken.replace("Z", "")[:19] if "T" in taken else None
        size = (stream.codec_context.width, stream.codec_context.height)
        frames, first, end = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:  # the flushing packet; one without a time
                    continue
                frames += 1
                first = packet.pts if first is None else min(first, packet.pts)
                end = max(end or packet.pts, packet.pts + (packet.duration or 0))
        except (OSError, av.error.FFmpegError):  # a damaged tail: what was read stands
            pass
        duration = None
        if frames and stream.time_base is not None:
            start = stream.start_time if stream.start_time is not None else first
            duration = max(0.0, float((end - start) * stream.time_base))
        gps, note = container_position(container.metadata)
        return VideoInfo(duration, size, taken or None, frames=frames, gps=gps, notes=(note,) if note else ())


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
    with _open_container(path) as container:
        try:
            stream = container.streams.video[0]
            # the budget, before a frame is decoded: the header's size (each frame is checked again)
            _check_frame(path, stream.codec_context.width, stream.codec_context.height, target_size, max_pixels,
                         max_bytes)
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
            raise ImageError(path, f"video cannot be decoded ({_reason(exc)})") from None


#: Bytes a decoder holds per pixel of a frame, at most (planar 4:4:4, 8 bits: 4:2:0 takes 1.5).
FRAME_BYTES = 3


def _scaled(w: int, h: int, target_size: int | None) -> tuple[int, int]:
    """The size a frame of ``w`` x ``h`` converts to: a shorter side of ``target_size`` where the
    frame is over twice that, as :func:`convscope.data.load_image`'s reduced-scale decoding."""
    short = min(w, h)
    if target_size and short > 2 * target_size:
        scale = target_size / short
        return max(1, round(w * scale)), max(1, round(h * scale))
    return w, h


def _check_frame(path, w: int, h: int, target_size: int | None, max_pixels: int, max_bytes: int) -> None:
    """A frame of ``w`` x ``h`` within the photos' budget: its pixels, and the bytes of the
    decoder's frame plus the RGB picture it converts to (``ImageTooLarge`` otherwise)."""
    if w and h:
        sw, sh = _scaled(w, h, target_size)
        check_pixels(path, w, h, max_pixels, max_bytes, cost=w * h * FRAME_BYTES + sw * sh * pixel_bytes("RGB"))


def _to_image(frame, target_size: int | None, path, max_pixels: int, max_bytes: int) -> Image.Image:
    w, h = frame.width, frame.height
    _check_frame(path, w, h, target_size, max_pixels, max_bytes)  # (a frame may differ from the header)
    size = _scaled(w, h, target_size)
    return frame.to_image() if size == (w, h) else frame.to_image(width=size[0], height=size[1])


def frame_at(path: str | os.PathLike, time: float, *, target_size: int | None = None) -> Image.Image:
    """The frame shown at ``time`` seconds into a video (the first at or after it, else the last),
    within the photos' budget and, with ``target_size``, at reduced scale (as
    :func:`video_frames`). Raises :class:`ImageError`."""
    last = None
    for t, image in video_frames(path, fps=1000.0, first=max(0, int(time * 1000) - 1), target_size=target_size):
        last = image
        if t + 1e-3 >= time:
            return image
    if last is None:
        raise ImageError(path, f"no frame at {time} s")
    return last
