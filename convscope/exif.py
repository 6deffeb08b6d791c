"""What a photo's EXIF says that convscope uses: its orientation (how to turn it upright), when
it was taken (DateTimeOriginal, and its offset from UTC) and where (GPS latitude and longitude).

EXIF is input, not fact. Damaged EXIF reads as none, never as an error; a value that is there
but cannot be true (a date of 0000:00:00 or after tomorrow, an offset of +25:00, a latitude
of 91 or the (0, 0) of a receiver without a fix) is ignored, and :attr:`Facts.notes` says so in
one line each, ``"<what>: <why>"`` (what: one of :data:`NOTE_SUBJECTS`), for the index to keep
and count.

>>> with Image.open("photos/cat.jpg") as img:
...     orientation(img), read_facts(img)
(6, Facts(taken='2021-07-04T12:30:00', offset=120, gps=(45.764, 4.8357), notes=()))
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import re
import struct

from PIL import Image

from .geo import check_coordinates

EXIF_ORIENTATION = 0x0112
#: The turn that makes a picture of each EXIF orientation upright.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Orientations whose upright picture swaps width and height.
QUARTER_TURNS = frozenset((5, 6, 7, 8))
#: What a note is about: its first word, before the colon.
NOTE_SUBJECTS = ("date", "offset", "gps", "location")
#: A date this long after now is a wrong clock, not a photo (a day covers every time zone).
FUTURE_SLACK = datetime.timedelta(days=1)
#: Offsets from UTC that a time zone has (minutes): UTC-12:00 to UTC+14:00, in quarter hours.
OFFSET_RANGE = (-12 * 60, 14 * 60)
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATE_TIME_ORIGINAL = 36867
_OFFSET_TIME = 0x9010
_OFFSET_TIME_ORIGINAL = 0x9011
_GPS_LATITUDE_REF, _GPS_LATITUDE, _GPS_LONGITUDE_REF, _GPS_LONGITUDE = 1, 2, 3, 4
_DAMAGED = (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error)
_OFFSET = re.compile(r"([+-])(\d\d):(\d\d)")


@dataclasses.dataclass(frozen=True)
class Facts:
    """When and where, as a photo's EXIF says: ``taken`` (DateTimeOriginal, the camera's local
    time, ISO 8601 ``YYYY-MM-DDTHH:MM:SS``), ``offset`` (minutes east of UTC, from
    OffsetTimeOriginal, else OffsetTime), ``gps`` (latitude, longitude in degrees, north and east
    positive), each None where absent or ignored, and ``notes``: why each ignored value was."""

    taken: str | None = None
    offset: int | None = None
    gps: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()


def orientation(img: Image.Image) -> int | None:
    """The EXIF orientation of an opened image (1..8), or None."""
    try:
        return img.getexif().get(EXIF_ORIENTATION)
    except _DAMAGED:
        return None


def read_facts(img: Image.Image, now: datetime.datetime | None = None) -> Facts:
    """When and where an opened image was taken, from its EXIF (Pillow parses it once per image:
    no more reading of the file); ``now`` (aware; default: the clock) decides what is future."""
    sub, gps_ifd = _ifd(img, _EXIF_IFD), _ifd(img, _GPS_IFD)
    notes = []
    offset, note = check_offset(sub.get(_OFFSET_TIME_ORIGINAL) or sub.get(_OFFSET_TIME))
    notes.append(note)
    taken, note = check_date(sub.get(_DATE_TIME_ORIGINAL), offset, now)
    notes.append(note)
    gps, note = gps_position(gps_ifd)
    notes.append(note)
    return Facts(taken, offset, gps, tuple(n for n in notes if n))


def _ifd(img: Image.Image, tag: int) -> dict:
    """One of the image's EXIF sub-IFDs, empty when absent or damaged."""
    try:
        return img.getexif().get_ifd(tag)
    except _DAMAGED:
        return {}


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip("\x00 ") if isinstance(value, str) else None


