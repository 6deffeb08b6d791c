"""The gallery computes what a unit page lacks when the page asks: its examples' projections
and its feature visualization (:mod:`convscope.atlas.fill`), queued on the one model thread and
written into the atlas, the page's grey tiles swapped for the pictures when they are ready.

``POST /api/layers/{layer}/units/{unit}/fill`` asks for it (from the gallery's own pages only,
like uploads) and answers at once: ``{"status": "done" | "queued" | "running" | "error", ...}``;
``GET`` of the same URL says how it stands without asking (``"missing"`` when nothing was
asked and something lacks). Requests for a unit already waiting or running join it; at most
``max_queue`` units wait, more are refused with 503 and the reason. When a unit is done the
answer (and every answer before, for the pictures ready so far) holds ``files``: for each tile (``"featvis"``, ``"<rank>:<method>"``) the URL of
its picture. A failure is one line (``error``), and the next request tries again.

>>> group = FillPages(site, gallery, lambda: analyzer.model, featvis={"steps": 128, "size": 96})
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..atlas.fill import lacking
from ..errors import ConvscopeError
from .common import NotFound
from .gallery import Gallery
from .site import Site

#: Units waiting or running at once; more are refused with 503.
MAX_QUEUE = 64
logger = logging.getLogger("convscope.web")


class FillBusy(ConvscopeError):
    status = 503


class FillPages:
    """The fill endpoint of one atlas (see the module's docstring). ``gallery``: the app's
    :class:`~convscope.web.gallery.Gallery`; ``model``: a loader of the atlas's model, called
    on the model thread when the first fill runs (the upload analyzer's, so one copy serves
    both); ``featvis``: feature-visualization settings (:data:`convscope.atlas.fill.FEATVIS`'s
    keys) or False for none."""

    search = None
    home = None
    nav = ()
    absent = None  # its URL is under the atlas's pages, which a server without an atlas says it lacks

    def __init__(self, site: Site, gallery: Gallery, model: Callable, featvis: dict | bool = True,
                 max_queue: int = MAX_QUEUE):
        if int(max_queue) < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.site = site
        self.gallery = gallery
        self.load_model = model
        self.featvis = featvis
        self.max_queue = int(max_queue)
        self.api = {"fill": "POST /api/layers/{layer}/units/{unit}/fill (GET: how it stands)"}
        self.links = site.links
        self._filler = None
        self._tasks: dict[tuple[str, int], asyncio.Task] = {}
        self._state: dict[tuple[str, int], dict] = {}
        self.runs = 0  # fills that computed something (the tests count them)

    def routes(self) -> list[Route]:
        return [Route("/api/layers/{layer}/units/{unit}/fill", self.endpoint, methods=["GET", "POST"])]

    # ------------------------------------------------------------------ the work, on the model thread

    def _fill(self, layer: str, unit: int) -> dict:
        if self._filler is None:
            from ..atlas.fill import Filler

            self._filler = Filler(self.gallery.atlas, self.load_model(), self.featvis)
        done = self._filler.fill(layer, unit, on_projections=lambda: self.gallery.forget(layer, unit))
        self.gallery.forget(layer, unit)
        if done["projections"] or done["featvis"]:
            self.runs += 1
        return done

    async def _run(self, key: tuple[str, int]) -> None:
        self._state[key] = {"status": "running"}
        try:
            async with self.site.workers.job():
                done = await self.site.workers.model(self._fill, *key)
            self._state[key] = {"status": "done", "seconds": done["seconds"]}
        except ConvscopeError as exc:
            self._state[key] = {"status": "error", "error": str(exc).splitlines()[0]}
        except Exception as exc:  # noqa: BLE001 - a page waits for an answer, the log gets the rest
            logger.exception("filling unit %s of %r failed", key[1], key[0])
            self._state[key] = {"status": "error", "error": f"internal error ({type(exc).__name__}); the server log "
                                                            "has the details"}
        finally:
            self._tasks.pop(key, None)

    # ------------------------------------------------------------------ the endpoint

    def _missing(self, page: dict) -> dict:
        return lacking(page["missing"], self.featvis is not False)

    def _files(self, page: dict) -> dict:
        files = {}
        if page["featvis"]:
            files["featvis"] = self.links.atlas_file(page["featvis"])
        for ex in page["examples"]:
            for m in page["methods"]:
                if ex[m]:
                    files[f"{ex['rank']}:{m}"] = self.links.atlas_file(ex[m])
        return files

    async def endpoint(self, request: Request):
        layer = request.path_params["layer"]
        self.gallery.check_layer(layer)
        text = request.path_params["unit"]
        if not text.isdigit():
            raise NotFound(f"unit must be a whole number from 0, got {text[:40]!r}")
        unit = int(text)
        self.gallery.check_unit(layer, unit)
        key = (layer, unit)
        # one read of the unit's page, off the event loop (a poll may meet the model thread's write)
        page = await run_in_threadpool(self.gallery.unit, layer, unit)
        missing = self._missing(page)
        state = self._state.get(key)
        if key in self._tasks:
            answer = {"status": "queued" if state is None else state["status"]}
        elif not missing["any"]:
            answer = {"status": "done"}
        elif state is not None and state["status"] == "error" and request.method == "GET":
            answer = dict(state)
        elif request.method == "GET":
            answer = {"status": "missing"}
        else:
            if len(self._tasks) >= self.max_queue:
                raise FillBusy(f"the server is computing {len(self._tasks)} units already (at most {self.max_queue} "
                               "wait); try again in a minute")
            self._state.pop(key, None)
            self._tasks[key] = asyncio.ensure_future(self._run(key))
            answer = {"status": "queued"}
        answer.update(layer=layer, unit=unit, missing=missing, queue=len(self._tasks))
        answer["files"] = self._files(page)  # those there so far: a page shows them as they come
        return JSONResponse(answer, status_code=202 if answer["status"] in ("queued", "running") else 200)


__all__ = ["FillPages", "MAX_QUEUE"]
