"""The thumbnail: a small JPEG of each entry (the ``thumbs`` table), made in the decoding
worker from the picture the model saw."""
from __future__ import annotations

from ..media import THUMBNAIL_SIZE, thumbnail_jpeg
from .base import Signal


class Thumbnail(Signal):
    name = "thumbnail"
    min_size = THUMBNAIL_SIZE

    def entry(self, image):
        return {"thumb": thumbnail_jpeg(image)}
