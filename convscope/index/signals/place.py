"""Where and when a photo was taken, from its own metadata: columns of the ``files`` table.

From the one read of the file (:class:`convscope.data.Photo`: EXIF GPS, offset, notes; or
:class:`~convscope.index.media.VideoInfo`: the container's ISO 6709 location):

- ``lat``, ``lon``: the position, degrees (north, east positive).
- ``city``, ``district``, ``region``, ``country``, ``country_code``: its place names
  (:mod:`convscope.geo`), NULL where the optional gazetteer is not installed or no town is near;
  ``place_km``: how far the position is from the town named ``city`` (a why says "near Lyon
  (1.9 km)": in a big city the nearest town can be a neighbourhood or a neighbour).
- ``utc_offset``: minutes east of UTC of the photo's ``taken`` (EXIF only).
- ``taken_from``: where the time came from: "exif", "container" (a video's creation time, UTC)
  or "file" (no date inside: the build dates it by the file's modification time).
- ``notes``: the metadata ignored as untrue, one line each (``"gps: latitude 91 is out of range
  (-90 to 90)"``), counted by :func:`count_notes`.

Place names are looked up in the decoding worker (the gazetteer is loaded once per process,
on the first photo with a position). Without the package, :meth:`Location.warning`
is the one line a build says once; the coordinates are kept, so ``geo.places`` can name them
later without reading the files again.
"""
from __future__ import annotations

import collections
from typing import Iterable

from ... import geo
from ...exif import NOTE_SUBJECTS
from ..media import VideoInfo
from .base import Signal


class Location(Signal):
    name = "place"
    columns = {"lat": "REAL", "lon": "REAL", "city": "TEXT", "region": "TEXT", "country": "TEXT",
               "country_code": "TEXT", "utc_offset": "INTEGER", "taken_from": "TEXT", "notes": "TEXT",
               "district": "TEXT", "place_km": "REAL"}
    #: What the places page and place words look up: one index per level (a city's photos of a
    #: million files in a millisecond, not a scan: measured 0.6 ms against 198 ms).
    tables = """
CREATE INDEX files_place ON files (country, region, city);
CREATE INDEX files_city ON files (city);
CREATE INDEX files_district ON files (district);
CREATE INDEX files_region ON files (region);
"""
    optional = False

    def available(self) -> str | None:
        """None: positions, offsets and notes need no package (names may: see :meth:`warning`)."""
        return None

    def warning(self) -> str | None:
        """The one line a build says once where place names cannot be looked up here, or None."""
        return geo.unavailable()

    def notes(self, conn):
        return count_notes(r[0] for r in conn.execute("SELECT notes FROM files WHERE notes IS NOT NULL"))

    def file(self, read) -> dict:
        video = isinstance(read, VideoInfo)
        gps = read.gps
        found = geo.place(*gps) if gps else None
        return {
            "lat": gps[0] if gps else None,
            "lon": gps[1] if gps else None,
            "city": found.city if found else None,
            "region": found.region if found else None,
            "country": found.country if found else None,
            "country_code": found.country_code if found else None,
            "district": found.district if found else None,
            "place_km": found.km if found else None,
            "utc_offset": None if video else read.offset,
            "taken_from": ("container" if video else "exif") if read.taken else "file",
            "notes": "\n".join(read.notes) or None,
        }


def count_notes(values: Iterable[str | None]) -> dict[str, int]:
    """How many notes of each subject (:data:`convscope.exif.NOTE_SUBJECTS`: "date", "offset",
    "gps", "location") the ``notes`` column's values hold, subjects without a note left out.

    >>> count_notes(r[0] for r in conn.execute("SELECT notes FROM files"))
    {'date': 2, 'gps': 1}
    """
    counts = collections.Counter(line.partition(":")[0] for value in values if value for line in value.splitlines())
    return {subject: counts[subject] for subject in NOTE_SUBJECTS if counts[subject]}


__all__ = ["Location", "count_notes"]
