"""File metadata: the sha256, the date taken (EXIF, or the video container's), the size in
pixels and a video's duration, columns of the ``files`` table, from the one read of the file."""
from __future__ import annotations

from ..media import VideoInfo
from .base import Signal


class Metadata(Signal):
    name = "metadata"
    columns = {"sha256": "TEXT NOT NULL", "taken": "TEXT", "width": "INTEGER", "height": "INTEGER", "duration": "REAL"}
    #: Time words and the timeline read ranges of dates (taken, else the file's time).
    tables = """
CREATE INDEX files_taken ON files (taken);
CREATE INDEX files_mtime ON files (mtime_ns);
"""

    def file(self, read):
        return {"sha256": read.sha256, "taken": read.taken, "width": read.size[0], "height": read.size[1],
                "duration": read.duration if isinstance(read, VideoInfo) else None}
