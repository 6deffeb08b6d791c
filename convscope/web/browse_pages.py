"""The places and timeline pages of one index: browse its photos by country -> region -> city
and by year -> month, each place or period with its count and the thumbnail of its newest
photo, and a place's or a month's photos as a grid (newest first, a page at a time), each tile
saying where and when. Their JSON twins are under ``/api``.

:class:`BrowsePages` is a page group (:class:`convscope.web.site.PageGroup`), made by the app
beside the search pages of an index. The counts come from :mod:`convscope.index.browse` (SQL
GROUP BY over the index's files, once per open index: the index does not change while it is
open); a page of photos is one indexed query. An index without places (built before they were
indexed) shows a one-line note on ``/places``; its timeline uses the date taken, else the
file's time, and says so.

>>> pages = BrowsePages(site, Index.open("photos.index"))
>>> app = Starlette(routes=pages.routes())
"""
from __future__ import annotations

import math
import shlex

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from .. import geo
from ..errors import unknown_name_error
from ..files import printable_path
from ..index import browse
from .common import Memo, NotFound, parse_number
from .finder import Roots
from .search_pages import PathJSON
from .site import Absent, NavLink, Site

#: Photos on one page of a place or a month.
PER_PAGE = 60
#: Cities shown under each region on a country's page (the region's own page shows them all).
CITIES_PREVIEW = 12


def no_places_note(root) -> str:
    """What ``/places`` says for an index whose photos have no place."""
    return ("No photo of this index has a GPS position. Built before convscope indexed places? "
            f"Run `convscope index --update --out {shlex.quote(printable_path(root))}`.")


def when_text(date: str | None, dated_by: str) -> str | None:
    """A file's date for people: ``2015-05-02T14:03:00`` -> ``2 May 2015, 14:03`` (a file's
    time: ``... UTC``)."""
    if not date or len(date) < 10:
        return None
    try:
        year, month, day = int(date[:4]), int(date[5:7]), int(date[8:10])
        text = f"{day} {browse.MONTHS[month - 1]} {year}"
    except (ValueError, IndexError):
        return date
    if len(date) >= 16:
        text += f", {date[11:16]}"
    return text + (" UTC" if dated_by == "file" and len(date) >= 16 else "")


def where_text(record: dict) -> str | None:
    """A file's place for people: ``Lyon, Auvergne-Rhône-Alpes, France``."""
    parts = [record.get(k) for k in ("city", "region", "country")]
    return ", ".join(p for p in parts if p) or None


