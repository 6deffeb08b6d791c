"""Files that are one moment: a Live Photo's still and its motion, the frames of a burst, a RAW file
and the JPEG the camera wrote beside it. A library shows each moment once.

What the files say decides: an iPhone writes ``IMG_1234.HEIC`` and ``IMG_1234.MOV`` with the same
ContentIdentifier (Apple's MakerNote tag 0x11 in the photo, the QuickTime key
``com.apple.quicktime.content.identifier`` in the video), and the frames of a burst with the same
BurstUUID (MakerNote tag 0x0B). Where a file carries no identifier, a photo and a video of the same
name in the same folder are a Live Photo, and so are a RAW file and a photo of the same name (a
camera's RAW+JPEG); two identifiers that differ keep their files apart.

>>> for moment in moments(["iphone/IMG_1234.HEIC", "iphone/IMG_1234.MOV", "iphone/IMG_1235.HEIC"]):
...     moment.kind, [p.name for p in moment.files]
('live', ['IMG_1234.HEIC', 'IMG_1234.MOV'])
('single', ['IMG_1235.HEIC'])
"""
from __future__ import annotations

import dataclasses
import os
import struct
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Mapping

from PIL import Image

from .. import formats
from ..data import IMAGE_EXTENSIONS, open_regular
from ..errors import ImageError
from .media import VIDEO_EXTENSIONS

#: The QuickTime metadata key of a Live Photo's motion that names its still.
CONTENT_KEY = "com.apple.quicktime.content.identifier"
#: Apple's MakerNote tags: ContentIdentifier (a Live Photo's still) and BurstUUID.
APPLE_CONTENT, APPLE_BURST = 0x0011, 0x000B
#: Kinds of moment, the first that applies naming it (a burst of Live Photos is a burst): the frames
#: of a burst, the still and motion of a Live Photo, a camera's RAW+JPEG, a file on its own.
KINDS = ("burst", "live", "raw+jpeg", "single")
_MAKER_NOTE, _EXIF_IFD = 0x927C, 0x8769
_APPLE = b"Apple iOS\0"


@dataclasses.dataclass(frozen=True)
class Marks:
    """What a file says of the moment it belongs to: ``content`` (Apple's ContentIdentifier,
    shared by a Live Photo's still and motion) and ``burst`` (Apple's BurstUUID), each None where
    absent."""

    content: str | None = None
    burst: str | None = None


@dataclasses.dataclass(frozen=True)
class Moment:
    """One moment: its ``files`` (photos first, then videos, each by name), its ``kind`` (one of
    :data:`KINDS`) and ``cover``, the photo that shows it (a video's moment: the video)."""

    kind: str
    files: tuple[Path, ...]

    @property
    def cover(self) -> Path:
        return self.files[0]


