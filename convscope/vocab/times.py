"""Time words of a query and the time a photo was taken: ``"2015"``, ``"may 2015"``,
``"2015-05-02"``, ``"2015-05"``, ``"may"``, ``"4th july"``, ``"night"``, ``"summer"``.

:func:`parse` reads the time word starting at a query token as a :class:`TimeTerm`;
:meth:`TimeTerm.match` says whether a photo's time (:class:`When`) matches it, and why, in one
line for the result's why. Pure functions: no clock, no index.

What the words mean:

- a year (1800 to 2099), a month (its name: "may", "september"; an abbreviation, "sep", only with
  a day or a year after it, as "jan" and "mar" are words and names too), a month of a year
  ("may 2015", "2015-05"), a day ("2015-05-02", "may 2 2015", "2nd may 2015"), a day of any
  year ("july 4", "4th july"): the calendar date of the photo's local time.
- parts of the day, local hours, start included, end not: **morning** 05:00-12:00,
  **afternoon** 12:00-17:00, **evening** 17:00-21:00, **night** 21:00-05:00. They match only
  a time from the photo's EXIF, the camera's clock, which EXIF defines as local time (its offset
  from UTC is not needed to know the hour there, and most cameras write none): not a video's
  creation time (UTC) nor a file's modification time (when it was copied, not taken).
- seasons, meteorological (whole months, as weather services count them): **spring** March-May,
  **summer** June-August, **autumn** (or **fall**) September-November, **winter**
  December-February, in the northern hemisphere; six months on in the southern, where the
  photo's latitude says it was taken there (Sydney's summer is December-February). Without a
  position the northern months are used, and the why says so: most photos are taken there, and a
  season word on a photo without a position is a guess either way.

>>> term, used = parse(["dog", "may", "2015"], 1)
>>> term.words, used, term.describe()
('may 2015', 2, 'May 2015')
>>> term.match(When("2015-05-02T14:03:00"))
"'may 2015': taken 2015-05-02 14:03 (EXIF)"
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
import re

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
#: Abbreviations of month names, read as a month only with a day or a year after them.
MONTH_ABBREVIATIONS = {**{m[:3]: k for k, m in enumerate(MONTHS, 1)}, "sept": 9}
#: Local hours of each part of the day: [start, end), wrapping past midnight.
PARTS_OF_DAY = {"morning": (5, 12), "afternoon": (12, 17), "evening": (17, 21), "night": (21, 5)}
#: The months of each season in the northern hemisphere (the southern's are six months on).
SEASONS = {"spring": (3, 4, 5), "summer": (6, 7, 8), "autumn": (9, 10, 11), "winter": (12, 1, 2)}
_SEASON_WORDS = {"spring": "spring", "summer": "summer", "autumn": "autumn", "fall": "autumn", "winter": "winter"}
_PART_WORDS = {**{w: w for w in PARTS_OF_DAY}, **{w + "s": w for w in PARTS_OF_DAY}, "nighttime": "night"}
#: Years a query number may name.
YEARS = range(1800, 2100)
#: Where a photo's time came from (the index's ``taken_from``), and how a why says it.
SOURCES = {"exif": "EXIF", "container": "the video's creation time, UTC",
           "file": "the file's modification time: the photo holds no date"}
_ISO_DATE = re.compile(r"(\d{4})[-/](\d{1,2})(?:[-/](\d{1,2}))?")
_DAY = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?")


@dataclasses.dataclass(frozen=True)
class When:
    """A photo's time as an index keeps it: ``taken`` (ISO 8601 local time,
    ``YYYY-MM-DDTHH:MM:SS``), ``source`` (one of :data:`SOURCES`), ``offset`` (minutes east of
    UTC, or None) and ``lat`` (its latitude in degrees, or None: for seasons)."""

    taken: str
    source: str = "exif"
    offset: int | None = None
    lat: float | None = None


@dataclasses.dataclass(frozen=True)
class TimeTerm:
    """A time word of a query: ``words`` (as the query said them, lower case) and what they fix:
    ``year``, ``month`` (1-12), ``day``, ``part`` (a key of :data:`PARTS_OF_DAY`) or ``season``
    (a key of :data:`SEASONS`); what is None is free."""

    words: str
    year: int | None = None
    month: int | None = None
    day: int | None = None
    part: str | None = None
    season: str | None = None

    def describe(self) -> str:
        """The term in words: "May 2015", "2 May 2015", "May (any year)", "night (21:00-05:00)"."""
        if self.part:
            start, end = PARTS_OF_DAY[self.part]
            return f"{self.part} ({start:02d}:00-{end:02d}:00 local time)"
        if self.season:
            north, south = _season_months(self.season, False), _season_months(self.season, True)
            return f"{self.season} ({_month_span(north)} in the north, {_month_span(south)} in the south)"
        parts = [str(self.day)] if self.day else []
        parts += [MONTHS[self.month - 1].capitalize()] if self.month else []
        parts += [str(self.year)] if self.year else []
        return " ".join(parts) + (" (any year)" if self.year is None else "")

    def span(self) -> tuple[str, str] | None:
        """[start, end) as ISO 8601 local times for a year, a month of a year or a day, for a
        range query on ``taken``; None for the other terms."""
        if self.year is None or self.part or self.season:
            return None
        if self.month is None:
            return f"{self.year:04d}-01-01T00:00:00", f"{self.year + 1:04d}-01-01T00:00:00"
        if self.day is None:
            after = (self.year + self.month // 12, self.month % 12 + 1)
            return f"{self.year:04d}-{self.month:02d}-01T00:00:00", f"{after[0]:04d}-{after[1]:02d}-01T00:00:00"
        start = datetime.datetime(self.year, self.month, self.day)
        return start.isoformat(), (start + datetime.timedelta(days=1)).isoformat()

    def match(self, when: When) -> str | None:
        """Why a photo's time matches this term (one line), or None when it does not, cannot be
        read, or is the wrong kind of time for the term (a part of the day on a time not from
        EXIF)."""
        taken = _read(when.taken)
        if taken is None:
            return None
        if self.part:
            return self._match_part(taken, when)
        if self.season:
            south = when.lat is not None and when.lat < 0
            if taken.month not in _season_months(self.season, south):
                return None
            where = (f"the {'southern' if south else 'northern'} hemisphere (latitude {when.lat:.1f})"
                     if when.lat is not None else "the northern hemisphere, assumed (no position)")
            return (f"'{self.words}': taken {taken:%Y-%m-%d} ({_source(when)}), "
                    f"{self.season} in {where} is {_month_span(_season_months(self.season, south))}")
        if any(want is not None and want != got for want, got in
               ((self.year, taken.year), (self.month, taken.month), (self.day, taken.day))):
            return None
        return f"'{self.words}': taken {taken:%Y-%m-%d %H:%M} ({_source(when)})"

    def _match_part(self, taken: datetime.datetime, when: When) -> str | None:
        if when.source != "exif":
            return None
        if not _in_part(taken.hour, self.part):
            return None
        start, end = PARTS_OF_DAY[self.part]
        zone = f"UTC{_offset_text(when.offset)}" if when.offset is not None else "the camera's clock"
        return (f"'{self.words}': taken at {taken:%H:%M} local time ({zone}) on {taken:%Y-%m-%d}, "
                f"{self.part} is {start:02d}:00-{end:02d}:00")


def parse(tokens: list[str], i: int) -> tuple[TimeTerm, int] | None:
    """The time word starting at ``tokens[i]`` (case ignored) and the number of tokens it used,
    or None if none starts there. A month name takes the day and the year after it ("may 2
    2015"), a day the month and year after it ("2nd may 2015")."""
    if not 0 <= i < len(tokens):
        return None
    word = tokens[i].lower()
    if word in _PART_WORDS:
        return TimeTerm(word, part=_PART_WORDS[word]), 1
    if word in _SEASON_WORDS:
        return TimeTerm(word, season=_SEASON_WORDS[word]), 1
    if word.isdigit() and len(word) == 4 and int(word) in YEARS:
        return TimeTerm(word, year=int(word)), 1
    m = _ISO_DATE.fullmatch(word)
    if m:
        year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) else None
        if year in YEARS and _valid(year, month, day):
            return TimeTerm(word, year=year, month=month, day=day), 1
        return None
    month = _month(word)
    if month is not None:
        return _month_first(tokens, i, month)
    day = _day(word)
    if day is not None and i + 1 < len(tokens):
        month = _month(tokens[i + 1].lower())
        if month is not None:
            year = _year(tokens, i + 2)
            if year is not None and _valid(year, month, day):
                return _term(tokens, i, 3, year=year, month=month, day=day)
            if _valid(None, month, day):
                return _term(tokens, i, 2, month=month, day=day)
    return None