def position_text(lat: float | None, lon: float | None) -> str | None:
    """``45.7640° N, 4.8357° E``; None without a position."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lat, lon)):
        return None
    return f"{abs(lat):.4f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.4f}° {'E' if lon >= 0 else 'W'}"


def _offset(minutes: int | None) -> str | None:
    """A time zone offset in minutes east of UTC as ``UTC+02:00`` (None past UTC±14:00)."""
    if not isinstance(minutes, int) or abs(minutes) > 14 * 60:
        return None
    sign, minutes = ("+" if minutes >= 0 else "-"), abs(minutes)
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


class BrowsePages:
    """The places and timeline pages of one open index (see the module's docstring)."""

    search = None
    home = None
    absent = Absent(("/places", "/api/places", "/timeline", "/api/timeline"),
                    "this server has no index (it was started without one), so it has no places or timeline "
                    "pages; start from /")

    def __init__(self, site: Site, index):
        self.site = site
        self.index = index
        self.links = site.links
        self.roots = Roots(index.meta.get("inputs") or [])
        self._cached = Memo()
        self.nav = [NavLink("Places", self.links.places()), NavLink("Timeline", self.links.timeline())]
        self.api = {
            "places": "/api/places[?country={country}[&region={region}[&city={city}]]][&page=N]",
            "timeline": "/api/timeline[?year={year}[&month={1..12}]][&page=N]",
        }

    def reopen(self, index) -> None:
        """Serve ``index``, a newer version of this one, from now on (see :meth:`SearchPages.reopen`)."""
        self.index, self.roots, self._cached = index, Roots(index.meta.get("inputs") or []), Memo()

    def routes(self) -> list[Route]:
        return [
            Route("/places", self.places_page),
            Route("/api/places", self.api_places),
            Route("/timeline", self.timeline_page),
            Route("/api/timeline", self.api_timeline),
        ]

    # ------------------------------------------------------------------ pages

    async def places_page(self, request: Request):
        data = await run_in_threadpool(self.places, dict(request.query_params))
        return self.site.page("places.html", data=data, api_url=_api_url(request), credit=geo.CREDIT)

    async def api_places(self, request: Request):
        return PathJSON(await run_in_threadpool(self.places, dict(request.query_params)))

    async def timeline_page(self, request: Request):
        data = await run_in_threadpool(self.timeline, dict(request.query_params))
        return self.site.page("timeline.html", data=data, api_url=_api_url(request))

    async def api_timeline(self, request: Request):
        return PathJSON(await run_in_threadpool(self.timeline, dict(request.query_params)))

    # ------------------------------------------------------------------ places

    def _places(self) -> list[browse.Node]:
        return self._cached("places", lambda: browse.place_tree(self.index))

    def places(self, params: dict) -> dict:
        """The data of ``/places`` for the URL's ``params``: the countries; a country's regions
        (each with its cities); a region's cities; a city's photos (``page``, from 1)."""
        countries = self._places()
        data = {"level": "countries", "trail": [], "note": None if countries else no_places_note(self.index.root)}
        if "country" not in params:
            located = sum(c.count for c in countries)
            return {**data, "located": located, "files": self._files(),
                    "places": [self._place(c, [c.key], cities=False) for c in countries]}
        country = _pick(countries, params["country"], "country", "See /places for the countries of this index.")
        keys = [country.key]
        data["trail"] = [{"name": country.name, "url": self.links.places(country.key)}]
        if "region" not in params:
            return {**data, "level": "country", "place": self._place(country, keys, cities=False),
                    "places": [self._place(r, keys + [r.key], cities=True) for r in country.children]}
        region = _pick(country.children, params["region"] or None, "region",
                       f"See {self.links.places(country.key)} for the regions of {country.name}.")
        keys.append(region.key)
        data["trail"].append({"name": region.name, "url": self.links.places(*_url_keys(keys))})
        if "city" not in params:
            return {**data, "level": "region", "place": self._place(region, keys, cities=False),
                    "places": [self._place(c, keys + [c.key], cities=False) for c in region.children]}
        city = _pick(region.children, params["city"] or None, "city",
                     f"See {self.links.places(*_url_keys(keys))} for the cities of {region.name}.")
        keys.append(city.key)
        data["trail"].append({"name": city.name, "url": self.links.places(*_url_keys(keys))})
        page = _page_number(params, city.count)
        found = browse.place_files(self.index, country.key, region.key, city.key, any_region=False, any_city=False,
                                   offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
        return {**data, "level": "city", "place": self._place(city, keys, cities=False),
                **self._photos(found, page, lambda p: self.links.places(*_url_keys(keys), page=p))}

    def _place(self, node: browse.Node, keys: list, *, cities: bool) -> dict:
        out = {"name": node.name, "count": node.count, "url": self.links.places(*_url_keys(keys)),
               "thumb": self._thumb(node.row), "newest": when_text(node.date, "taken"), "lat": node.lat, "lon": node.lon,
               "position": position_text(node.lat, node.lon), "code": node.code}
        if cities:
            out["places"] = [self._place(c, keys + [c.key], cities=False) for c in node.children[:CITIES_PREVIEW]]
            out["more"] = len(node.children) - len(out["places"])
        return out

    # ------------------------------------------------------------------ timeline

    def _periods(self) -> list[browse.Node]:
        return self._cached("timeline", lambda: browse.period_tree(self.index))

    def timeline(self, params: dict) -> dict:
        """The data of ``/timeline`` for the URL's ``params``: the years (newest first) with
        their months; a year's months; a month's photos (``page``, from 1)."""
        years = self._periods()
        data = {"level": "years", "trail": [], "files": self._files()}
        if "year" not in params:
            return {**data, "by_file": sum(y.by_file for y in years),
                    "periods": [self._period(y, [y.key], months=True) for y in reversed(years)]}
        number = parse_number(params["year"], "year", stop=10000)
        year = _pick(years, number, "year", "See /timeline for the years of this index.", name=str(number))
        data["trail"] = [{"name": year.name, "url": self.links.timeline(year.key)}]
        if "month" not in params:
            return {**data, "level": "year", "period": self._period(year, [year.key], months=False),
                    "periods": [self._period(m, [year.key, m.key], months=False) for m in year.children]}
        number = parse_number(params["month"], "month")
        if not 1 <= number <= 12:
            raise NotFound(f"there is no month {number}; months run from 1 to 12")
        month = _pick(year.children, number, "month", f"See {self.links.timeline(year.key)} for its months.",
                      name=browse.MONTHS[number - 1], known=[m.name for m in year.children])
        data["trail"].append({"name": month.name, "url": self.links.timeline(year.key, month.key)})
        page = _page_number(params, month.count)
        found = browse.period_files(self.index, year.key, month.key, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
        return {**data, "level": "month", "period": self._period(month, [year.key, month.key], months=False),
                **self._photos(found, page, lambda p: self.links.timeline(year.key, month.key, page=p))}

    def _period(self, node: browse.Node, keys: list, *, months: bool) -> dict:
        out = {"name": node.name, "count": node.count, "by_file": node.by_file, "url": self.links.timeline(*keys),
               "thumb": self._thumb(node.row), "newest": when_text(node.date, "taken"),
               "title": f"{node.name} {keys[0]}" if len(keys) == 2 else node.name}
        if months:
            out["periods"] = [self._period(m, keys + [m.key], months=False) for m in node.children]
        return out

    # ------------------------------------------------------------------ photos

    def _files(self) -> int:
        return self._cached("files", lambda: int(self.index.query("SELECT COUNT(*) AS n FROM files")[0]["n"]))

    def _photos(self, found: browse.FilePage, page: int, url) -> dict:
        pages = max(1, -(-found.total // PER_PAGE))
        return {"photos": [self._tile(r) for r in found.files], "total": found.total, "page": page, "pages": pages,
                "newer": url(page - 1) if page > 1 else None, "older": url(page + 1) if page < pages else None,
                "by_file": sum(r["dated_by"] == "file" for r in found.files)}

    def _tile(self, record: dict) -> dict:
        served = self.roots.allows(record["path"])
        row = record["first_row"]
        c, p = int(self.index.top_class[row][0]), float(self.index.top_prob[row][0])
        top = {"index": c, "label": self.index.labels[c], "probability": round(p, 4)} if c >= 0 else None
        return {
            "path": record["path"], "name": self.roots.display(record["path"]), "kind": record["kind"],
            "file_id": record["id"], "entry": row, "top": top,
            "where": where_text(record), "position": position_text(record["lat"], record["lon"]),
            "lat": record["lat"], "lon": record["lon"], "city": record["city"], "region": record["region"],
            "country": record["country"], "country_code": record["country_code"],
            "date": record["date"], "dated_by": record["dated_by"], "when": when_text(record["date"], record["dated_by"]),
            "taken_from": record["taken_from"], "utc_offset": _offset(record["utc_offset"]), "notes": record["notes"],
            "thumb": self.links.thumb(row) if served else None,
            "file": self.links.file(record["id"], record["path"]) if served else None,
            "like": self.links.like(record["path"]) if served else None,
            "why": self.links.explain(row, cls=c) if served and c >= 0 else None,
        }

    def _thumb(self, row: int) -> str | None:
        """The thumbnail of entry ``row``, if its file may be served."""
        file_id = int(self.index.entry_file[row])
        record = self.index.files([file_id])[file_id]
        return self.links.thumb(row) if self.roots.allows(record["path"]) else None


def _api_url(request: Request) -> str:
    query = request.url.query
    return "/api" + request.url.path + ("?" + query if query else "")


def _url_keys(keys: list) -> list:
    """A place's keys as its URL gives them: a missing region or city as ""."""
    return ["" if k is None else k for k in keys]


def _pick(nodes: list[browse.Node], key, kind: str, hint: str, *, name: str | None = None,
          known: list[str] | None = None) -> browse.Node:
    for node in nodes:
        if node.key == key:
            return node
    shown = name if name is not None else ("" if key is None else str(key))
    raise unknown_name_error(kind, shown, known if known is not None else [n.name for n in nodes], cls=NotFound,
                             hint=hint)


def _page_number(params: dict, count: int) -> int:
    pages = max(1, -(-count // PER_PAGE))
    if "page" not in params:
        return 1
    page = parse_number(params["page"], "page")
    if not 1 <= page <= pages:
        raise NotFound(f"there is no page {page}; pages run from 1 to {pages}")
    return page


__all__ = ["BrowsePages", "CITIES_PREVIEW", "PER_PAGE", "no_places_note", "position_text", "when_text", "where_text"]
