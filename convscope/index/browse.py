"""Browsing an index by place and by time: how many files each country, region and city holds,
and each year and month; and the files of one place or one period, newest first, a page at a
time. Read from the ``files`` table with SQL (GROUP BY and indexed ranges), never file by file.

Places come from the columns the places signal fills (``lat, lon, city, region, country,
country_code``; see docs/search.md); an index built before it has none of them, or has them
NULL until ``convscope index --update``, and has no places (:func:`has_places`). Times are the
date the photo was taken (``taken``: EXIF, or a video's container, local time as recorded),
else the file's modification time (``mtime_ns``, read as UTC), each file saying which
(``dated_by``: "taken" or "file").

>>> tree = place_tree(index)                        # or index.places()
>>> [(c.name, c.count) for c in tree]               # [('France', 12), ('Italy', 3)]
>>> page = place_files(index, "France", city="Lyon", limit=40)
>>> [(y.name, y.count, [m.name for m in y.children]) for y in period_tree(index)]   # or index.timeline()
>>> period_files(index, 2015, 5).files[0]["date"]   # '2015-05-02T14:03:00'
"""
from __future__ import annotations

import calendar
import dataclasses

from .store import read_path

#: The columns the places signal adds to ``files``; an index without them has no places.
PLACE_COLUMNS = ("lat", "lon", "city", "region", "country", "country_code")
#: The optional columns a file record gets when the index has them (else None).
EXTRA_COLUMNS = (*PLACE_COLUMNS, "utc_offset", "taken_from", "notes")
MONTHS = tuple(calendar.month_name)[1:]

# A taken date is used when it reads as an ISO date (a damaged one falls back to the file's time,
# as the build's entry dates do); the file's time is read as UTC.
_TAKEN_OK = ("(taken GLOB '[0-9][0-9][0-9][0-9]-0[1-9]-[0-3][0-9]*' "
             "OR taken GLOB '[0-9][0-9][0-9][0-9]-1[0-2]-[0-3][0-9]*')")
_DATE = f"(CASE WHEN {_TAKEN_OK} THEN taken ELSE strftime('%Y-%m-%dT%H:%M:%S', mtime_ns / 1000000000, 'unixepoch') END)"
_BY_FILE = f"(taken IS NULL OR NOT {_TAKEN_OK})"


@dataclasses.dataclass
class Node:
    """One place (country, region or city) or period (year or month): ``name`` as shown
    ("France", "Auvergne-Rhône-Alpes", "Lyon"; "2015", "May"), ``key`` what selects it
    (its name; a year or month number; a region may be None: a place with no region),
    ``count`` files, ``row`` the entry of its newest file (for a thumbnail), ``date`` that
    file's date (ISO text); places: ``lat``/``lon`` in degrees (the mean of the photos of its
    city with the most photos), ``code`` (ISO country code); periods: ``by_file``, how many of
    its files are dated by their file's time; ``children``, largest place or earliest period first."""

    name: str
    key: object
    count: int
    row: int
    date: str | None
    lat: float | None = None
    lon: float | None = None
    code: str | None = None
    by_file: int = 0
    children: list["Node"] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FilePage:
    """A page of files: ``files`` (file records, each with ``date`` and ``dated_by``, and the
    place columns, None where the index has none), ``total`` in the place or period, and the
    ``offset`` of the first."""

    files: list[dict]
    total: int
    offset: int


def has_places(store) -> bool:
    """Whether the index has the place columns at all (an index built before them has not)."""
    return set(PLACE_COLUMNS) <= store.file_columns


# --------------------------------------------------------------------------- places


def place_tree(store) -> list[Node]:
    """Countries -> regions -> cities, with their file counts, most files first (a country's
    ``key`` its name, a region's its name or None, a city's its name): one GROUP BY over the
    files that have a country (the bare columns are those of each city's newest file, as
    SQLite gives them beside one MAX). Empty for an index without places."""
    if not has_places(store):
        return []
    rows = store.query(
        f"SELECT country, country_code AS code, region, city, COUNT(*) AS n, AVG(lat) AS lat, AVG(lon) AS lon, "
        f"MAX({_DATE}) AS date, first_row FROM files WHERE country IS NOT NULL AND country != '' GROUP BY country, region, city")
    countries: dict[str, Node] = {}
    regions: dict[tuple, Node] = {}
    for r in rows:
        city = Node(r["city"] or "(no city)", r["city"] or None, r["n"], r["first_row"], r["date"], r["lat"], r["lon"], r["code"])
        country = countries.setdefault(r["country"], Node(r["country"], r["country"], 0, city.row, None, code=r["code"]))
        region = regions.get((r["country"], r["region"] or None))
        if region is None:  # (a region "" is no region, as NULL is)
            region = regions[r["country"], r["region"] or None] = Node(r["region"] or "(no region)", r["region"] or None,
                                                                       0, city.row, None)
            country.children.append(region)
        region.children.append(city)
    for country in countries.values():
        for region in country.children:
            _roll_up(region)
        _roll_up(country)
    return sorted(countries.values(), key=lambda n: (-n.count, n.name))


