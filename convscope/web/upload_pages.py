"""The upload pages: ``/image`` (a form, and the result of posting a photo to it),
``POST /api/image`` (the same as JSON) and the pictures each upload made (``/uploads/...``).

:class:`UploadPages` is a page group (:class:`convscope.web.site.PageGroup`). A body is read
within a byte limit and a time limit, at most ``concurrency`` at once (more wait, their bodies
unread); its image is decoded by :func:`convscope.data.load_image_bytes` on a decode thread,
within :class:`UploadLimits`' byte and pixel budget (data's exact cost: mode, bit depth,
progressive JPEG coefficients, the upright copy, the file itself) at the scale the model needs;
the model (:class:`~convscope.web.upload.Analyzer`) runs on the model thread, and what it made
is kept under a random name (:class:`~convscope.web.upload.UploadStore`).

>>> pages = UploadPages(site, Analyzer(gallery), UploadStore(), UploadLimits(max_upload_bytes=8 << 20))
"""
from __future__ import annotations

import dataclasses

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from ..data import load_image_bytes
from ..errors import ConvscopeError
from .common import NotFound, error_headers, error_status
from .site import Absent, Site
from .upload import (MAX_UPLOAD_BYTES, Analyzer, BadUpload, UploadAborted, UploadStore, UploadTimeout,
                     UploadTooLarge)

#: Largest upload, in pixels (width x height), whatever the format.
MAX_UPLOAD_PIXELS = 40_000_000
#: The largest decode of one upload, in bytes of memory (:func:`convscope.data.decode_cost`, the
#: file counted): room for every 8-bit photo of :data:`MAX_UPLOAD_PIXELS`, RGB or RGBA (Pillow
#: holds both in 4 bytes a pixel: 160 MB), with its file up to the default 12 MB and the copy
#: reduced to the model's scale. 16-bit and WebP images take more a pixel, and fit fewer.
MAX_DECODE_BYTES = 192 * 1024 * 1024
#: Seconds a client has to send a whole upload body.
BODY_TIMEOUT = 60.0
#: Uploads received and decoded at once; more wait their turn, their bodies unread.
UPLOAD_CONCURRENCY = 8


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost: ``max_upload_bytes`` of body, sent within ``body_timeout``
    seconds, decoded within ``max_decode_bytes`` of memory and ``max_pixels``; ``concurrency``
    uploads received and decoded at once."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_decode_bytes: int = MAX_DECODE_BYTES
    max_pixels: int = MAX_UPLOAD_PIXELS
    body_timeout: float = BODY_TIMEOUT
    concurrency: int = UPLOAD_CONCURRENCY

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_decode_bytes", "max_pixels", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be a positive number of seconds, got {self.body_timeout}")


class UploadPages:
    """The upload page group of one atlas (see the module's docstring)."""

    search = None
    home = None
    nav = ()
    absent = Absent(("/uploads/{rest:path}", "/image", "/api/image"),
                    "this server has no atlas (it was started without one), so it has no upload pages; start from /")
    api = {"image": "POST /api/image (multipart field 'image', or the raw image as the body)"}

    def __init__(self, site: Site, analyzer: Analyzer, store: UploadStore, limits: UploadLimits = UploadLimits()):
        self.site = site
        self.analyzer = analyzer
        self.store = store
        self.limits = limits
        self.receiving = anyio.Semaphore(limits.concurrency)

    def routes(self) -> list[Route]:
        return [
            Route("/uploads/{token}/{name}", self.upload_file),
            Route("/image", self.image_page, methods=["GET"]),
            Route("/image", self.image_post, methods=["POST"]),
            Route("/api/image", self.api_image, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ receiving

    async def read_body(self, request: Request) -> bytes:
        """The request body, refused past ``max_upload_bytes`` before it is all read and past
        ``body_timeout`` seconds; :class:`UploadAborted` when the client goes away meanwhile."""
        limit, timeout = self.limits.max_upload_bytes, self.limits.body_timeout
        declared = request.headers.get("content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BadUpload("the Content-Length header is not a number") from None
            if size > limit:
                raise UploadTooLarge(_too_large(size, limit))
        chunks, received = [], 0
        try:
            with anyio.fail_after(timeout):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise UploadTooLarge(_too_large(None, limit))
                    chunks.append(chunk)
        except TimeoutError:
            raise UploadTimeout(f"the upload did not arrive within {timeout:g} s "
                                f"({received:,} bytes came); try again on a faster connection") from None
        except ClientDisconnect:
            client = request.client
            who = f"{client[0]}:{client[1]}" if client else "the client"
            total = f" of {size:,}" if size is not None else ""
            raise UploadAborted(f"upload aborted by {who} after {received:,}{total} bytes") from None
        return b"".join(chunks)

    async def read_upload(self, request: Request, explain_default: bool) -> tuple[bytes, bool]:
        """The image bytes of a multipart form (field ``image``) or a raw body (see
        :meth:`read_body`); and whether explanations were asked for (``explain`` in the query
        or the form, else ``explain_default``)."""
        body = await self.read_body(request)
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

    # ------------------------------------------------------------------ the work

    def decode(self, data: bytes):
        if not data:
            raise BadUpload("the upload is empty; choose an image file")
        return load_image_bytes(data, "upload", max_pixels=self.limits.max_pixels,
                                max_bytes=self.limits.max_decode_bytes, target_size=self.analyzer.min_side)

    def analyze_and_store(self, image, explain: bool) -> tuple[str, dict, set[str]]:
        result = self.analyzer.analyze(image, explain)
        images = result.pop("images")
        token = self.store.create()
        for name, img in images.items():
            self.store.save(token, name, img)
        return token, result, set(images)

    async def analyze(self, request: Request, explain_default: bool) -> dict:
        workers = self.site.workers
        async with workers.job():
            async with self.receiving:  # bodies being received and decoded at once: bounded
                data, explain = await self.read_upload(request, explain_default)
                image = await workers.decode(self.decode, data, request=request)
                del data  # only the decoded image waits for the model
            token, result, stored = await workers.model(self.analyze_and_store, image, explain, request=request)
        result["id"] = token
        result["image"] = self.site.links.uploaded(token, "input.png")
        for name, entry in result["explanations"].items():
            if f"{name}.png" in stored:
                entry["url"] = self.site.links.uploaded(token, f"{name}.png")
        return result

    # ------------------------------------------------------------------ endpoints

    def _page(self, status: int = 200, result=None, error=None):
        return self.site.page("image.html", status=status, result=result, error=error,
                              max_mb=self.limits.max_upload_bytes // (1024 * 1024))

    async def image_page(self, request: Request):
        return self._page()

    async def image_post(self, request: Request):
        try:
            result = await self.analyze(request, explain_default=False)  # an unticked box sends nothing
        except (ConvscopeError, HTTPException) as exc:
            status, reason = error_status(exc)
            response = self._page(status, error=reason)
            response.headers.update(error_headers(exc))  # a full queue's Retry-After
            return response
        return self._page(result=result)

    async def api_image(self, request: Request):
        return JSONResponse(await self.analyze(request, explain_default=True))

    async def upload_file(self, request: Request):
        try:
            path = self.store.path(request.path_params["token"], request.path_params["name"])
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


def _too_large(size: int | None, limit: int) -> str:
    got = f" ({size / 1e6:.1f} MB)" if size is not None else ""
    return f"the upload is too large{got}; the limit is {limit / 1e6:.1f} MB"
