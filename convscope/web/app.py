"""The gallery web server: an app factory over one atlas, with an HTML page and a JSON endpoint
for each view (see docs/api.md).

No global state: everything an app needs (the atlas, the model, the upload folder) lives on the
app made by :func:`create_app`. Bad requests get a 4xx status with a one-line reason, as JSON on
``/api/...`` and as a page elsewhere; no URL can reach a file outside the atlas, the package's
static folder or the server's own upload folder.

>>> app = create_app("atlas/")
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConvscopeError, ImageError
from .gallery import Gallery, NotFound
from .render import STATIC, Links, environment, render
from .upload import MAX_UPLOAD_BYTES, Analyzer, BadUpload, UploadStore, UploadTooLarge

#: Atlas files the server hands out: images only.
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def open_atlas(atlas):
    """An open atlas from a folder (via :meth:`convscope.atlas.Atlas.open`) or an atlas object."""
    if isinstance(atlas, (str, os.PathLike)):
        from ..atlas import Atlas

        return Atlas.open(atlas)
    return atlas


def create_app(
    atlas_dir,
    model=None,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    upload_dir: str | os.PathLike | None = None,
    keep_uploads: int = 200,
) -> Starlette:
    """A Starlette app serving the gallery of the atlas in ``atlas_dir``.

    ``atlas_dir`` is an atlas folder or an already open atlas. ``model`` (a
    :class:`~convscope.models.LoadedModel`) analyses uploads; by default the atlas's own model
    is loaded on the first upload. Uploads are limited to ``max_upload_bytes`` and kept, newest
    ``keep_uploads`` only, in ``upload_dir`` (default: a private temporary folder).

    >>> from starlette.testclient import TestClient
    >>> client = TestClient(create_app("atlas/"))
    >>> client.get("/api/atlas").json()["layers"][0]["name"]
    'conv1'
    """
    gallery = Gallery(open_atlas(atlas_dir))
    env = environment()
    links = Links()
    store = UploadStore(upload_dir, keep=keep_uploads)
    analyzer = Analyzer(gallery, model)

    def page(template: str, status: int = 200, **data) -> HTMLResponse:
        return HTMLResponse(render(env, template, links, **data), status_code=status)

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
        return JSONResponse({
            "atlas": "/api/atlas",
            "layer": "/api/layers/{layer}",
            "unit": "/api/layers/{layer}/units/{unit}",
            "example": "/api/layers/{layer}/units/{unit}/examples/{rank}",
            "image": "POST /api/image (multipart field 'image', or the raw image as the body)",
            "docs": "docs/api.md",
        })

    # ------------------------------------------------------------------ files

    async def atlas_file(request: Request):
        relative = request.path_params["path"]
        if Path(relative).suffix.lower() not in SERVED_SUFFIXES:
            raise NotFound(f"no such atlas image {relative!r}")
        path = await run_in_threadpool(gallery.file, relative)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=600"})

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
            data = await run_in_threadpool(encode)
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

    async def read_upload(request: Request, explain_default: bool) -> tuple[bytes, bool]:
        """The image bytes of a multipart form (field ``image``) or a raw body, refused past
        ``max_upload_bytes`` before it is all read; and whether explanations were asked for
        (``explain`` in the query or the form, else ``explain_default``)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadUpload("the Content-Length header is not a number") from None
            if size > max_upload_bytes:
                raise UploadTooLarge(_too_large(size, max_upload_bytes))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise UploadTooLarge(_too_large(None, max_upload_bytes))
        explain = request.query_params.get("explain")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            request._body = bytes(body)  # form() re-reads the cached body
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
        elif ctype.startswith("application/x-www-form-urlencoded"):
            raise BadUpload("send the image as multipart/form-data (field 'image') or as the raw request body")
        else:
            data = bytes(body)
        wanted = explain_default if explain is None else explain.lower() not in ("0", "false", "no", "off", "")
        return data, wanted

    async def analyze(request: Request, explain_default: bool) -> dict:
        data, explain = await read_upload(request, explain_default)
        token, image = await run_in_threadpool(store.ingest, data)
        result = await run_in_threadpool(analyzer.analyze, image, explain)
        images = result.pop("images")
        for name, img in images.items():
            await run_in_threadpool(store.save, token, name, img)
        result["id"] = token
        result["image"] = f"/uploads/{token}/input.png"
        for name, entry in result["explanations"].items():
            if f"{name}.png" in images:
                entry["url"] = f"/uploads/{token}/{name}.png"
        return result

    async def image_page(request: Request):
        return page("image.html", result=None, error=None, max_mb=max_upload_bytes // (1024 * 1024))

    async def image_post(request: Request):
        try:
            result = await analyze(request, explain_default=False)  # an unticked box sends nothing
        except (ConvscopeError, HTTPException) as exc:
            status, reason = _status(exc)
            return page("image.html", status=status, result=None, error=reason, max_mb=max_upload_bytes // (1024 * 1024))
        return page("image.html", result=result, error=None, max_mb=max_upload_bytes // (1024 * 1024))

    async def api_image(request: Request):
        return JSONResponse(await analyze(request, explain_default=True))

    # ------------------------------------------------------------------ errors

    def error_response(request: Request, status: int, reason: str) -> Response:
        if request.url.path.startswith("/api/") or request.url.path == "/api":
            return JSONResponse({"error": reason, "status": status}, status_code=status)
        titles = {400: "Bad request", 404: "Not found", 405: "Method not allowed", 413: "Too large", 503: "Unavailable"}
        return page("error.html", status=status, code=status, title=titles.get(status, "Error"), reason=reason)

    async def on_error(request: Request, exc: Exception):
        status, reason = _status(exc)
        return error_response(request, status, reason)

    routes = [
        Route("/", home),
        Route("/api", api_index),
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
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: on_error, ConvscopeError: on_error, ValueError: on_error, Exception: on_error},
    )

    app.state.gallery = gallery
    app.state.store = store
    app.state.analyzer = analyzer
    return app


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response that lacks them."""

    def __init__(self, app):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.headers if h[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _too_large(size: int | None, limit: int) -> str:
    got = f" ({size / 1e6:.1f} MB)" if size is not None else ""
    return f"the upload is too large{got}; the limit is {limit / 1e6:.1f} MB"


def _status(exc: Exception) -> tuple[int, str]:
    """The HTTP status and one-line reason for an exception raised while serving a request."""
    if isinstance(exc, HTTPException):
        reasons = {404: "no such page; start from / or see /api", 405: "this URL does not accept that method"}
        generic = not exc.detail or exc.detail in ("Not Found", "Method Not Allowed")
        return exc.status_code, reasons.get(exc.status_code, str(exc.detail)) if generic else exc.detail
    if isinstance(exc, ImageError):
        too_big = "too large" in exc.reason
        return (413 if too_big else 400), f"not a usable image: {exc.reason}"
    status = getattr(exc, "status", None)
    if isinstance(exc, ConvscopeError):
        return (status or 400), str(exc)
    if isinstance(exc, ValueError):
        return 400, str(exc).splitlines()[0] if str(exc) else "bad request"
    return 500, "internal error; the server log has the details"