def marks(path: str | os.PathLike) -> Marks:
    """The identifiers a photo's Apple MakerNote or a video's QuickTime metadata hold; ``Marks()``
    for any other file, and for one that cannot be read (its decoding reports that, once)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix in VIDEO_EXTENSIONS:
            return Marks(content=_video_content(path))
        if suffix in IMAGE_EXTENSIONS and not formats.is_raw(path):
            return _photo_marks(path)
    except ImageError:
        pass
    return Marks()


def _photo_marks(path) -> Marks:
    with open_regular(path) as f:
        try:
            with Image.open(f) as img:  # the header only: no pixel is decoded
                note = img.getexif().get_ifd(_EXIF_IFD).get(_MAKER_NOTE)
        except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error, Image.DecompressionBombError):
            return Marks()
    tags = apple_maker_note(note) if isinstance(note, bytes) else {}
    return Marks(tags.get(APPLE_CONTENT), tags.get(APPLE_BURST))


def _video_content(path) -> str | None:
    import av

    with open_regular(path) as f:
        try:
            with av.open(f) as container:
                value = container.metadata.get(CONTENT_KEY)
        except (OSError, av.error.FFmpegError):
            return None
    return value.strip() or None if isinstance(value, str) else None


def apple_maker_note(note: bytes) -> dict[int, str]:
    """The text tags of an Apple MakerNote (``"Apple iOS\\0"``, a version, a byte order, then a TIFF
    IFD whose offsets count from the note's start), by tag number; {} for any other note."""
    if not note.startswith(_APPLE) or len(note) < 16:
        return {}
    order = {b"MM": ">", b"II": "<"}.get(note[12:14])
    if order is None:
        return {}
    out = {}
    count = struct.unpack_from(order + "H", note, 14)[0]
    for at in range(16, min(16 + 12 * count, len(note) - 11), 12):
        tag, kind, n, value = struct.unpack_from(order + "HHI4s", note, at)
        if kind != 2 or tag not in (APPLE_CONTENT, APPLE_BURST):  # ASCII only
            continue
        if n > 4:
            start = struct.unpack(order + "I", value)[0]
            value = note[start:start + n]
        text = value[:n].split(b"\0")[0].decode("ascii", "replace").strip()
        if text:
            out[tag] = text
    return out


def moments(paths: Iterable[str | os.PathLike],
            read: Mapping[Path, Marks] | Callable[[Path], Marks] | None = marks) -> list[Moment]:
    """Group ``paths`` (photos and videos) into moments, in the order of their first files; every
    path is in exactly one. ``read``: each file's :class:`Marks`, as a function (default:
    :func:`marks`, one header read per file), a mapping (what an index stored; a path not in it has
    none) or None (names only: same folder, same name).

    >>> [m.kind for m in moments(["a/IMG_1.HEIC", "a/IMG_1.MOV", "a/DSC_2.NEF", "a/DSC_2.JPG"], read=None)]
    ['live', 'raw+jpeg']
    """
    files = list(dict.fromkeys(Path(p) for p in paths))
    if read is None:
        found = {p: Marks() for p in files}
    elif callable(read):
        found = {p: read(p) for p in files}
    else:
        found = {p: read.get(p, Marks()) for p in files}
    parent = {p: p for p in files}
    kinds: dict[Path, str] = {}

    def root(p):
        while parent[p] != p:
            parent[p] = p = parent[parent[p]]
        return p

    def join(a, b, kind):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[rb] = ra
        kinds[ra] = min(kinds.get(ra, "single"), kinds.pop(rb, "single"), kind, key=KINDS.index)

    def apart(a, b):  # two identifiers that differ: not one moment, whatever the names say
        return (found[a].content and found[b].content and found[a].content != found[b].content)

    by_name, by_content, by_burst = defaultdict(list), defaultdict(list), defaultdict(list)
    for p in files:
        by_name[(p.parent, p.stem.lower())].append(p)
        if found[p].content:
            by_content[(p.parent, found[p].content)].append(p)
        if found[p].burst and not _is_video(p):
            by_burst[(p.parent, found[p].burst)].append(p)
    for group in by_content.values():  # a Live Photo's still(s) and motion, whatever their names
        videos = [p for p in group if _is_video(p)]
        for p in group:
            if videos and p != videos[0]:
                join(videos[0], p, "live")
    for group in by_name.values():
        videos = [p for p in group if _is_video(p)]
        stills = [p for p in group if not _is_video(p)]
        raws = [p for p in stills if formats.is_raw(p)]
        for v in videos:
            for s in stills:
                if not apart(s, v):
                    join(s, v, "live")
        if raws and len(raws) < len(stills):
            for s in stills[1:]:
                join(stills[0], s, "raw+jpeg")
    for group in by_burst.values():
        for p in group[1:]:
            join(group[0], p, "burst")
    groups: dict[Path, list[Path]] = {}
    for p in files:
        groups.setdefault(root(p), []).append(p)
    out = []
    for r, members in groups.items():
        members.sort(key=lambda p: (_is_video(p), formats.is_raw(p), p.name))  # a JPEG/HEIC still first
        out.append(Moment(kinds.get(r, "single") if len(members) > 1 else "single", tuple(members)))
    return out


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS
