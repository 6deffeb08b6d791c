"""The gallery web server: an app factory over an atlas, an index or both, with an HTML page and
a JSON endpoint for each view (see docs/api.md and docs/search.md).

No global state: everything an app needs (the atlas, the index, the model, the upload folder)
lives on the app made by :func:`create_app`. The atlas's pages are routes here; every other
group of pages (the index's search pages, :mod:`convscope.web.search_pages`) is a page group
(:class:`convscope.web.site.PageGroup`) made with the app's :class:`~convscope.web.site.Site`.
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
import io
import logging
import os
import threading
from typing import Callable, Iterable

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConvscopeError, ImageError
from .decode import MAX_DECODE_BYTES, MAX_UPLOAD_PIXELS, DecodeBudget, decode_upload
from .evolve_pages import EvolvePages
from .fill_pages import MAX_QUEUE, FillPages
from .gallery import Gallery, NotFound
from .render import STATIC, Links, environment, render
from .search_pages import PATHS as SEARCH_PATHS, SearchPages
from .security import AllowedHosts, HostAndOrigin, SecurityHeaders
from .site import TITLES, PageGroup, Site, error_status, unavailable
from .upload import (MAX_UPLOAD_BYTES, Analyzer, BadUpload, ModelUnavailable, UploadAborted, UploadStore,
                     UploadTimeout, UploadTooLarge)
from .workers import Workers

#: Seconds a client has to send a whole upload body.
BODY_TIMEOUT = 60.0
#: Uploads decoded at once (each within ``max_decode_bytes``).
DECODE_CONCURRENCY = 2
#: Uploads received and decoded at once; more wait their turn, their bodies unread.
UPLOAD_CONCURRENCY = 8
logger = logging.getLogger("convscope.web")
#: The atlas's pages and files, which a server without an atlas answers with a reason.
ATLAS_PATHS = ("/api/atlas", "/layers/{rest:path}", "/api/layers/{rest:path}", "/sources/{rest:path}",
               "/atlas/{rest:path}", "/uploads/{rest:path}", "/image", "/api/image")


def open_atlas(atlas):
    """An open atlas from a folder (via :meth:`convscope.atlas.Atlas.open`) or an atlas object."""
    if isinstance(atlas, (str, os.PathLike)):
        from ..atlas import Atlas

        return Atlas.open(atlas)
    return atlas


def open_index(index):
    """An open index from a folder (via :meth:`convscope.index.Index.open`) or an index object."""
    if isinstance(index, (str, os.PathLike)):
        from ..index import Index

        return Index.open(index)
    return index


def index_model(index, model=None, analyzer: Analyzer | None = None) -> Callable:
    """A loader of the model an index was built with, loaded on first call, from the first of
    these with the index's weights: ``model``; the atlas's model (``analyzer``'s, so that one
    copy serves both) when the atlas names the same spec; the index's spec made again with its
    seeded random weights and its preprocessing, when it was built with random weights; the
    index's spec loaded with its pretrained weights. :class:`ModelUnavailable` (503) when none
    can be loaded."""
    lock = threading.Lock()
    loaded = []
    own = index.meta["model"]

    def candidates():
        if model is not None:
            yield "the model given", lambda: model
        if analyzer is not None and (analyzer.gallery.info.get("model") or {}).get("spec") == own["spec"]:
            yield "the atlas's model", lambda: analyzer.model
        if str(own.get("weights") or "").startswith("random"):
            from ..models import Preprocessing, load_model

            prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in index.meta["preprocessing"].items()})
            yield "its random weights", lambda: load_model(own["spec"], device="cpu", pretrained=False,
                                                           preprocessing=prep)

    def pick():
        for what, make in candidates():
            try:
                return index.checked_model(make())  # the fingerprint of its weights must be the index's
            except ConvscopeError as exc:
                logger.info("the index's pictures of why do not use %s (%s)", what, exc)
        try:
            return index.checked_model(None)
        except ConvscopeError as exc:
            raise ModelUnavailable(f"the model of this index cannot be loaded: {exc}") from None

    def load():
        with lock:
            if not loaded:
                loaded.append(pick())
            return loaded[0]

    return load


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
    max_decode_bytes: int = MAX_DECODE_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    decode_concurrency: int = DECODE_CONCURRENCY,
    upload_concurrency: int = UPLOAD_CONCURRENCY,
    fill: bool | dict = True,
    fill_queue: int = MAX_QUEUE,
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
    when it is the index's model, else the index's own (:func:`index_model`). Uploads are
    limited to ``max_upload_bytes`` and kept, newest ``keep_uploads`` only, in ``upload_dir``
    (default: a private temporary folder).

    The app answers to the loopback names, the address a connection came in on and
    ``allowed_hosts`` (more names; ``"*"`` for any), and takes uploads and other writes only
    from its own pages. An upload body must arrive within ``body_timeout`` seconds (else 408);
    at most ``upload_concurrency`` uploads are received at once (more wait), at most
    ``decode_concurrency`` decoded at once, each refused with 413 when it has more than
    ``max_pixels`` pixels or would take more than ``max_decode_bytes`` bytes to decode.

    ``fill``: unit pages compute the projections and feature visualization their atlas lacks
    when they are opened (:mod:`convscope.web.fill_pages`), on the model thread, at most
    ``fill_queue`` units waiting, written into the atlas; a dict gives the feature
    visualizations' settings (``{"steps": 128, "size": 96}``; default ``featvis --atlas``'s),
    ``{"featvis": False}`` fills projections only, False turns it off (a read-only atlas).

    >>> from starlette.testclient import TestClient
    >>> client = TestClient(create_app("atlas/"))
    >>> client.get("/api/atlas").json()["layers"][0]["name"]
    'conv1'
    >>> TestClient(create_app(index="photos.index")).get("/api/search?q=cat").json()["results"][0]["why"]
    """
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_decode_bytes", max_decode_bytes),
                        ("max_pixels", max_pixels), ("decode_concurrency", decode_concurrency),
                        ("upload_concurrency", upload_concurrency)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not body_timeout > 0:
        raise ValueError(f"body_timeout must be a positive number of seconds, got {body_timeout}")
    pages = list(pages)
    if atlas_dir is None and index is None and not pages:
        raise ValueError("create_app needs something to serve: an atlas (atlas_dir), an index (index=), or both")
    gallery = Gallery(open_atlas(atlas_dir)) if atlas_dir is not None else None
    env = environment()
    links = Links()
    store = UploadStore(upload_dir, keep=keep_uploads) if gallery is not None else None
    analyzer = Analyzer(gallery, model) if gallery is not None else None
    hosts = AllowedHosts(allowed_hosts)
    workers = Workers(decoders=decode_concurrency)
    receiving = anyio.Semaphore(upload_concurrency)

    def page(template: str, status: int = 200, **data) -> HTMLResponse:
        return HTMLResponse(render(env, template, links, site=site, **data), status_code=status)

    site = Site(page=page, workers=workers, uploads=gallery is not None,
                home_label="the atlas" if gallery is not None else "search",
                model=(lambda: analyzer.model) if analyzer is not None else None,
                fill=gallery is not None and fill is not False)
    groups: list[PageGroup] = []
    if site.fill:
        settings = dict(fill) if isinstance(fill, dict) else {}
        featvis = False if settings.pop("featvis", True) is False else (settings or True)
        groups.append(FillPages(site, gallery, site.model, featvis=featvis, max_queue=fill_queue))
    if index is not None:
        opened = open_index(index)
        groups.append(SearchPages(site, opened, index_model(opened, model, analyzer)))
    groups += [make(site) for make in pages]
    for group in groups:
        site.nav.extend(group.nav)
        site.search = site.search or group.search

    def parse_unit(text: str, what: str = "unit") -> int:
        try:
            value = int(text, 10)
        except (TypeError, ValueError):
            raise BadUpload(f"{what} must be a whole number, got {text[:40]!r}") from None
        if value < 0:
            raise NotFound(f"there is no {what} {value}; {what}s start at 0")
        return value

    # ------------------------------------------------------------------ pages and their JSON

    def home_data():
        return gallery.home()

    def home_previews():
        out = {}
        for layer in gallery.layer_names:
            out[layer] = gallery.layer(layer)["units"][:12]
        return out

    async def home(request: Request):
        data, previews = await run_in_threadpool(lambda: (home_data(), home_previews()))
        return page("home.html", atlas=data, previews=previews)

    async def api_home(request: Request):
        return JSONResponse(await run_in_threadpool(home_data))

    async def layer(request: Request):
        data = await run_in_threadpool(gallery.layer, request.path_params["layer"])
        return page("layer.html", page=data, total=len(gallery.layer_names))

    async def api_layer(request: Request):
        return JSONResponse(await run_in_threadpool(gallery.layer, request.path_params["layer"]))

    def _unit(request: Request) -> dict:
        gallery.check_layer(request.path_params["layer"])
        return gallery.unit(request.path_params["layer"], parse_unit(request.path_params["unit"]))

    async def unit(request: Request):
        return page("unit.html", page=await run_in_threadpool(_unit, request))

    async def api_unit(request: Request):
        return JSONResponse(await run_in_threadpool(_unit, request))

    def _example(request: Request) -> dict:
        p = request.path_params
        gallery.check_layer(p["layer"])
        return gallery.example(p["layer"], parse_unit(p["unit"]), parse_unit(p["rank"], "rank"))

    async def example(request: Request):
        return page("example.html", page=await run_in_threadpool(_example, request))

    async def api_example(request: Request):
        return JSONResponse(await run_in_threadpool(_example, request))

    async def api_index(request: Request):
        entries = {}
        if gallery is not None:
            entries.update({
                "atlas": "/api/atlas",
                "layer": "/api/layers/{layer}",
                "unit": "/api/layers/{layer}/units/{unit}",
                "example": "/api/layers/{layer}/units/{unit}/examples/{rank}",
                "image": "POST /api/image (multipart field 'image', or the raw image as the body)",
            })
        for group in groups:
            entries.update(group.api)
        entries["docs"] = "docs/api.md, docs/search.md"
        return JSONResponse(entries)

    # ------------------------------------------------------------------ files

    async def atlas_file(request: Request):
        path, media_type = await run_in_threadpool(gallery.image_file, request.path_params["path"])
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=600"})

    async def source(request: Request):
        p = request.path_params
        gallery.check_layer(p["layer"])
        unit_, rank = parse_unit(p["unit"]), parse_unit(p["rank"], "rank")

        def encode():
            img, _ = gallery.source_image(p["layer"], unit_, rank)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=88)
            return buf.getvalue()

        try:
            async with workers.job():
                data = await workers.decode(encode)
        except ImageError as exc:
            raise NotFound(f"the source image can no longer be read ({exc.reason})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=600"})

    async def upload_file(request: Request):
        try:
            path = store.path(request.path_params["token"], request.path_params["name"])
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    # ------------------------------------------------------------------ uploads

    async def read_body(request: Request) -> bytes:
        """The request body, refused past ``max_upload_bytes`` before it is all read and past
        ``body_timeout`` seconds; :class:`UploadAborted` when the client goes away meanwhile."""
        declared = request.headers.get("content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadUpload("the Content-Length header is not a number") from None
            if size > max_upload_bytes:
                raise UploadTooLarge(_too_large(size, max_upload_bytes))
        chunks, received = [], 0
        try:
            with anyio.fail_after(body_timeout):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > max_upload_bytes:
                        raise UploadTooLarge(_too_large(None, max_upload_bytes))
                    chunks.append(chunk)
        except TimeoutError:
            raise UploadTimeout(f"the upload did not arrive within {body_timeout:g} s "
                                f"({received:,} bytes came); try again on a faster connection") from None
        except ClientDisconnect:
            client = request.client
            who = f"{client[0]}:{client[1]}" if client else "the client"
            total = f" of {size:,}" if size is not None else ""
            raise UploadAborted(f"upload aborted by {who} after {received:,}{total} bytes") from None
        return b"".join(chunks)

    async def read_upload(request: Request, explain_default: bool) -> tuple[bytes, bool]:
        """The image bytes of a multipart form (field ``image``) or a raw body (see
        :func:`read_body`); and whether explanations were asked for (``explain`` in the query or
        the form, else ``explain_default``)."""
        body = await read_body(request)
        explain = request.query_params.get("explain")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            request._body = body  # form() re-reads the cached body
            try:
                form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
            except Exception as exc:  # malformed multipart, too many parts
                raise BadUpload(f"cannot read the form ({getattr(exc, 'detail', exc)})") from None
            try:
                field = form.get("image")
                if field is None or isinstance(field, str):
                    raise BadUpload("the form has no file in its 'image' field")
                data = await field.read()
                if explain is None and isinstance(form.get("explain"), str):
                    explain = form.get("explain")
            finally:
                await form.close()
                request._body = b""  # the raw form need not outlive the file it held
        elif ctype.startswith("application/x-www-form-urlencoded"):
            raise BadUpload("send the image as multipart/form-data (field 'image') or as the raw request body")
        else:
            data = body
        wanted = explain_default if explain is None else explain.lower() not in ("0", "false", "no", "off", "")
        return data, wanted

    def decode(data: bytes):
        if not data:
            raise BadUpload("the upload is empty; choose an image file")
        budget = DecodeBudget(max_bytes=max_decode_bytes, max_pixels=max_pixels, min_side=analyzer.min_side)
        return decode_upload(data, budget)

    def analyze_and_store(image, explain: bool) -> tuple[str, dict, set[str]]:
        result = analyzer.analyze(image, explain)
        images = result.pop("images")
        token = store.create()
        for name, img in images.items():
            store.save(token, name, img)
        return token, result, set(images)

    async def analyze(request: Request, explain_default: bool) -> dict:
        async with workers.job():
            async with receiving:  # bodies being received and decoded at once: bounded
                data, explain = await read_upload(request, explain_default)
                image = await workers.decode(decode, data)
                del data  # only the decoded image waits for the model
            token, result, stored = await workers.model(analyze_and_store, image, explain)
        result["id"] = token
        result["image"] = f"/uploads/{token}/input.png"
        for name, entry in result["explanations"].items():
            if f"{name}.png" in stored:
                entry["url"] = f"/uploads/{token}/{name}.png"
        return result

    async def image_page(request: Request):
        return page("image.html", result=None, error=None, max_mb=max_upload_bytes // (1024 * 1024))

    async def image_post(request: Request):
        try:
            result = await analyze(request, explain_default=False)  # an unticked box sends nothing
        except (ConvscopeError, HTTPException) as exc:
            status, reason = error_status(exc)
            return page("image.html", status=status, result=None, error=reason, max_mb=max_upload_bytes // (1024 * 1024))
        return page("image.html", result=result, error=None, max_mb=max_upload_bytes // (1024 * 1024))

    async def api_image(request: Request):
        return JSONResponse(await analyze(request, explain_default=True))

    # ------------------------------------------------------------------ errors

    def error_response(request: Request, status: int, reason: str) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/api":
            response = JSONResponse({"error": reason, "status": status}, status_code=status)
        else:
            response = page("error.html", status=status, code=status, title=TITLES.get(status, "Error"), reason=reason)
        if status == 408:  # the rest of a late body is not waited for
            response.headers["Connection"] = "close"
        return response

    async def on_error(request: Request, exc: Exception):
        status, reason = error_status(exc)
        return error_response(request, status, reason)

    async def on_aborted(request: Request, exc: UploadAborted):
        logger.info("%s", exc)  # one line: the client is gone, and so is its answer
        return Response(status_code=400)

    if gallery is not None:
        routes = [
            Route("/", home),
            Route("/api/atlas", api_home),
            Route("/layers/{layer}", layer),
            Route("/api/layers/{layer}", api_layer),
            Route("/layers/{layer}/units/{unit}", unit),
            Route("/api/layers/{layer}/units/{unit}", api_unit),
            Route("/layers/{layer}/units/{unit}/examples/{rank}", example),
            Route("/api/layers/{layer}/units/{unit}/examples/{rank}", api_example),
            Route("/sources/{layer}/{unit}/{rank}.jpg", source),
            Route("/atlas/{path:path}", atlas_file),
            Route("/uploads/{token}/{name}", upload_file),
            Route("/image", image_page, methods=["GET"]),
            Route("/image", image_post, methods=["POST"]),
            Route("/api/image", api_image, methods=["POST"]),
        ]
    else:
        start = next((g.home for g in groups if g.home is not None), None)
        routes = ([Route("/", start)] if start is not None else []) + unavailable(
            ATLAS_PATHS, "this server has no atlas (it was started without one), so it has no layer, unit or upload "
                         "pages; start from /")
    routes.append(Route("/api", api_index))
    for group in groups:
        routes += group.routes()
    if not any(isinstance(group, EvolvePages) for group in groups):
        routes += unavailable(("/evolve", "/api/evolve", "/evolve/{rest:path}", "/api/evolve/{rest:path}",
                               "/evolve-files/{rest:path}"), "this server has no evolve run; start it with --evolve RUN")
    if index is None:
        routes += unavailable(SEARCH_PATHS, "this server has no index (it was started without one), so it has no "
                                            "search, duplicates or albums pages; start from /")
    routes.append(Mount("/static", StaticFiles(directory=str(STATIC)), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            workers.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(HostAndOrigin, allowed=hosts, respond=lambda scope, status, reason: error_response(
                Request(scope), status, reason)),
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
    return app


def _too_large(size: int | None, limit: int) -> str:
    got = f" ({size / 1e6:.1f} MB)" if size is not None else ""
    return f"the upload is too large{got}; the limit is {limit / 1e6:.1f} MB"
