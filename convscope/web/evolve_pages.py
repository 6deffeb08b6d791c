"""The pages of one evolve run (``convscope evolve ... --out RUN``): the run with each layer's
change numbers per step, and per layer a table of units (rows) across checkpoints (columns),
each cell the unit's strongest patch and its projection at that checkpoint (Zeiler & Fergus's
figure 4, one layer per page); their JSON twins under ``/api/evolve``, and the run's pictures.

What the pages read from the run folder (see docs/evolve.md):

* ``evolve.jsonl`` (needed): per layer and step the layer's mean overlap and correlation
  (``"unit": null``), then per unit and step its own;
* ``evolve.json`` (the cells; written by :func:`convscope.evolve.save_cells`): the checkpoints, ``top``, the
  method, the photos, and per layer the units drawn with each cell's strongest photo, value and
  place, and its ``patch`` and ``projection`` pictures under ``cells/``;
* ``evolve-LAYER.png`` and ``evolve-changes.png``: the grids and the plot ``Evolution.save``
  draws, shown where the cells are missing.

The folder is read by :meth:`convscope.evolve.EvolveRun.open` (the reader beside the writer),
again whenever its files change. A folder without ``evolve.jsonl`` gets a one-line reason on
every page; a layer without cells shows its grid picture and says why. Only PNG files inside
the run folder, reached through no symbolic link, are served (:func:`run_image`).

>>> pages = EvolvePages(site, "evolve/")
>>> app = Starlette(routes=pages.routes())
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from ..errors import unknown_name_error
from ..evolve import CHANGES_PLOT, MANIFEST, EvolveRun, grid_name
from ..files import json_number
from .common import NotFound, confined_image
from .site import Absent, NavLink, Site

#: A layer has settled from the step at which its mean top-image overlap reaches this and stays
#: there (nine of every ten top images kept from one checkpoint to the next).
SETTLED = 0.9


def run_image(root: Path, relative: str) -> Path:
    """The PNG ``relative`` inside run folder ``root``: a regular file reached through no
    symbolic link, beginning as a PNG does; :class:`NotFound` otherwise."""
    return confined_image(root, relative, "run picture", suffixes=(".png",))[0]


class RunFolder:
    """One run folder, read (:meth:`EvolveRun.open`) when first asked and again when its files
    change; and the pictures in it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._key = None
        self._run: EvolveRun | None = None

    def read(self) -> EvolveRun:
        with self._lock:
            key = EvolveRun.stamp(self.root)
            if key != self._key or self._run is None:
                self._run = EvolveRun.open(self.root)
                self._key = key
            return self._run

    def picture(self, name: str) -> str | None:
        """``name`` if it is a PNG inside the run folder, else None."""
        try:
            run_image(self.root, name)
        except NotFound:
            return None
        return name


def settled_from(means: list[dict]) -> str | None:
    """The checkpoint from which every later step keeps at least :data:`SETTLED` of the top
    images (the ``from`` of the first such step), or None if the last step does not."""
    start = None
    for step in means:
        ok = step["overlap"] is not None and step["overlap"] >= SETTLED
        start = (start or step["from"]) if ok else None
    return start


