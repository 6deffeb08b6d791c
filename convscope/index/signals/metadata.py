"""File metadata: the sha256, the date taken (EXIF, or the video container's), the size in
pixels and a video's duration, columns of the ``files`` table, from the one read of the file."""
from __future__ import annotations

from ..media import VideoInfo
from .base import Signal


class Metadata(Signal):
    name = "metadata"
    columns = {"sha256": "TEXT NOT NULL", "taken": "TEXT", "width": "INTEGER", "height": "INTEGER", "duration": "REAL"}

    def file(self, read):
        return {"sha256": read.sha256, "taken": read.taken, "width": read.size[0], "height": read.size[1],
                "duration": read.duration if isinstance(read, VideoInfo) else None}