def check_date(value, offset: int | None = None,
               now: datetime.datetime | None = None) -> tuple[str | None, str | None]:
    """EXIF's ``"YYYY:MM:DD HH:MM:SS"`` as ISO 8601 (``"YYYY-MM-DDTHH:MM:SS"``), and None; or
    None and a note: not a date (0000:00:00 included), or more than :data:`FUTURE_SLACK` after
    ``now`` (its UTC time where ``offset``, minutes east of UTC, is known). Absent or blank (the
    spaces EXIF writes for "unknown"): (None, None)."""
    if value is None:
        return None, None
    text = _text(value)
    if text is None:
        return None, f"date: DateTimeOriginal {value!r:.40} is not text"
    if not text.replace(":", "").strip():
        return None, None
    try:
        when = datetime.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None, f"date: {text[:40]!r} is not a date"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    utc = when - datetime.timedelta(minutes=offset or 0)
    if utc.replace(tzinfo=datetime.timezone.utc) > now + FUTURE_SLACK:
        return None, f"date: {when.isoformat()} is in the future"
    return when.isoformat(), None


def check_offset(value) -> tuple[int | None, str | None]:
    """EXIF's offset from UTC (``"+02:00"``) in minutes east of UTC, and None; or None and a
    note for an offset no time zone has (over :data:`OFFSET_RANGE`, not whole quarter hours) or
    unreadable. Absent or blank: (None, None)."""
    if value is None:
        return None, None
    text = _text(value)
    if text is not None and not text.replace(":", "").strip():
        return None, None
    m = _OFFSET.fullmatch(text or "")
    if not m:
        return None, f"offset: {(text if text is not None else value)!r:.40} is not an offset like +02:00"
    hours, minutes = int(m.group(2)), int(m.group(3))
    total = (hours * 60 + minutes) * (-1 if m.group(1) == "-" else 1)
    if minutes >= 60 or minutes % 15 or not OFFSET_RANGE[0] <= total <= OFFSET_RANGE[1]:
        return None, f"offset: {text} is not a time zone's (UTC-12:00 to UTC+14:00, in quarter hours)"
    return total, None


def gps_position(ifd) -> tuple[tuple[float, float] | None, str | None]:
    """(latitude, longitude) in degrees from an EXIF GPS IFD (GPSLatitude and GPSLongitude,
    degrees, minutes, seconds as rationals, signed by GPSLatitudeRef N/S and GPSLongitudeRef
    E/W), and None; or None and a note: a part missing or unreadable, or a position that
    :func:`convscope.geo.check_coordinates` refuses. No position at all: (None, None)."""
    if _GPS_LATITUDE not in ifd and _GPS_LONGITUDE not in ifd:
        return None, None
    lat, lon = _degrees(ifd.get(_GPS_LATITUDE)), _degrees(ifd.get(_GPS_LONGITUDE))
    if lat is None or lon is None:
        which = "latitude" if lat is None else "longitude"
        raw = ifd.get(_GPS_LATITUDE if lat is None else _GPS_LONGITUDE)
        return None, f"gps: {which} {raw!r:.60} is not degrees, minutes, seconds"
    lat_ref = (_text(ifd.get(_GPS_LATITUDE_REF)) or "").upper()
    lon_ref = (_text(ifd.get(_GPS_LONGITUDE_REF)) or "").upper()
    if lat_ref not in ("N", "S") or lon_ref not in ("E", "W"):
        return None, (f"gps: no hemisphere (GPSLatitudeRef {lat_ref or 'missing'}, "
                      f"GPSLongitudeRef {lon_ref or 'missing'})")
    lat, lon = (-lat if lat_ref == "S" else lat), (-lon if lon_ref == "W" else lon)
    why = check_coordinates(lat, lon)
    if why:
        return None, f"gps: {why}"
    return (round(lat, 7), round(lon, 7)), None


def _degrees(value) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals (fewer parts allowed), or None
    where they are not finite non-negative numbers with minutes and seconds under 60."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if not all(math.isfinite(n) and n >= 0 for n in numbers) or any(n >= 60 for n in numbers[1:]):
        return None
    return sum(n / 60 ** k for k, n in enumerate(numbers))


__all__ = ["EXIF_ORIENTATION", "EXIF_TRANSPOSE", "FUTURE_SLACK", "Facts", "NOTE_SUBJECTS", "OFFSET_RANGE",
           "QUARTER_TURNS", "check_date", "check_offset", "gps_position", "orientation", "read_facts"]
