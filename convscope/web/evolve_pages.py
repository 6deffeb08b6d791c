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

A folder without ``evolve.jsonl`` gets a one-line reason on every page; a layer without cells
shows its grid picture and says why. Only PNG files inside the run folder, reached through no
symbolic link, are served (:func:`run_image`).

>>> pages = EvolvePages(site, "evolve/")
>>> app = Starlette(routes=pages.routes())
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from ..errors import unknown_name_error
from ..evolve import MANIFEST
from ..files import printable_path, safe_name
from .gallery import NotFound, confined_image
from .site import NavLink, Site

CHANGES = "evolve.jsonl"
CHANGES_PLOT = "evolve-changes.png"
#: A layer has settled from the step at which its mean top-image overlap reaches this and stays
#: there (nine of every ten top images kept from one checkpoint to the next).
SETTLED = 0.9


def grid_name(layer: str) -> str:
    """The grid picture ``Evolution.save`` writes for ``layer``."""
    return f"evolve-{safe_name(layer)}.png"


def _num(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def run_image(root: Path, relative: str) -> Path:
    """The PNG ``relative`` inside run folder ``root``: a regular file reached through no
    symbolic link, beginning as a PNG does; :class:`NotFound` otherwise."""
    return confined_image(root, relative, "run picture", suffixes=(".png",))[0]


class EvolveRun:
    """The data of one run folder, read when first asked and again when its files change."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._key = None
        self._data = None

    def _stamp(self):
        out = []
        for name in (CHANGES, MANIFEST):
            try:
                st = os.stat(self.root / name)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def data(self) -> dict:
        """``{"checkpoints", "layers": {name: {...}}, ...}``; :class:`NotFound` with the reason
        when the folder has no readable ``evolve.jsonl``."""
        with self._lock:
            key = self._stamp()
            if key != self._key or self._data is None:
                self._data = self._read()
                self._key = key
            return self._data

    def _fail(self, why: str):
        raise NotFound(f"the evolve run {printable_path(str(self.root))} {why}; write one with "
                       "`convscope evolve PHOTOS --weights A.pt,B.pt --out RUN` and serve it with --evolve RUN")

    def _read(self) -> dict:
        if not self.root.is_dir():
            self._fail("is not a folder")
        try:
            text = (self.root / CHANGES).read_text()
        except FileNotFoundError:
            self._fail(f"has no {CHANGES}")
        except (OSError, UnicodeDecodeError) as exc:
            self._fail(f"has an unreadable {CHANGES} ({exc.__class__.__name__})")
        layers: dict[str, dict] = {}
        try:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                r = json.loads(line)
                entry = layers.setdefault(str(r["layer"]), {"steps": [], "means": [], "units": {}, "channels": None})
                step = {"from": str(r["from"]), "to": str(r["to"]), "overlap": _num(r["overlap"]),
                        "correlation": _num(r.get("correlation"))}
                if r.get("unit") is None:
                    entry["means"].append(step)
                    entry["channels"] = r.get("units")
                else:
                    entry["units"].setdefault(int(r["unit"]), []).append(step)
        except (ValueError, KeyError, TypeError) as exc:
            self._fail(f"has a malformed {CHANGES} (line {n}: {exc.__class__.__name__} {exc})")
        if not layers:
            self._fail(f"has an empty {CHANGES}")
        first = next(iter(layers.values()))["means"]
        checkpoints = [s["from"] for s in first] + [first[-1]["to"]] if first else []
        manifest, note = None, None
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), dict):
                manifest, note = None, f"{MANIFEST} is not a run manifest"
        except FileNotFoundError:
            note = f"this run folder has no {MANIFEST}, so no per-unit pictures; the layer's grid picture is shown instead"
        except (OSError, ValueError) as exc:
            note = f"{MANIFEST} cannot be read ({exc.__class__.__name__}); the layer's grid picture is shown instead"
        if manifest and manifest.get("checkpoints"):
            checkpoints = [str(c) for c in manifest["checkpoints"]]
        return {"checkpoints": checkpoints, "layers": layers, "manifest": manifest, "note": note}

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

    def __init__(self, site: Site, run_dir: str | os.PathLike):
        self.site = site
        self.run = EvolveRun(run_dir)
        self.nav = [NavLink("Evolution", "/evolve")]
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

    @staticmethod
    def file_url(relative: str | None) -> str | None:
        return None if not relative else "/evolve-files/" + quote(relative)

    # ------------------------------------------------------------------ data

    def summary(self) -> dict:
        """The run: its checkpoints, and per layer the mean change numbers per step and from
        which checkpoint it has settled."""
        d = self.run.data()
        manifest = d["manifest"] or {}
        drawn = manifest.get("layers", {})
        layers = []
        for name, entry in d["layers"].items():
            last = entry["means"][-1]["overlap"] if entry["means"] else None
            layers.append({
                "name": name, "url": "/evolve/" + quote(name, safe=""), "channels": entry["channels"],
                "drawn": len(drawn.get(name, {}).get("units", [])) or None, "changes": entry["means"],
                "last_overlap": last, "settled_from": settled_from(entry["means"]),
                "grid": self.file_url(self.run.picture(grid_name(name))),
            })
        return {"run": self.run.root.name, "checkpoints": d["checkpoints"], "top": manifest.get("top"),
                "method": manifest.get("method"), "photos": manifest.get("photos"), "settled_overlap": SETTLED,
                "layers": layers, "changes_plot": self.file_url(self.run.picture(CHANGES_PLOT)), "note": d["note"]}

    def layer(self, name: str) -> dict:
        """One layer: per drawn unit (rows) its cells per checkpoint (columns) and its change
        numbers per step; the layer's means."""
        d = self.run.data()
        if name not in d["layers"]:
            raise unknown_name_error("layer", name, d["layers"], cls=NotFound,
                                     hint=f"This run has the layers {', '.join(d['layers'])}; start from /evolve.")
        entry = d["layers"][name]
        drawn = ((d["manifest"] or {}).get("layers") or {}).get(name)
        note = d["note"]
        rows = []
        if d["manifest"] is not None and not drawn:
            note = f"{MANIFEST} has no cells for layer {name!r}; the layer's grid picture is shown instead"
        for row in (drawn or {}).get("units", []):
            unit = int(row["unit"])
            cells = []
            for checkpoint, cell in zip(d["checkpoints"], row["cells"]):
                cells.append({"checkpoint": checkpoint, "photo": cell.get("photo"), "value": _num(cell.get("value")),
                              "y": cell.get("y"), "x": cell.get("x"),
                              "patch": self.file_url(self.run.picture(str(cell.get("patch") or ""))),
                              "projection": self.file_url(self.run.picture(str(cell.get("projection") or "")))})
            rows.append({"unit": unit, "cells": cells, "changes": entry["units"].get(unit, []),
                         "settled_from": settled_from(entry["units"].get(unit, []))})
        names = list(d["layers"])
        at = names.index(name)
        return {"layer": name, "channels": entry["channels"], "checkpoints": d["checkpoints"],
                "steps": [{"from": s["from"], "to": s["to"]} for s in entry["means"]], "units": rows,
                "means": entry["means"], "settled_from": settled_from(entry["means"]), "settled_overlap": SETTLED,
                "grid": self.file_url(self.run.picture(grid_name(name))), "note": None if rows else note,
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