class EvolvePages:
    """The page group of one evolve run folder (see the module's docstring)."""

    search = None
    home = None
    absent = Absent(("/evolve", "/api/evolve", "/evolve/{rest:path}", "/api/evolve/{rest:path}", "/evolve-files/{rest:path}"),
                    "this server has no evolve run; start it with --evolve RUN")

    def __init__(self, site: Site, run_dir: str | os.PathLike):
        self.site = site
        self.links = site.links
        self.run = RunFolder(run_dir)
        self.nav = [NavLink("Evolution", self.links.evolve())]
        self.api = {"evolve run": "/api/evolve", "evolve layer": "/api/evolve/{layer}",
                    "evolve picture": "/evolve-files/{path}.png"}

    def routes(self) -> list[Route]:
        return [
            Route("/evolve", self.run_page),
            Route("/api/evolve", self.api_run),
            Route("/evolve/{layer}", self.layer_page),
            Route("/api/evolve/{layer}", self.api_layer),
            Route("/evolve-files/{path:path}", self.picture),
        ]

    # ------------------------------------------------------------------ data

    def summary(self) -> dict:
        """The run: its checkpoints, and per layer the mean change numbers per step and from
        which checkpoint it has settled."""
        d = self.run.read()
        manifest = d.manifest or {}
        drawn = manifest.get("layers", {})
        layers = []
        for name, entry in d.layers.items():
            last = entry["means"][-1]["overlap"] if entry["means"] else None
            layers.append({
                "name": name, "url": self.links.evolve(name), "channels": entry["channels"],
                "drawn": len(drawn.get(name, {}).get("units", [])) or None, "changes": entry["means"],
                "last_overlap": last, "settled_from": settled_from(entry["means"]),
                "grid": self.links.evolve_file(self.run.picture(grid_name(name))),
            })
        return {"run": self.run.root.name, "checkpoints": d.checkpoints, "top": manifest.get("top"),
                "method": manifest.get("method"), "photos": manifest.get("photos"), "settled_overlap": SETTLED,
                "layers": layers, "changes_plot": self.links.evolve_file(self.run.picture(CHANGES_PLOT)), "note": d.note}

    def layer(self, name: str) -> dict:
        """One layer: per drawn unit (rows) its cells per checkpoint (columns) and its change
        numbers per step; the layer's means."""
        d = self.run.read()
        if name not in d.layers:
            raise unknown_name_error("layer", name, d.layers, cls=NotFound,
                                     hint=f"This run has the layers {', '.join(d.layers)}; start from /evolve.")
        entry = d.layers[name]
        drawn = ((d.manifest or {}).get("layers") or {}).get(name)
        note = d.note
        rows = []
        if d.manifest is not None and not drawn:
            note = f"{MANIFEST} has no cells for layer {name!r}; the layer's grid picture is shown instead"
        for row in (drawn or {}).get("units", []):
            unit = int(row["unit"])
            cells = []
            for checkpoint, cell in zip(d.checkpoints, row["cells"]):
                cells.append({"checkpoint": checkpoint, "photo": cell.get("photo"), "value": json_number(cell.get("value")),
                              "y": cell.get("y"), "x": cell.get("x"),
                              "patch": self.links.evolve_file(self.run.picture(str(cell.get("patch") or ""))),
                              "projection": self.links.evolve_file(self.run.picture(str(cell.get("projection") or "")))})
            rows.append({"unit": unit, "cells": cells, "changes": entry["units"].get(unit, []),
                         "settled_from": settled_from(entry["units"].get(unit, []))})
        names = list(d.layers)
        at = names.index(name)
        return {"layer": name, "channels": entry["channels"], "checkpoints": d.checkpoints,
                "steps": [{"from": s["from"], "to": s["to"]} for s in entry["means"]], "units": rows,
                "means": entry["means"], "settled_from": settled_from(entry["means"]), "settled_overlap": SETTLED,
                "grid": self.links.evolve_file(self.run.picture(grid_name(name))), "note": None if rows else note,
                "method": (drawn or {}).get("method") or (d.manifest or {}).get("method"),
                "method_note": (drawn or {}).get("method_note"),
                "prev": names[at - 1] if at > 0 else None, "next": names[at + 1] if at + 1 < len(names) else None}

    # ------------------------------------------------------------------ endpoints

    async def run_page(self, request: Request):
        return self.site.page("evolve.html", run=await run_in_threadpool(self.summary))

    async def api_run(self, request: Request):
        return JSONResponse(await run_in_threadpool(self.summary))

    async def layer_page(self, request: Request):
        data = await run_in_threadpool(self.layer, request.path_params["layer"])
        return self.site.page("evolve_layer.html", page=data)

    async def api_layer(self, request: Request):
        return JSONResponse(await run_in_threadpool(self.layer, request.path_params["layer"]))

    async def picture(self, request: Request):
        path = await run_in_threadpool(run_image, self.run.root, request.path_params["path"])
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})
