"""The thumbnail: a small JPEG of each entry (the ``thumbs`` table), made in the decoding
worker from the picture the model saw."""
from __future__ import annotations

import sqlite3

from ..media import THUMBNAIL_SIZE, thumbnail_jpeg
from .base import Signal


class Thumbnail(Signal):
    name = "thumbnail"
    min_size = THUMBNAIL_SIZE
    tables = "CREATE TABLE thumbs (row INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);"

    def entry(self, image):
        return {"thumb": thumbnail_jpeg(image)}

    def insert(self, conn, rows, entries):
        conn.executemany("INSERT INTO thumbs VALUES (?, ?)", [(r, sqlite3.Binary(e["thumb"])) for r, e in zip(rows, entries)])

    def copy(self, old, conn, a, b, first):
        conn.executemany("INSERT INTO thumbs VALUES (?, ?)",
                         [(first + r - a, jpeg) for r, jpeg in old.execute("SELECT row, jpeg FROM thumbs WHERE row >= ? AND row < ?", (a, b))])