def _month_first(tokens: list[str], i: int, month: int) -> tuple[TimeTerm, int] | None:
    """A month name at ``i``, with the day and year that follow it."""
    full = tokens[i].lower().rstrip(".") in MONTHS
    day = _day(tokens[i + 1].lower()) if i + 1 < len(tokens) else None
    if day is not None and not _valid(None, month, day):
        day = None
    year = _year(tokens, i + 1 + (day is not None))
    if day is not None and year is not None and _valid(year, month, day):
        return _term(tokens, i, 3, year=year, month=month, day=day)
    if year is not None and day is None:
        return _term(tokens, i, 2, year=year, month=month)
    if day is not None:
        return _term(tokens, i, 2, month=month, day=day)
    return _term(tokens, i, 1, month=month) if full else None


def _term(tokens: list[str], i: int, used: int, **fixed) -> tuple[TimeTerm, int]:
    return TimeTerm(" ".join(t.lower() for t in tokens[i:i + used]), **fixed), used


def _month(word: str) -> int | None:
    word = word.rstrip(".")
    if word in MONTHS:
        return MONTHS.index(word) + 1
    return MONTH_ABBREVIATIONS.get(word)


def _day(word: str) -> int | None:
    m = _DAY.fullmatch(word)
    return int(m.group(1)) if m and 1 <= int(m.group(1)) <= 31 else None


