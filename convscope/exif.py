"""What a photo's EXIF says that convscope uses: its orientation (how to turn it upright) and
the date it was taken. Damaged EXIF reads as none, never as an error.

>>> with Image.open("photos/cat.jpg") as img:
...     orientation(img), date_taken(img)          # (6, '2021-07-04T12:30:00')
"""
from __future__ import annotations

import datetime
import struct

from PIL import Image

EXIF_ORIENTATION = 0x0112
#: The turn that makes a picture of each EXIF orientation upright.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Orientations whose upright picture swaps width and height.
QUARTER_TURNS = frozenset((5, 6, 7, 8))
_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 36867
_DAMAGED = (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error)


def orientation(img: Image.Image) -> int | None:
    """The EXIF orientation of an opened image (1..8), or None."""
    try:
        return img.getexif().get(EXIF_ORIENTATION)
    except _DAMAGED:
        return None


def date_taken(img: Image.Image) -> str | None:
    """EXIF DateTimeOriginal of an opened image as ISO 8601 ``YYYY-MM-DDTHH:MM:SS``, or None."""
    try:
        value = img.getexif().get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL)
    except _DAMAGED:
        return None
    return parse_exif_date(value)


def parse_exif_date(value) -> str | None:
    """EXIF's ``"YYYY:MM:DD HH:MM:SS"`` as ISO 8601 (``"YYYY-MM-DDTHH:MM:SS"``); None if unreadable."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


__all__ = ["EXIF_ORIENTATION", "EXIF_TRANSPOSE", "QUARTER_TURNS", "date_taken", "orientation", "parse_exif_date"]
