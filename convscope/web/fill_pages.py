"""The gallery computes what a unit page lacks when the page asks: its examples' projections
and its feature visualization (:mod:`convscope.atlas.fill`), one unit at a time in the model
thread's batch lane (:mod:`convscope.web.workers`: a person's requests go between its steps) and
written into the atlas, the page's grey tiles swapped for the pictures when they are ready.

``POST /api/layers/{layer}/units/{unit}/fill`` asks for it (from the gallery's own pages only,
like uploads) and answers at once: ``{"status": "done" | "queued" | "running" | "error", ...}``;
``GET`` of the same URL says how it stands without asking (``"missing"`` when nothing was
asked and something lacks). One unit is ``running``; the others are ``queued``, each with its
``place`` (1: the next to run). Requests for a unit already waiting or running join it; at most
``max_queue`` units wait or run, more are refused with 503, the reason and ``Retry-After``. When
a unit is done the answer (and every answer before, for the pictures ready so far) holds
``files``: for each tile (``"featvis"``, ``"<rank>:<method>"``) the URL of its picture. A failure
is one line (``error``), and the next request tries again. A unit that is not a whole number is
400.

The rest follows (:meth:`FillPages.cut_rest`, :func:`cut_in_background`; the demo starts it once
its atlas and index are built): every patch an atlas whose patches are cut on demand still lacks,
layer by layer from the first, photo by photo (each photo read once per layer), on a thread of its
own that hands the model thread one step at a time in the batch lane. A person's requests go
first: an interactive job between two photos (:attr:`Workers.pause`), and a unit or layer a page
asks for as soon as the photo being cut is done (the step stops, and the next waits until no fill
a page asked for is queued or running). Pages say how far it is ("Cutting patches: 3,120 of
10,560 ...", :meth:`FillPages.cutting_line`), ``GET /api/fill`` answers ``{"cutting": {...}}``,
and a progress bar on stderr says ``cutting patches``.

>>> group = FillPages(site, gallery, lambda: analyzer.model, featvis={"steps": 128, "size": 96})
>>> group.cut_rest()  # once the atlas is finished
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import CancelledError
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..atlas.fill import lacking
from ..errors import ConvscopeError
from ..progress import Bar
from ..runtime import release_memory
from .common import parse_number
from .gallery import Gallery
from .site import Site
from .workers import Busy

#: Units waiting or running at once; more are refused with 503.
MAX_QUEUE = 64
#: Seconds a refused fill is told to wait (``Retry-After``): about one unit's fill.
FILL_RETRY_AFTER = 60
logger = logging.getLogger("convscope.web")


class BadUnit(ConvscopeError):
    status = 400


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
        self.api = {"fill": "POST /api/layers/{layer}/units/{unit}/fill (GET: how it stands)",
                    "cutting": "GET /api/fill: the patches cut in the background so far"}
        self.links = site.links
        self._filler = None
        self._waiting: dict[tuple[str, int], None] = {}  # in order: the next to run first
        self._running: tuple[str, int] | None = None
        self._runner: asyncio.Task | None = None
        self._state: dict[tuple[str, int], dict] = {}
        self.runs = 0  # fills that computed something (the tests count them)
        self._idle = threading.Event()  # set while no fill a page asked for waits or runs
        self._idle.set()
        self._cutter: threading.Thread | None = None
        self.cutting: dict | None = None  # how the background cutting stands (cut_rest), None before it
        gallery.activity = self.cutting_line  # the pages' banner while it runs

    def routes(self) -> list[Route]:
        return [Route("/api/layers/{layer}/units/{unit}/fill", self.endpoint, methods=["GET", "POST"]),
                Route("/api/layers/{layer}/fill", self.layer_endpoint, methods=["GET", "POST"]),
                Route("/api/fill", self.cutting_endpoint, methods=["GET"])]

    # ------------------------------------------------------------------ the work, in the model thread's batch lane

    def _filler_now(self):
        """The filler (made on the model thread, on first use) on the gallery's atlas: a
        building atlas's newest snapshot, or the finished one."""
        if self._filler is None:
            from ..atlas.fill import Filler

            self._filler = Filler(self.gallery.atlas, self.load_model(), self.featvis)
        self._filler.atlas = self.gallery.atlas
        return self._filler

    def _fill(self, layer: str, unit: int | None) -> dict:
        self._filler_now()
        if unit is None:  # a layer page's top patches
            done = self._filler.fill_tops(layer, pause=self.site.workers.pause)
            self.gallery.forget_layer(layer)
            self.runs += bool(done["patches"])
            return done
        done = self._filler.fill(layer, unit, on_projections=lambda: self.gallery.forget(layer, unit),
                                 pause=self.site.workers.pause)
        self.gallery.forget(layer, unit)
        if done["patches"] or done["projections"] or done["featvis"]:
            self.runs += 1
        return done

    async def _run(self) -> None:
        """Runs the waiting units one by one, in the order they were asked for."""
        try:
            while self._waiting:
                key = self._running = next(iter(self._waiting))
                del self._waiting[key]
                self._state[key] = await self._one(key)
        finally:
            self._running, self._runner = None, None
            self._idle.set()

    async def _one(self, key: tuple[str, int]) -> dict:
        try:
            async with self.site.workers.job():
                done = await self.site.workers.batch(self._fill, *key)
            return {"status": "done", "seconds": done["seconds"]}
        except ConvscopeError as exc:
            return {"status": "error", "error": str(exc).splitlines()[0]}
        except Exception as exc:  # noqa: BLE001 - a page waits for an answer, the log gets the rest
            logger.exception("filling unit %s of %r failed", "tops" if key[1] is None else key[1], key[0])
            return {"status": "error", "error": f"internal error ({type(exc).__name__}); the server log has the details"}

    def _queue(self) -> int:
        return len(self._waiting) + (self._running is not None)

    # ------------------------------------------------------------------ the rest, in the background

    def cut_rest(self) -> bool:
        """Start cutting, on a thread of its own, every patch the atlas lacks (see the module's
        docstring), once the gallery's atlas is finished; False if it was started already."""
        if self._cutter is not None:
            return False
        self.cutting = {"state": "waiting", "done": 0, "total": 0, "layer": None, "layers": len(self.gallery.atlas.layers),
                        "position": 0, "unreadable": 0, "order": []}
        self._cutter = threading.Thread(target=self._cut_all, name="convscope-cut-patches", daemon=True)
        self._cutter.start()
        return True

    def cutting_line(self) -> str | None:
        """The pages' line while the background cutting runs, else None."""
        c = self.cutting
        if c is None or c["state"] != "cutting":
            return None
        return (f"Cutting patches: {c['done']:,} of {c['total']:,} cut (layer {c['layer']}, {c['position']} of "
                f"{c['layers']}). A unit or layer you open has its own patches cut first.")

    def _cut_all(self) -> None:
        workers = self.site.workers
        generation = workers.generation
        c = self.cutting
        try:
            while not workers.batch_future(self._finished, generation=generation).result():
                time.sleep(1.0)  # a build still running: its examples may change; wait for the finished atlas
            counts = workers.batch_future(lambda: self.gallery.atlas.patch_counts(), generation=generation).result()
            c.update(done=sum(cut for cut, _n in counts.values()), total=sum(n for _cut, n in counts.values()))
            if c["done"] >= c["total"]:  # a build that cut them all (what `serve` mostly opens): no bar, no line
                c["state"] = "done"
                return
            c["state"] = "cutting"
            unreadable: set[str] = set()  # a step stopped early reads them again in the next
            with Bar(c["total"], "cutting patches") as bar:
                bar.advance(c["done"])
                for position, (layer, (cut, n)) in enumerate(counts.items(), start=1):
                    c.update(layer=layer, position=position)
                    while cut < n:
                        self._idle.wait()  # the fills pages asked for first
                        step = workers.batch_future(self._cut_step, layer, bar, generation, generation=generation)
                        done = step.result()
                        unreadable.update(path for path, _why in done["unreadable"])
                        c["unreadable"] = len(unreadable)
                        if done["done"]:
                            break
            c["state"] = "done"
            workers.batch_future(release_memory, generation=generation)
        except CancelledError:  # the server is closing
            c["state"] = "stopped"
        except Exception as exc:  # noqa: BLE001 - a background job has no page to answer; the log has it
            logger.exception("cutting patches in the background failed")
            c.update(state="error", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _finished(self) -> bool:
        """On the model thread: the gallery on the newest atlas; whether it is the finished one."""
        self.gallery.refresh()
        return self.gallery.atlas.building is None

    def _cut_step(self, layer: str, bar, generation: int) -> dict:
        """On the model thread: cut ``layer``'s patches until none lacks, or a page asks for a fill
        or the server closes (checked between photos)."""
        filler = self._filler_now()
        workers = self.site.workers
        c = self.cutting

        def recorded(units: list[int], patches: int) -> None:
            for u in units:
                self.gallery.forget(layer, u)
            c["done"] += patches
            c["order"].append((layer, units))
            bar.advance(patches)

        done = filler.cut_layer(layer, pause=workers.pause, on_record=recorded,
                                stop=lambda: not self._idle.is_set() or workers.generation != generation)
        self.gallery.forget_layer(layer)
        c["done"] = sum(cut for cut, _n in filler.atlas.patch_counts().values())  # with those the pages' fills cut
        bar.update(completed=c["done"])
        return done

    async def cutting_endpoint(self, request: Request):
        """How the background cutting stands: ``{"cutting": {"state": "waiting" | "cutting" |
        "done" | "stopped" | "error", "done", "total", "layer", "position", "layers",
        "unreadable"}}``, or ``{"cutting": null}`` when it was never started."""
        c = self.cutting
        return JSONResponse({"cutting": None if c is None else {k: v for k, v in c.items() if k != "order"}})

    # ------------------------------------------------------------------ the endpoint

    def _missing(self, page: dict) -> dict:
        return lacking(page["missing"], self.featvis is not False)

    def _files(self, page: dict) -> dict:
        files = {}
        if page["featvis"]:
            files["featvis"] = self.links.atlas_file(page["featvis"])
        on_demand = self.gallery.atlas.patches_on_demand
        for ex in page["examples"]:
            if ex["patch"] and on_demand:
                files[f"{ex['rank']}:patch"] = self.links.atlas_file(ex["patch"])
            for m in page["methods"]:
                if ex[m]:
                    files[f"{ex['rank']}:{m}"] = self.links.atlas_file(ex[m])
        return files

    async def endpoint(self, request: Request):
        layer = request.path_params["layer"]
        self.gallery.check_layer(layer)
        text = request.path_params["unit"]
        if not (text.isascii() and text.isdigit()):
            raise BadUnit(f"unit must be a whole number from 0, got {text[:40]!r}")
        unit = parse_number(text, "unit")  # a 5,000-digit unit is out of range, not a bug
        self.gallery.check_unit(layer, unit)
        key = (layer, unit)
        # one read of the unit's page, off the event loop (a poll may meet the model thread's write)
        page = await run_in_threadpool(self.gallery.unit, layer, unit)
        missing = self._missing(page)
        answer = self._answer(request, key, missing["any"])
        answer.update(layer=layer, unit=unit, missing=missing, queue=self._queue())
        answer["files"] = self._files(page)  # those there so far: a page shows them as they come
        return JSONResponse(answer, status_code=202 if answer["status"] in ("queued", "running") else 200)

    async def layer_endpoint(self, request: Request):
        """The top patches a layer page lacks (an atlas whose patches are cut on demand): POST
        queues them like a unit (the layer page reloads when they are done), GET says how it stands."""
        layer = request.path_params["layer"]
        self.gallery.check_layer(layer)
        page = await run_in_threadpool(self.gallery.layer, layer)
        answer = self._answer(request, (layer, None), page["missing_tops"] > 0)
        answer.update(layer=layer, missing_tops=page["missing_tops"], queue=self._queue())
        return JSONResponse(answer, status_code=202 if answer["status"] in ("queued", "running") else 200)

    def _answer(self, request: Request, key: tuple, lacking: bool) -> dict:
        """How the fill of ``key`` stands; a POST queues it when something is ``lacking``."""
        state = self._state.get(key)
        if key == self._running:
            answer = {"status": "running"}
        elif key in self._waiting:
            answer = {"status": "queued", "place": list(self._waiting).index(key) + 1}
        elif not lacking:
            answer = {"status": "done"}
        elif state is not None and state["status"] == "error" and request.method == "GET":
            answer = dict(state)
        elif request.method == "GET":
            answer = {"status": "missing"}
        else:
            if self._queue() >= self.max_queue:
                raise Busy(f"the server is computing {self._queue()} units already (at most {self.max_queue} "
                           "wait); try again in a minute", retry_after=FILL_RETRY_AFTER)
            self._state.pop(key, None)
            self._waiting[key] = None
            self._idle.clear()
            answer = {"status": "queued", "place": len(self._waiting)}
            if self._runner is None:
                self._runner = asyncio.ensure_future(self._run())
        return answer


def cut_in_background(app) -> bool:
    """Start cutting the patches the atlas of ``app`` (:func:`convscope.web.create_app`) lacks,
    in the background (:meth:`FillPages.cut_rest`); False where the app fills nothing (no atlas,
    ``fill=False``) or cuts already. Safe from any thread."""
    for group in app.state.groups:
        if isinstance(group, FillPages):
            return group.cut_rest()
    return False


__all__ = ["FillPages", "MAX_QUEUE", "cut_in_background"]