def _year(tokens: list[str], i: int) -> int | None:
    word = tokens[i] if i < len(tokens) else ""
    return int(word) if word.isdigit() and len(word) == 4 and int(word) in YEARS else None


def _valid(year: int | None, month: int, day: int | None) -> bool:
    if not 1 <= month <= 12:
        return False
    if day is None:
        return True
    return 1 <= day <= calendar.monthrange(year if year is not None else 2000, month)[1]  # 2000: a leap year


def _read(taken: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(taken).replace(tzinfo=None)
    except (TypeError, ValueError):
        return None


def _source(when: When) -> str:
    return SOURCES.get(when.source, when.source)


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _season_months(season: str, south: bool) -> tuple[int, ...]:
    return tuple((m + 5) % 12 + 1 for m in SEASONS[season]) if south else SEASONS[season]


def _month_span(months: tuple[int, ...]) -> str:
    return f"{MONTHS[months[0] - 1].capitalize()}-{MONTHS[months[-1] - 1].capitalize()}"


def date_words(taken: str | None) -> tuple[str, ...]:
    """The words a photo's date gives, as :func:`parse` reads them: year, month, month of the
    year, ISO month and day ("2015", "may", "may 2015", "2015-05", "2015-05-02"); none if
    ``taken`` is not an ISO 8601 time."""
    when = _read(taken) if taken else None
    if when is None:
        return ()
    month = MONTHS[when.month - 1]
    return (f"{when.year:04d}", month, f"{month} {when.year:04d}", f"{when:%Y-%m}", f"{when:%Y-%m-%d}")


def year_month(taken: str | None) -> tuple[int, int] | None:
    """(year, month) of a photo's time, the timeline's two levels; None if unreadable."""
    when = _read(taken) if taken else None
    return (when.year, when.month) if when else None


def part_of_day(taken: str | None) -> str | None:
    """The part of the day (a key of :data:`PARTS_OF_DAY`) of a local time, or None."""
    when = _read(taken) if taken else None
    if when is None:
        return None
    return next((part for part in PARTS_OF_DAY if _in_part(when.hour, part)), None)


def _in_part(hour: int, part: str) -> bool:
    start, end = PARTS_OF_DAY[part]
    return start <= hour < end if start < end else (hour >= start or hour < end)


def file_time(mtime_ns: int) -> str:
    """A file's modification time (ns since the epoch) as ISO 8601 local time of this machine,
    the ``taken`` of a photo with no date of its own (its :class:`When` source ``"file"``)."""
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0).isoformat()


__all__ = ["MONTHS", "MONTH_ABBREVIATIONS", "PARTS_OF_DAY", "SEASONS", "SOURCES", "TimeTerm", "When", "YEARS",
           "date_words", "file_time", "parse", "part_of_day", "year_month"]
