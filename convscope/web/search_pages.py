"""The search pages of one index: a search page (by word, by example, by unit) with its results
grid, the duplicates and the albums, their JSON twins under ``/api``, and the files they show.

:class:`SearchPages` is a page group (:class:`convscope.web.site.PageGroup`): the app makes it
with the :class:`~convscope.web.site.Site` (page renderer, worker threads), the open index and
a loader of the index's model, and mounts its :meth:`~SearchPages.routes`. The data comes from
:class:`convscope.web.finder.Finder`; keyword and like searches read only the index, unit
searches and the pictures of why run the model on the model thread: the index's own model
(:meth:`convscope.index.Index.checked_model`), loaded on first use, unless a model the app has
(the one it was given, the atlas's) has the index's weights.

>>> pages = SearchPages(site, Index.open("photos.index"))
>>> app = Starlette(routes=pages.routes())
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import ConvscopeError
from ..index.search import MIN_SCORE, SORTS
from ..index.store import read_path
from .common import ModelUnavailable, error_headers, error_status
from .finder import MAX_TOP, TOP, Finder, close_matches
from .site import Absent, NavLink, Site

logger = logging.getLogger("convscope.web")
#: Files the search home lists as added while the gallery was open (``serve --watch``).
ADDED = 24


class BadQuery(ConvscopeError, ValueError):
    status = 400


class PathJSON(JSONResponse):
    """JSON whose paths are exact: a name that is not valid UTF-8 holds its undecodable bytes
    as surrogate escapes (``os.fsdecode``), which UTF-8 cannot carry; such a document is
    written as the CLI's ``--json`` writes it, ``\\udce9`` (``json.loads`` gives the exact
    ``str`` back, ``os.fsencode`` its bytes). Every other document is as Starlette writes it."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def query_params(request: Request) -> QueryParams:
    """The URL's parameters as Starlette reads them, but ``like`` (a path the index records)
    with a byte that is not UTF-8 kept as ``os.fsdecode`` keeps it (``%E9`` -> ``\\udce9``)."""
    pairs = parse_qsl(request.url.query, keep_blank_values=True, errors="surrogateescape")
    return QueryParams([(k, v if k == "like" else v.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                        for k, v in pairs])


@dataclasses.dataclass
class Query:
    """A search as the URL asks for it: one of ``q`` (words), ``like`` (an indexed path, and
    ``t`` for a video's frame) or ``unit`` (``LAYER:UNIT``), or none (the search page's start)."""

    q: str | None = None
    like: str | None = None
    t: float | None = None
    unit: str | None = None
    min_score: float = MIN_SCORE
    sort: str = "score"
    top: int = TOP

    @classmethod
    def parse(cls, params) -> "Query":
        """From query parameters; :class:`BadQuery` (400) with a reason for a bad one."""

        def text(name):
            value = params.get(name)
            return value.strip() if value is not None and value.strip() else None

        def number(name, default, lo, hi, kind=float):
            raw = text(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = None
            if value is None or not lo <= value <= hi:
                what = "a whole number" if kind is int else "a number"
                raise BadQuery(f"{name} must be {what} from {lo:g} to {hi:g}, got {raw[:40]!r}")
            return value

        query = cls(q=text("q"), like=text("like"), unit=text("unit"), t=number("t", None, 0, 1e9),
                    min_score=number("min_score", MIN_SCORE, 0, 1), top=number("top", TOP, 1, MAX_TOP, int),
                    sort=text("sort") or "score")
        asked = [name for name in ("q", "like", "unit") if getattr(query, name) is not None]
        if len(asked) > 1:
            raise BadQuery("give one of q (words), like (an indexed photo) or unit (LAYER:UNIT), "
                           f"not {' and '.join(asked)}")
        if query.sort not in SORTS:
            raise BadQuery(f"sort must be one of {', '.join(SORTS)}, got {query.sort[:40]!r}")
        return query


def _paths(index) -> set[str]:
    return {read_path(r[0]) for r in index.query("SELECT path FROM files")}


class SearchPages:
    """The page group of one index (see the module's docstring). ``model``: a
    :class:`~convscope.models.LoadedModel` the app was given, used when it has the index's
    weights (and else the atlas's model, when the atlas records the index's spec)."""

    search = "/search"
    absent = Absent(("/search", "/api/search", "/duplicates", "/api/duplicates", "/albums", "/api/albums",
                     "/albums/{name:path}", "/api/albums/{name:path}", "/thumbs/{rest:path}", "/files/{rest:path}",
                     "/explain/{rest:path}"),
                    "this server has no index (it was started without one), so it has no search, duplicates or albums "
                    "pages; start from /")

    def __init__(self, site: Site, index, model=None):
        self.site = site
        self.index = index
        self.given = model
        self._loading = threading.Lock()
        self._model = None
        self.links = site.links
        self.finder = Finder(index, self.model, self.links)
        self.nav = [NavLink("Duplicates", self.links.duplicates()), NavLink("Albums", self.links.albums())]
        self.api = {
            "search": "/api/search?q={words} | like={indexed path}[&t={seconds}] | unit={layer}:{unit}"
                      " [&min_score=0.2&sort=score|date&top=40]",
            "duplicates": "/api/duplicates",
            "albums": "/api/albums",
            "album": "/api/albums/{album}",
            "thumbnail": "/thumbs/{entry}.jpg",
            "original": "/files/{file_id}/{name}",
            "why picture": "/explain/{entry}.jpg?class={class} | unit={layer}:{unit}",
        }
        self.home = self.search_page
        self.added: list[str] = []  # files a newer version brought (reopen), newest first
        #: The line the pages show while the index served stands in for one not built yet
        #: (:func:`convscope.web.app.follow_index`), None otherwise.
        self.waiting: str | None = None

    def reopen(self, index) -> None:
        """Serve ``index``, a newer version of this one (:mod:`convscope.index.watch` committed
        it, or a build's snapshot: :class:`~convscope.web.app.IndexFollower`), from now on: a
        request under way ends on the version it began with (its database and memory maps stay
        readable after the commit removes their names). The files an update brought (not a
        build's snapshots) lead the search home's "added" list."""
        updated = index.building is None and self.index.building is None and self.waiting is None
        if updated and index.root == self.index.root:
            before, now = _paths(self.index), _paths(index)
            fresh = sorted(now - before)
            self.added = (fresh + [p for p in self.added if p in now and p not in fresh])[:ADDED]
        self.index, self.finder, self.waiting = index, Finder(index, self.model, self.links), None

    def building_line(self) -> str | None:
        """The banner of the search pages while the index is being built, else None:
        ``"Indexing: 120 of 370 photos; results so far."``"""
        b = self.index.building
        if b is None:
            return self.waiting
        what = "photos and videos" if b.get("videos") else "photos"
        return f"Indexing: {b['files_done']:,} of {b['files']:,} {what}; results so far."

    def _page(self, template: str, **data):
        line = self.building_line()  # (else the atlas's line, where the app has one building)
        return self.site.page(template, **({"building": line} if line else {}), **data)

    def _home(self) -> dict:
        finder = self.finder
        return {**finder.home(), "added": finder.cards(self.added)}

    def model(self):
        """The index's model, loaded on the first call (:class:`ModelUnavailable`, 503, when it
        cannot be had): the first model the app has whose weights are the index's, else the
        one the index records (:meth:`~convscope.index.Index.checked_model`)."""
        with self._loading:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _offered(self):
        if self.given is not None:
            yield "the model given", lambda: self.given
        atlas = self.site.model_record or {}
        if self.site.model is not None and atlas.get("spec") == self.index.meta["model"]["spec"]:
            yield "the atlas's model", self.site.model  # one copy for both

    def _load(self):
        for what, make in self._offered():
            try:
                return self.index.checked_model(make())  # its weights' fingerprint must be the index's
            except ConvscopeError as exc:
                logger.info("the index's pictures of why do not use %s (%s)", what, exc)
        try:
            return self.index.checked_model(None)
        except ConvscopeError as exc:
            raise ModelUnavailable(f"the model of this index cannot be loaded: {exc}") from None

    def routes(self) -> list[Route]:
        return [
            Route("/search", self.search_page),
            Route("/api/search", self.api_search),
            Route("/duplicates", self.duplicates_page),
            Route("/api/duplicates", self.api_duplicates),
            Route("/albums", self.albums_page),
            Route("/api/albums", self.api_albums),
            Route("/albums/{name:path}", self.album_page),  # a class label in an album's name may hold a "/"
            Route("/api/albums/{name:path}", self.api_album),
            # ids as text: the finder range-checks them (a 404 with the reason, never an overflow)
            Route("/thumbs/{row}.jpg", self.thumbnail),
            Route("/files/{file_id}/{name}", self.original),
            Route("/explain/{row}.jpg", self.picture),
        ]

    # ------------------------------------------------------------------ search

    async def _results(self, query: Query, request: Request) -> dict | None:
        finder, workers = self.finder, self.site.workers
        if query.q is not None:
            return await run_in_threadpool(functools.partial(
                finder.search, query.q, top=query.top, min_score=query.min_score, sort=query.sort))
        if query.like is not None:
            return await run_in_threadpool(functools.partial(finder.like, query.like, time=query.t, top=query.top))
        if query.unit is not None:
            async with workers.job():  # the model draws the boxes: on its own thread, dropped if no one waits
                return await workers.model(functools.partial(finder.unit, query.unit, top=query.top), request=request)
        return None

    async def search_page(self, request: Request):
        data, error, status, query, headers = None, None, 200, None, {}
        try:
            query = Query.parse(query_params(request))
            data = await self._results(query, request)
        except (ConvscopeError, ValueError) as exc:  # an unknown word, a bad unit, a full queue...: said on the page
            (status, error), headers = error_status(exc), error_headers(exc)
        home = await run_in_threadpool(self._home)
        params = request.url.query
        response = self._page(
            "search.html", status=status, data=data, home=home, error=error, query=query or Query(),
            suggestions=close_matches(error or ""), q=request.query_params.get("q", ""),
            api_url="/api/search" + ("?" + params if params else ""), sorts=SORTS,
        )
        response.headers.update(headers)
        return response

    async def api_search(self, request: Request):
        query = Query.parse(query_params(request))
        building = self.index.building  # (of the index the search reads: taken before it)
        data = await self._results(query, request)
        if data is None:
            data = {"mode": "home", **(await run_in_threadpool(self._home))}
        return PathJSON({**data, "complete": building is None and self.waiting is None, "building": building})

    # ------------------------------------------------------------------ duplicates and albums

    async def duplicates_page(self, request: Request):
        data = await run_in_threadpool(self.finder.duplicates)
        return self._page("duplicates.html", data=data)

    async def api_duplicates(self, request: Request):
        return PathJSON(await run_in_threadpool(self.finder.duplicates))

    async def albums_page(self, request: Request):
        data = await run_in_threadpool(self.finder.albums)
        return self._page("albums.html", data=data)

    async def api_albums(self, request: Request):
        return PathJSON(await run_in_threadpool(self.finder.albums))

    async def album_page(self, request: Request):
        data = await run_in_threadpool(self.finder.album, request.path_params["name"])
        return self._page("album.html", album=data)

    async def api_album(self, request: Request):
        return PathJSON(await run_in_threadpool(self.finder.album, request.path_params["name"]))

    # ------------------------------------------------------------------ files

    async def thumbnail(self, request: Request):
        data = await run_in_threadpool(self.finder.thumbnail, request.path_params["row"])
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})

    async def original(self, request: Request):
        p, workers = request.path_params, self.site.workers
        async with workers.job():  # a photo browsers cannot show is decoded: on a decode thread
            path, media_type, data = await workers.decode(self.finder.original, p["file_id"], p["name"], request=request)
        headers = {"Cache-Control": "private, max-age=600"}
        if data is None:
            return FileResponse(path, media_type=media_type, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    async def picture(self, request: Request):
        row, params, workers = request.path_params["row"], request.query_params, self.site.workers
        unit, cls = params.get("unit"), params.get("class")
        if (unit is None) == (cls is None):
            raise BadQuery("give class=INDEX (the Grad-CAM of that class) or unit=LAYER:UNIT (its receptive field)")
        if cls is not None:
            if not cls.isdigit():
                raise BadQuery(f"class must be a class index, got {cls[:40]!r}")
            cls = int(cls)
        async with workers.job():
            data = await workers.model(functools.partial(self.finder.picture, row, cls=cls, unit=unit), request=request)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
