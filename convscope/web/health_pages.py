"""The model-health pages of an atlas (:mod:`convscope.health`): per layer the shares of dead,
saturated, constant and duplicate units, the first layer's filters with their frequency bands,
and every flagged unit linked to its unit page; per layer its flagged units with the numbers
behind each flag and the layer's activation distribution; their JSON twins under
``/api/health``.

The report is computed once, on the server's model thread (it loads the atlas's model unless
one is given, and runs it once on a random input), when a health page is first asked for, and
kept; the filter sheet is drawn once with it. A person waits for it, so it is interactive work
(:meth:`convscope.web.workers.Workers.model`): it goes before a running fill's next step, not
after the fill.

>>> pages = HealthPages(site, "atlas/", model=model)
>>> app = Starlette(routes=pages.routes())
"""
from __future__ import annotations

import asyncio
import io
import os

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ConvscopeError, unknown_name_error
from ..health import BANDS, FLAGS, PASS_MODEL, filter_sheet, first_layer_filters, health, sheet_flags
from ..models import load_recorded
from ..sketch import Sketch
from .common import NotFound
from .site import Absent, NavLink, Site

#: Bars of a layer's pooled activation histogram.
HISTOGRAM_BINS = 40
FILTERS_URL = "/health/filters.png"


class HealthUnavailable(ConvscopeError):
    """The report cannot be made (the atlas's model cannot be loaded, say); 503 with the reason."""

    status = 503


