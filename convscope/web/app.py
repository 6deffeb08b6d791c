"""The gallery web server: an app factory over an atlas, an index or both, with an HTML page and
a JSON endpoint for each view (see docs/api.md and docs/search.md).

No global state: everything an app needs (the atlas, the index, the model, the upload folder)
lives on the app made by :func:`create_app`. Every page is in a page group
(:class:`convscope.web.site.PageGroup`), each made alike with the app's
:class:`~convscope.web.site.Site`: the atlas's (:mod:`~convscope.web.atlas_pages`), the uploads'
(:mod:`~convscope.web.upload_pages`), the fill's, an index's search pages
(:mod:`~convscope.web.search_pages`) and any given (an evolve run, a model's health); a group
the server lacks answers its paths with the reason (its ``absent``).
Bad requests get a 4xx status with a one-line reason, as JSON on ``/api/...`` and as a page
elsewhere; no URL can reach a file outside the atlas, the index's roots, the package's static
folder or the server's own upload folder, and of the atlas only its images are served.
Foreign host names and cross-site writes are refused (:mod:`convscope.web.security`); uploads
are bounded in time, number and decoding memory, and run on a few threads of their own whose
memory is given back (:mod:`convscope.web.workers`).

>>> app = create_app("atlas/", index="photos.index")
>>> from convscope.web import serve; serve(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConvscopeError
from .atlas_pages import AtlasPages
from .browse_pages import BrowsePages
from .concept_pages import ConceptPages
from .common import error_headers, error_response, error_status
from .evolve_pages import EvolvePages
from .fill_pages import MAX_QUEUE, FillPages
from .gallery import Gallery
from .health_pages import HealthPages
from .render import STATIC, environment, render
from .search_pages import SearchPages
from .security import AllowedHosts, HostAndOrigin, Login, LoginRequired, Secret, SecurityHeaders
from .site import PageGroup, Site
from .upload import MAX_UPLOAD_BYTES, Analyzer, UploadAborted, UploadStore
from .upload_pages import BODY_TIMEOUT, MAX_DECODE_BYTES, MAX_UPLOAD_PIXELS, UPLOAD_CONCURRENCY, UploadLimits, UploadPages
from .workers import Workers

#: Uploads decoded at once (each within ``max_decode_bytes``).
DECODE_CONCURRENCY = 2
#: Every kind of page group, for a server without one to say so on its paths (their ``absent``).
GROUPS = (AtlasPages, UploadPages, FillPages, SearchPages, BrowsePages, ConceptPages, EvolvePages, HealthPages)
logger = logging.getLogger("convscope.web")


def open_atlas(atlas):
    """An open atlas from a folder (via :meth:`convscope.atlas.Atlas.open`) or an atlas object."""
    if isinstance(atlas, (str, os.PathLike)):
        from ..atlas import Atlas

        return Atlas.open(atlas, building=True)  # a build in progress: its latest snapshot
    return atlas


class FollowBuild:
    """Before each request, let the gallery of an atlas still building take up the build's
    newest snapshot (:meth:`Gallery.refresh`), so its pages grow as the scan goes on, and the
    search pages the newest snapshot of an index still building (:class:`IndexFollower`)."""

    def __init__(self, app, gallery: Gallery | None, follower: "IndexFollower | None"):
        self.app, self.gallery, self.follower = app, gallery, follower

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if self.gallery is not None:
                self.gallery.refresh()
            if self.follower is not None and self.follower.due():
                await run_in_threadpool(self.follower.refresh)  # (a snapshot's lists are computed as it opens)
        await self.app(scope, receive, send)


class IndexFollower:
    """The search pages (search, browse, concepts) of an index still building follow its
    folder: before a request, at most once per ``every`` seconds and only when the folder's
    snapshot or committed index is newer than the one served (two ``stat`` calls), that one is
    opened (:meth:`convscope.index.Index.open` with ``building=True``) and served from then on.
    Following ends once the folder's committed index is served and ``until()`` (default: at
    once) is true. Meanwhile an index served from elsewhere (an empty one, before the build's
    first snapshot) shows the line ``waiting``."""

    def __init__(self, groups: list, every: float = 2.0):
        self.groups, self.every = groups, every
        self.folder: Path | None = None
        self.until: Callable[[], bool] | None = None
        self._seen = None
        self._next = 0.0
        self._final = False
        self._lock = threading.Lock()

    def follow(self, folder: str | os.PathLike, until: Callable[[], bool] | None = None,
               waiting: str | None = None) -> None:
        with self._lock:
            self.folder, self.until, self._seen, self._next, self._final = Path(folder), until, None, 0.0, False
        for group in self.groups:
            if isinstance(group, SearchPages):
                group.waiting = waiting

    def due(self) -> bool:
        return self.folder is not None and time.monotonic() >= self._next

    def _stamp(self, folder: Path):
        from ..index.store import DB_NAME, SNAPSHOT_NAME
        from ..stores import PARTIAL

        def stat(path):
            try:
                st = path.stat()
                return st.st_ino, st.st_mtime_ns
            except OSError:
                return None

        return stat(folder / DB_NAME), stat(folder / PARTIAL / SNAPSHOT_NAME)

    def refresh(self) -> bool:
        """Serve the folder's newest snapshot or its committed index when it is newer than the
        one served; True when it changed. A request under way ends on the one it began with."""
        from ..index import Index

        if not self._lock.acquire(blocking=False):  # another request is opening it
            return False
        try:
            folder = self.folder
            if folder is None:
                return False
            self._next = time.monotonic() + self.every
            stamp = self._stamp(folder)
            changed = stamp != self._seen
            if changed:
                try:
                    index = Index.open(folder, building=True)
                except ConvscopeError:  # nothing there yet, or between the last snapshot and the commit
                    return False
                self._seen, self._final = stamp, index.building is None
                reopen_groups(self.groups, index)
            if self._final and (self.until is None or self.until()):
                self.folder = None  # finished: served as any index from now on
            return changed
        finally:
            self._lock.release()


def open_index(index):
    """An open index from a folder (via :meth:`convscope.index.Index.open`; a build in progress
    that publishes snapshots: its latest one) or an index object."""
    if isinstance(index, (str, os.PathLike)):
        from ..index import Index

        return Index.open(index, building=True)
    return index


def create_app(
    atlas_dir=None,
    model=None,
    *,
    index=None,
    pages: Iterable[Callable[[Site], PageGroup]] = (),
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    upload_dir: str | os.PathLike | None = None,
    keep_uploads: int = 200,
    allowed_hosts: Iterable[str] = (),
    body_timeout: float = BODY_TIMEOUT,
    max_decode_bytes: int | None = None,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    decode_concurrency: int = DECODE_CONCURRENCY,
    upload_concurrency: int = UPLOAD_CONCURRENCY,
    fill: bool | dict = True,
    fill_queue: int = MAX_QUEUE,
    secret: Secret | str | None = None,
    watch: float | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Starlette:
    """A Starlette app serving the gallery of the atlas in ``atlas_dir``, the search pages of
    ``index``, or both (one of them at least).

    ``atlas_dir`` is an atlas folder or an already open atlas; ``index`` an index folder or an
    open :class:`~convscope.index.Index`. With an index every page has a search box, and
    ``/search``, ``/duplicates`` and ``/albums`` are there (docs/search.md); without an atlas
    ``/`` is the search page and the atlas's pages answer 404 with the reason. ``pages``: more
    page groups, each made by calling it with the app's :class:`~convscope.web.site.Site`.

    ``model`` (a :class:`~convscope.models.LoadedModel`) analyses uploads; by default the
    atlas's own model is loaded on the first upload. The index's pictures of why use ``model``
    when it is the index's model, else the index's own (:class:`~convscope.web.search_pages.SearchPages`). Uploads are
    limited to ``max_upload_bytes`` and kept, newest ``keep_uploads`` only, in ``upload_dir``
    (default: a private temporary folder).

    The app answers to the loopback names, the address a connection came in on and
    ``allowed_hosts`` (more names; ``"*"`` for any), and takes uploads and other writes only
    from its own pages. With ``secret`` (a :class:`~convscope.web.security.Secret`, or its
    text) every request must give it (``/login``, or ``?token=``) or hold the cookie it earns;
    :func:`~convscope.web.serve` sets one on an app it serves beyond loopback. An upload body must arrive within ``body_timeout`` seconds (else 408);
    at most ``upload_concurrency`` uploads are received at once (more wait), at most
    ``decode_concurrency`` decoded at once, each refused with 413 when it has more than
    ``max_pixels`` pixels or would take more than ``max_decode_bytes`` bytes to decode (default:
    :data:`~convscope.web.upload_pages.MAX_DECODE_BYTES`, widened by as much as
    ``max_upload_bytes`` exceeds its default, since the file is held while it is decoded).

    ``fill``: unit pages compute the projections and feature visualization their atlas lacks
    when they are opened (:mod:`convscope.web.fill_pages`), on the model thread, at most
    ``fill_queue`` units waiting, written into the atlas; a dict gives the feature
    visualizations' settings (``{"steps": 128, "size": 96}``; default ``featvis --atlas``'s),
    ``{"featvis": False}`` fills projections only, False turns it off (a read-only atlas).

    >>> from starlette.testclient import TestClient
    ``watch``: keep the index up to date while the app runs (:func:`convscope.index.watch.watch`,
    ``watch`` its settle seconds), on a thread of its own, with the index's model: each update is
    served from its commit on, the files it added listed on the search home. ``on_note(line)``
    hears a line per update, per file it skips, and why it stopped (else the log).

    >>> client = TestClient(create_app("atlas/"))
    >>> client.get("/api/atlas").json()["layers"][0]["name"]
    'conv1'
    >>> TestClient(create_app(index="photos.index")).get("/api/search?q=cat").json()["results"][0]["why"]
    """
    if int(decode_concurrency) < 1:
        raise ValueError(f"decode_concurrency must be at least 1, got {decode_concurrency}")
    if max_decode_bytes is None:
        max_decode_bytes = MAX_DECODE_BYTES + max(0, max_upload_bytes - MAX_UPLOAD_BYTES)
    limits = UploadLimits(max_upload_bytes=max_upload_bytes, max_decode_bytes=max_decode_bytes, max_pixels=max_pixels,
                          body_timeout=body_timeout, concurrency=upload_concurrency)
    pages = list(pages)
    if atlas_dir is None and index is None and not pages:
        raise ValueError("create_app needs something to serve: an atlas (atlas_dir), an index (index=), or both")
    gallery = Gallery(open_atlas(atlas_dir), atlas_dir if isinstance(atlas_dir, (str, os.PathLike)) else None) \
        if atlas_dir is not None else None
    env = environment()
    analyzer = Analyzer(gallery, model) if gallery is not None else None
    hosts = AllowedHosts(allowed_hosts)
    login = Login()
    if secret is not None:
        login.require(secret)
    workers = Workers(decoders=decode_concurrency)

    def page(template: str, status: int = 200, **data) -> HTMLResponse:
        if gallery is not None:
            data.setdefault("building", gallery.building_line())
        return HTMLResponse(render(env, template, site.links, site=site, **data), status_code=status)

    site = Site(page=page, workers=workers, uploads=gallery is not None,
                home_label="the atlas" if gallery is not None else "search",
                model=(lambda: analyzer.model) if analyzer is not None else None,
                model_record=gallery.info.get("model") if gallery is not None else None,
                fill=gallery is not None and fill is not False)
    store = UploadStore(upload_dir, keep=keep_uploads) if gallery is not None else None
    makers: list[Callable[[Site], PageGroup]] = []
    if gallery is not None:
        makers += [lambda site: AtlasPages(site, gallery), lambda site: UploadPages(site, analyzer, store, limits),
                   lambda site: HealthPages(site, gallery.atlas, model)]
    if site.fill:
        settings = dict(fill) if isinstance(fill, dict) else {}
        featvis = False if settings.pop("featvis", True) is False else (settings or True)
        makers.append(lambda site: FillPages(site, gallery, site.model, featvis=featvis, max_queue=fill_queue))
    if index is not None:
        opened = open_index(index)
        makers += [lambda site: SearchPages(site, opened, model), lambda site: BrowsePages(site, opened),
                   lambda site: ConceptPages(site, opened, model)]
    groups = [make(site) for make in makers + pages]
    if watch is not None and index is None:
        raise ValueError("watch keeps an index up to date: give the index (index=)")
    live = [g for g in groups if isinstance(g, (SearchPages, BrowsePages, ConceptPages))]
    follower = _Follower(live, watch, on_note or logger.info) if watch is not None else None
    following = IndexFollower(live) if live else None
    if following is not None and isinstance(index, (str, os.PathLike)) and live[0].index.building is not None:
        following.follow(index)  # an index still building: its snapshots, then the finished index
    for group in groups:
        site.nav.extend(group.nav)
        site.search = site.search or group.search

    async def api_index(request: Request):
        entries = {}
        for group in groups:
            entries.update(group.api)
        entries["docs"] = "docs/api.md, docs/search.md"
        return JSONResponse(entries)

    async def on_error(request: Request, exc: Exception):
        status, reason = error_status(exc)
        return error_response(page, request, status, reason, error_headers(exc))

    async def on_aborted(request: Request, exc: UploadAborted):
        logger.info("%s", exc)  # one line: the client is gone, and so is its answer
        return Response(status_code=400)

    home = next((g.home for g in groups if g.home is not None), None)
    routes = ([Route("/", home)] if home is not None else []) + [Route("/api", api_index)]
    for group in groups:
        routes += group.routes()
    present = {group.absent for group in groups}
    for kind in GROUPS:
        if kind.absent is not None and kind.absent not in present:
            routes += kind.absent.routes()
    routes.append(Mount("/static", StaticFiles(directory=str(STATIC)), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if follower is not None:
            follower.start()
        try:
            yield
        finally:
            if follower is not None:
                follower.stop()
            workers.close()

    def refuse(scope, status: int, reason: str):
        return error_response(page, Request(scope), status, reason)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            *([Middleware(FollowBuild, gallery=gallery, follower=following)]
              if gallery is not None or following is not None else []),
            Middleware(SecurityHeaders),
            Middleware(HostAndOrigin, allowed=hosts, respond=refuse),
            Middleware(LoginRequired, login=login, respond=refuse,
                       page=lambda status, **data: page("login.html", status=status, **data)),
        ],
        exception_handlers={HTTPException: on_error, ConvscopeError: on_error, ValueError: on_error,
                            UploadAborted: on_aborted, Exception: on_error},
    )

    app.state.gallery = gallery
    app.state.store = store
    app.state.analyzer = analyzer
    app.state.groups = groups
    app.state.site = site
    app.state.allowed_hosts = hosts
    app.state.login = login
    app.state.follower = follower
    app.state.following = following
    return app


def reopen_groups(groups: Iterable, index) -> None:
    """Serve the open ``index`` on every one of ``groups`` that searches one, from now on."""
    for group in groups:
        if isinstance(group, (SearchPages, BrowsePages, ConceptPages)):
            group.reopen(index)


def reopen_index(app, folder: str | os.PathLike) -> None:
    """Serve the index in ``folder`` (a newer version, or the one a build just finished) on every
    page of ``app`` that searches one, from now on."""
    from ..index import Index

    reopen_groups(app.state.groups, Index.open(folder))


def follow_index(app, folder: str | os.PathLike, until: Callable[[], bool] | None = None,
                 waiting: str | None = None) -> None:
    """Let the search pages of ``app`` (made with an index) follow the build in ``folder``: its
    snapshots as they come (:class:`IndexFollower`), then its finished index, until ``until()``;
    until the first snapshot the pages say ``waiting``.

    >>> follow_index(app, "demo/index", until=build.index_done.is_set)"""
    if app.state.following is None:
        raise ValueError("follow_index needs an app made with an index (create_app(index=...))")
    app.state.following.follow(folder, until, waiting)


class _Follower:
    """The thread that keeps the app's index up to date (``create_app(watch=...)``)."""

    def __init__(self, live: list, settle: float, say: Callable[[str], None]):
        self.live, self.settle, self.say = live, settle, say
        self.pages = next(g for g in live if isinstance(g, SearchPages))
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, name="convscope-watch", daemon=True)
        self.rounds = 0  # updates served so far

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(timeout=30)

    def _reopen(self, done) -> None:
        from ..index import Index

        reopen_groups(self.live, Index.open(self.pages.index.root))
        self.rounds += 1
        self.say(done.line())

    def _run(self) -> None:
        from ..index.watch import watch

        index = self.pages.index
        try:
            watch(self.pages.model(), index.meta["inputs"], index.root, settle=self.settle, stop=self.halt,
                  on_change=self._reopen, on_skip=lambda path, reason: self.say(f"skipped {path}: {reason}"),
                  on_note=self.say)
        except (ConvscopeError, ValueError, OSError) as exc:
            self.say(f"the index is no longer kept up to date: {exc}")