def _roll_up(node: Node) -> None:
    """A place's count, newest file and position from its children (sorted, most files first)."""
    node.children.sort(key=lambda n: (-n.count, n.name))
    node.count = sum(c.count for c in node.children)
    newest = max(node.children, key=lambda c: c.date or "")
    node.row, node.date = newest.row, newest.date
    node.lat, node.lon = node.children[0].lat, node.children[0].lon


def place_files(store, country: str, region: str | None = None, city: str | None = None, *,
                any_region: bool = True, any_city: bool = True, offset: int = 0, limit: int = 60) -> FilePage:
    """The files of a country (and of one of its regions, and one of its cities), newest first:
    ``limit`` of them from ``offset``. ``region``/``city`` None with ``any_region``/``any_city``
    False select the files that have none."""
    if not has_places(store):
        return FilePage([], 0, offset)
    where, args = ["country = ?"], [country]
    if region is not None or not any_region:
        where.append("region = ?" if region else "(region IS NULL OR region = '')")
        args += [region] if region else []
    if city is not None or not any_city:
        where.append("city = ?" if city else "(city IS NULL OR city = '')")
        args += [city] if city else []
    return _page(store, " AND ".join(where), args, offset, limit)


# --------------------------------------------------------------------------- times


def period_tree(store) -> list[Node]:
    """Years -> months (earliest first) with their file counts and how many of them are dated by
    their file's time: one GROUP BY over every file. A year's ``key`` is its number, a month's
    its number (1 to 12)."""
    rows = store.query(
        f"SELECT substr(d, 1, 7) AS ym, COUNT(*) AS n, SUM(f) AS by_file, MAX(d) AS date, first_row "
        f"FROM (SELECT {_DATE} AS d, {_BY_FILE} AS f, first_row FROM files) WHERE d IS NOT NULL GROUP BY ym ORDER BY ym")
    years: dict[int, Node] = {}
    for r in rows:
        year, month = int(r["ym"][:4]), int(r["ym"][5:7])  # (a taken month 00 or 13 falls back to the file's time)
        node = years.setdefault(year, Node(str(year), year, 0, r["first_row"], None))
        node.children.append(Node(MONTHS[month - 1], month, r["n"], r["first_row"], r["date"], by_file=r["by_file"]))
    for node in years.values():
        node.count = sum(m.count for m in node.children)
        node.by_file = sum(m.by_file for m in node.children)
        newest = node.children[-1]
        node.row, node.date = newest.row, newest.date
    return list(years.values())


def period_files(store, year: int, month: int | None = None, *, offset: int = 0, limit: int = 60) -> FilePage:
    """The files of a year (or of one of its months, 1 to 12), newest first: ``limit`` of them
    from ``offset``. Two ranges, each of which an index on ``taken`` or ``mtime_ns`` serves: the
    files taken then, and the files with no taken date whose file time falls then."""
    if month is None:
        lo, hi = (year, 1), (year + 1, 1)
    else:
        lo, hi = (year, month), (year + (month == 12), month % 12 + 1)
    text = [f"{y:04d}-{m:02d}" for y, m in (lo, hi)]
    ns = [calendar.timegm((y, m, 1, 0, 0, 0)) * 10**9 for y, m in (lo, hi)]
    where = f"((taken >= ? AND taken < ? AND {_TAKEN_OK}) OR ({_BY_FILE} AND mtime_ns >= ? AND mtime_ns < ?))"
    return _page(store, where, [*text, *ns], offset, limit)


# --------------------------------------------------------------------------- records


def _page(store, where: str, args: list, offset: int, limit: int) -> FilePage:
    have = store.file_columns
    extra = ", ".join(c if c in have else f"NULL AS {c}" for c in EXTRA_COLUMNS)
    total = store.query(f"SELECT COUNT(*) AS n FROM files WHERE {where}", args)[0]["n"]
    rows = store.query(f"SELECT id, path, kind, size, mtime_ns, taken, width, height, duration, first_row, rows, {extra}, "
                       f"{_DATE} AS date, {_BY_FILE} AS by_file FROM files WHERE {where} "
                       f"ORDER BY date DESC, id DESC LIMIT ? OFFSET ?", [*args, int(limit), int(offset)])
    files = []
    for r in rows:
        record = dict(r)
        record["path"] = read_path(record["path"])
        record["dated_by"] = "file" if record.pop("by_file") else "taken"
        files.append(record)
    return FilePage(files, int(total), int(offset))


__all__ = ["EXTRA_COLUMNS", "FilePage", "MONTHS", "Node", "PLACE_COLUMNS", "has_places", "period_files",
           "period_tree", "place_files", "place_tree"]