class HealthPages:
    """The health page group of one atlas (see the module's docstring). ``atlas``: an open
    :class:`~convscope.atlas.Atlas` or its folder; ``model``: its model (a LoadedModel or
    ``nn.Module``), or None to load the one the atlas records."""

    search = None
    home = None
    absent = Absent(("/health", "/health/{rest:path}", "/api/health", "/api/health/{rest:path}"),
                    "this server has no atlas (it was started without one), so it has no model-health pages; "
                    "start from /")

    def __init__(self, site: Site, atlas, model=None):
        self.site = site
        self.links = site.links
        self.atlas_arg = atlas
        self.model = model
        self.nav = [NavLink("Health", self.links.health())]
        self.api = {"health": "/api/health", "layer health": "/api/health/{layer}", "filter sheet": FILTERS_URL}
        self._done: dict | None = None
        self._lock = asyncio.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.page),
            Route("/api/health", self.api_all),
            Route(FILTERS_URL, self.sheet),
            Route("/health/{layer}", self.layer_page),
            Route("/api/health/{layer}", self.api_layer),
        ]

    # ------------------------------------------------------------------ the report, once

    def _compute(self) -> dict:
        from ..atlas import Atlas

        opened = isinstance(self.atlas_arg, (str, os.PathLike))
        atlas = Atlas.open(self.atlas_arg) if opened else self.atlas_arg
        try:
            model = self.model
            if model is None and self.site.model is not None:
                model = self.site.model()  # the app's copy of the atlas's model (the uploads'): one in memory
            if model is None:
                model = load_recorded(atlas.info()["model"], hint=PASS_MODEL)
            report = health(atlas, model)
            histograms = {entry.name: _pooled_histogram(atlas, entry.name) for entry in report.layers}
        except ConvscopeError as exc:
            raise HealthUnavailable(f"the health report cannot be made: {exc}") from None
        finally:
            if opened:
                atlas.close()
        filters, sheet, sheet_note = None, None, None
        try:
            filters = first_layer_filters(model)
            buf = io.BytesIO()
            filter_sheet(filters, flags=sheet_flags(report, filters)).save(buf, format="PNG")
            sheet = buf.getvalue()
        except ConvscopeError as exc:
            sheet_note = str(exc)
        return {"report": report, "filters": filters, "sheet": sheet, "sheet_note": sheet_note,
                "histograms": histograms}

    async def _get(self) -> dict:
        if self._done is None:
            async with self._lock:  # one computation, however many requests wait for it
                if self._done is None:
                    workers = self.site.workers
                    async with workers.job():
                        self._done = await workers.model(self._compute)
        return self._done

    # ------------------------------------------------------------------ data

    def _summary(self, done: dict) -> dict:
        report, filters = done["report"], done["filters"]
        layers = []
        for entry in report.layers:
            flagged = report.flagged(entry.name)
            layers.append({**entry.to_dict(), "url": self.links.health(entry.name), "flagged": len(flagged),
                           "units_flagged": [self._unit(u) for u in flagged]})
        first = None
        if filters is not None:
            first = {**filters.to_dict(), "sheet": FILTERS_URL}
            first.pop("bands")  # per filter: on the sheet; the means stay
        return {"model": report.model, "thresholds": report.thresholds, "flags": list(FLAGS), "bands": list(BANDS),
                "layers": layers, "flagged": len(report.flagged()), "units": len(report.units), "first_layer": first,
                "first_layer_note": done["sheet_note"]}

    def _layer(self, done: dict, name: str) -> dict:
        report = done["report"]
        names = [e.name for e in report.layers]
        if name not in names:
            raise unknown_name_error("layer", name, names, cls=NotFound,
                                     hint=f"The atlas's layers are: {', '.join(names)}; start from /health.")
        entry = report.layer(name)
        at = names.index(name)
        return {**entry.to_dict(), "url": self.links.health(name), "layer_url": self.links.layer(name),
                "flagged": [self._unit(u) for u in report.flagged(name)], "histogram": done["histograms"][name],
                "thresholds": report.thresholds, "flags": list(FLAGS),
                "prev": names[at - 1] if at > 0 else None, "next": names[at + 1] if at + 1 < len(names) else None}

    def _unit(self, u) -> dict:
        return {**u.to_dict(), "url": self.links.unit(u.layer, u.unit)}

    # ------------------------------------------------------------------ endpoints

    async def page(self, request: Request):
        return self.site.page("health.html", health=self._summary(await self._get()))

    async def api_all(self, request: Request):
        done = await self._get()
        data = self._summary(done)
        if done["filters"] is not None:
            data["first_layer"]["bands"] = done["filters"].to_dict()["bands"]
        return JSONResponse(data)

    async def layer_page(self, request: Request):
        data = self._layer(await self._get(), request.path_params["layer"])
        return self.site.page("health_layer.html", page=data)

    async def api_layer(self, request: Request):
        return JSONResponse(self._layer(await self._get(), request.path_params["layer"]))

    async def sheet(self, request: Request):
        done = await self._get()
        if done["sheet"] is None:
            raise NotFound(f"no filter sheet: {done['sheet_note']}")
        return Response(done["sheet"], media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


def _pooled_histogram(atlas, layer: str) -> dict:
    """The layer's activation distribution: every unit's sketch pooled, in ``HISTOGRAM_BINS``
    equal bins from the layer's smallest to its largest value (``{"counts", "edges"}``, the
    form of a unit page's histogram)."""
    cfg = atlas.info()["sketch"] or {}
    sketch = Sketch(sub=int(cfg.get("sub", 3)), grid=int(cfg.get("grid", 32)))
    pooled = np.zeros(sketch.bins, dtype=np.int64)
    lo, hi = np.inf, -np.inf
    for row in atlas.units(layer):
        first, counts = row["sketch"]["first"], row["sketch"]["counts"]
        pooled[first : first + len(counts)] += np.asarray(counts, dtype=np.int64)
        if row["min"] is not None and row["max"] is not None:
            lo, hi = min(lo, float(row["min"])), max(hi, float(row["max"]))
    if not pooled.any() or not np.isfinite(lo) or not hi > lo:
        return {"counts": [], "edges": []}
    # each sketch bin's count spread evenly over its part of [lo, hi] (a bin reaching past the
    # layer's extremes, such as the one that holds ReLU6's 6.0, gives all of it to its part)
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    out = np.zeros(HISTOGRAM_BINS)
    sketch_edges = sketch.edges().numpy().astype(np.float64)
    for k in np.flatnonzero(pooled):
        a, b = max(sketch_edges[k], lo), min(sketch_edges[k + 1], hi)
        if not b > a:  # all of it at one value
            out[min(int(np.searchsorted(edges, a, side="right")) - 1, HISTOGRAM_BINS - 1)] += pooled[k]
            continue
        share = np.clip((np.minimum(edges[1:], b) - np.maximum(edges[:-1], a)) / (b - a), 0, None)
        out += pooled[k] * share
    whole = np.diff(np.round(np.cumsum(out)), prepend=0.0)  # whole counts with the exact total
    return {"counts": [int(c) for c in whole], "edges": [float(e) for e in edges]}
