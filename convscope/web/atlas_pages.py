"""The pages of one atlas: the home page (its layers), a page per layer, unit and top example,
their JSON twins under ``/api``, the atlas's images and the source photos of its examples.

:class:`AtlasPages` is a page group (:class:`convscope.web.site.PageGroup`); the data of each
page comes from :class:`convscope.web.gallery.Gallery` (the static export renders the same
dicts). Of the atlas folder only its images are served (:func:`~convscope.web.common.confined_image`);
a source photo is read where the atlas recorded it, decoded on a decode thread and sent as JPEG.

>>> pages = AtlasPages(site, Gallery(Atlas.open("atlas/")))
>>> app = Starlette(routes=[Route("/", pages.home), *pages.routes()])
"""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import ImageError
from .common import NotFound, jpeg, parse_number
from .gallery import Gallery
from .site import Absent, Site

#: How long a browser may keep an atlas image or a source photo, in seconds.
CACHE = "public, max-age=600"


class AtlasPages:
    """The page group of one atlas (see the module's docstring); ``home`` is the page ``/``
    shows."""

    search = None
    nav = ()
    absent = Absent(("/api/atlas", "/layers/{rest:path}", "/api/layers/{rest:path}", "/sources/{rest:path}",
                     "/atlas/{rest:path}"),
                    "this server has no atlas (it was started without one), so it has no layer, unit or upload pages; "
                    "start from /")
    api = {
        "atlas": "/api/atlas",
        "layer": "/api/layers/{layer}",
        "unit": "/api/layers/{layer}/units/{unit}",
        "example": "/api/layers/{layer}/units/{unit}/examples/{rank}",
    }

    def __init__(self, site: Site, gallery: Gallery):
        self.site = site
        self.gallery = gallery

    def routes(self) -> list[Route]:
        return [
            Route("/api/atlas", self.api_home),
            Route("/layers/{layer}", self.layer),
            Route("/api/layers/{layer}", self.api_layer),
            Route("/layers/{layer}/units/{unit}", self.unit),
            Route("/api/layers/{layer}/units/{unit}", self.api_unit),
            Route("/layers/{layer}/units/{unit}/examples/{rank}", self.example),
            Route("/api/layers/{layer}/units/{unit}/examples/{rank}", self.api_example),
            Route("/sources/{layer}/{unit}/{rank}.jpg", self.source),
            Route("/atlas/{path:path}", self.atlas_file),
        ]

    # ------------------------------------------------------------------ data

    def _previews(self) -> dict:
        return {layer: self.gallery.layer(layer)["units"][:12] for layer in self.gallery.layer_names}

    def _unit(self, request: Request) -> dict:
        p = request.path_params
        self.gallery.check_layer(p["layer"])
        return self.gallery.unit(p["layer"], parse_number(p["unit"]))

    def _example(self, request: Request) -> dict:
        p = request.path_params
        self.gallery.check_layer(p["layer"])
        return self.gallery.example(p["layer"], parse_number(p["unit"]), parse_number(p["rank"], "rank"))

    # ------------------------------------------------------------------ pages and their JSON

    async def home(self, request: Request):
        data, previews = await run_in_threadpool(lambda: (self.gallery.home(), self._previews()))
        return self.site.page("home.html", atlas=data, previews=previews)

    async def api_home(self, request: Request):
        return JSONResponse(await run_in_threadpool(self.gallery.home))

    async def layer(self, request: Request):
        data = await run_in_threadpool(self.gallery.layer, request.path_params["layer"])
        return self.site.page("layer.html", page=data, total=len(self.gallery.layer_names))

    async def api_layer(self, request: Request):
        return JSONResponse(await run_in_threadpool(self.gallery.layer, request.path_params["layer"]))

    async def unit(self, request: Request):
        return self.site.page("unit.html", page=await run_in_threadpool(self._unit, request))

    async def api_unit(self, request: Request):
        return JSONResponse(await run_in_threadpool(self._unit, request))

    async def example(self, request: Request):
        return self.site.page("example.html", page=await run_in_threadpool(self._example, request))

    async def api_example(self, request: Request):
        return JSONResponse(await run_in_threadpool(self._example, request))

    # ------------------------------------------------------------------ files

    async def atlas_file(self, request: Request):
        path, media_type = await run_in_threadpool(self.gallery.image_file, request.path_params["path"])
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": CACHE})

    async def source(self, request: Request):
        p, workers = request.path_params, self.site.workers
        self.gallery.check_layer(p["layer"])
        unit, rank = parse_number(p["unit"]), parse_number(p["rank"], "rank")
        try:
            async with workers.job():
                data = await workers.decode(lambda: jpeg(self.gallery.source_image(p["layer"], unit, rank)[0]))
        except ImageError as exc:
            raise NotFound(f"the source image can no longer be read ({exc.reason})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": CACHE})
