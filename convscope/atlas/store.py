"""The atlas on disk: its SQLite schema, the reader (:class:`Atlas`) and the writer of a build.

An atlas is a folder (schema in ``docs/atlas.md``)::

    atlas.sqlite                      model, preprocessing, layers, units, images, examples, skipped
    patches/<image id>/<t>_<l>_<b>_<r>.png        an example's receptive field on the model input
    layers/<layer>/unit_<u>/top_<r>_deconvnet.png its projection, cropped to the same box
    layers/<layer>/unit_<u>/top_<r>_guided.png
    featvis/<layer>/unit_<u>.png      feature visualizations added later (:meth:`Atlas.set_featvis`)
    scan_state.pt                     the final ScanState (merge more images in later)

``atlas.sqlite`` appears only once a build is complete (:mod:`convscope.atlas.builder`); until
then the build lives in ``.partial/``, and :meth:`Atlas.open` says so.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..choices import DRAWN_PROJECTIONS
from ..errors import ConvscopeError, unknown_name_error
from ..files import atomic_write, json_number, safe_name
from ..scan import ScanState
from ..stores import PARTIAL, fsync_file, open_committed, state

FORMAT = "convscope-atlas"
FORMAT_VERSION = 1
DB_NAME = "atlas.sqlite"
STATE_NAME = "scan_state.pt"
#: A build's latest published snapshot, in ``.partial/``: an atlas database of the photos scanned
#: so far, its meta ``complete`` false and ``building`` saying how far (see :meth:`Atlas.open`).
SNAPSHOT_NAME = "snapshot.sqlite"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 32
METHODS = DRAWN_PROJECTIONS  # the projection columns of the examples table, and the default

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE layers (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, type TEXT NOT NULL,
    channels INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    stride_y INTEGER NOT NULL, stride_x INTEGER NOT NULL, rf_y INTEGER NOT NULL, rf_x INTEGER NOT NULL,
    offset_y INTEGER NOT NULL, offset_x INTEGER NOT NULL, complete INTEGER NOT NULL,
    ranked_by TEXT, deconvnet_depends INTEGER, deconvnet_reason TEXT, deconvnet_switches TEXT,
    deconvnet_computed INTEGER
);
CREATE TABLE units (
    layer TEXT NOT NULL REFERENCES layers(name), unit INTEGER NOT NULL,
    top REAL, mean REAL NOT NULL, min REAL, max REAL, frac_positive REAL NOT NULL,
    quantiles TEXT NOT NULL, histogram TEXT NOT NULL, sketch TEXT NOT NULL, featvis TEXT,
    PRIMARY KEY (layer, unit)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY, photo INTEGER NOT NULL, crop INTEGER NOT NULL, path TEXT NOT NULL,
    hash TEXT, width INTEGER, height INTEGER,
    crop_top INTEGER, crop_left INTEGER, crop_bottom INTEGER, crop_right INTEGER
);
CREATE TABLE examples (
    layer TEXT NOT NULL REFERENCES layers(name), unit INTEGER NOT NULL, rank INTEGER NOT NULL,
    image INTEGER NOT NULL REFERENCES images(id), value REAL NOT NULL, y INTEGER NOT NULL, x INTEGER NOT NULL,
    box_top INTEGER NOT NULL, box_left INTEGER NOT NULL, box_bottom INTEGER NOT NULL, box_right INTEGER NOT NULL,
    orig_top INTEGER, orig_left INTEGER, orig_bottom INTEGER, orig_right INTEGER,
    patch TEXT, deconvnet TEXT, guided TEXT,
    pre_value REAL, display_top INTEGER, display_left INTEGER, display_bottom INTEGER, display_right INTEGER,
    PRIMARY KEY (layer, unit, rank)
);
CREATE TABLE skipped (path TEXT NOT NULL, reason TEXT NOT NULL, phase TEXT NOT NULL DEFAULT 'scan');
"""

#: The unit names (:mod:`convscope.atlas.names`), added to a finished atlas by its naming step
#: (:meth:`Atlas.set_names`): the classifier's top classes of each example image, and per unit
#: and source ("wordnet", or "concept" for taught concepts) its name or, unnamed, the closest.
NAMES_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_classes (image INTEGER PRIMARY KEY REFERENCES images(id), top TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS unit_names (
    layer TEXT NOT NULL REFERENCES layers(name), unit INTEGER NOT NULL, source TEXT NOT NULL,
    named INTEGER NOT NULL, key TEXT, name TEXT, count INTEGER NOT NULL, total INTEGER NOT NULL,
    base REAL, chance REAL,
    PRIMARY KEY (layer, unit, source)
);
"""


class IncompleteAtlasError(ConvscopeError):
    """A folder whose atlas build stopped before the end."""


# --------------------------------------------------------------------------- reading


class Atlas:
    """A finished atlas, read through SQLite; safe to share between threads.

    >>> atlas = Atlas.open("atlas/")
    >>> atlas.layers                      # network order
    ['bn1', 'blocks.0', ...]
    >>> atlas.units("blocks.2")[7]["quantiles"]["0.5"]
    >>> atlas.path(atlas.examples("blocks.2", 7)[0]["deconvnet"])    # absolute Path
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, db: Path | None = None):
        self.root = root
        self._db = db or root / DB_NAME  # the file the fill writes to (a snapshot's own while building)
        self._conn = conn
        self._lock = threading.Lock()
        self._meta = {k: json.loads(v) for k, v in self._query("SELECT key, value FROM meta")}
        self._layers = [dict(r) for r in self._query("SELECT * FROM layers ORDER BY position")]
        # atlases written before photos unreadable during the build were kept have no phase
        self._phases = "phase" in {r["name"] for r in self._query("PRAGMA table_info(skipped)")}
        # atlases written before issue 13 have no ranking, pre-activation or display-box columns
        self._example_columns = {r["name"] for r in self._query("PRAGMA table_info(examples)")}

    @classmethod
    def open(cls, directory: str | os.PathLike, building: bool = False) -> "Atlas":
        """Open the atlas in ``directory``; an unfinished build raises :class:`IncompleteAtlasError`
        (one line, saying to run the build again with ``resume=True``). ``building=True`` opens,
        where the build is unfinished, its latest snapshot instead (a build with
        ``snapshots=True`` publishes them: the photos scanned so far, patches cut on demand), an
        atlas whose :attr:`building` says how far it is and whose ``info()["complete"]`` is False.

        >>> Atlas.open("atlas/", building=True).building
        {'phase': 'scanning', 'photos_done': 120, 'photos': 370, ...}"""
        root = Path(directory)
        snapshot = root / PARTIAL / SNAPSHOT_NAME
        if building and not state(root, DB_NAME).committed and snapshot.is_file():
            conn = sqlite3.connect(f"file:{snapshot.resolve()}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            return cls(root, conn, snapshot)
        conn = open_committed(root, DB_NAME, kind="atlas", format=FORMAT, incomplete=IncompleteAtlasError,
                              resume_hint="finish it by running the build again with resume=True and the same arguments",
                              build_hint="build one with convscope.atlas.build (`convscope atlas build`)",
                              rebuild_hint="rebuild it with overwrite=True")
        return cls(root, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _query(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ contents

    def info(self) -> dict:
        """Model spec, preprocessing, creation time, images scanned and skipped, settings, and the
        layers (name, type, shape, stride, receptive_field, offset, complete) in network order."""
        m = self._meta
        return {
            "format": m.get("format"),
            "version": m.get("version"),
            "model": m.get("model"),
            "preprocessing": m.get("preprocessing"),
            "created": m.get("created"),
            "images": m.get("images"),
            "top_k": m.get("top_k"),
            "crops": m.get("crops"),
            "projections": m.get("projections"),
            "sketch": m.get("sketch"),
            "build_seconds": m.get("build_seconds"),
            "layers": [self._layer_dict(r) for r in self._layers],
            "complete": m.get("complete") is True,
            "building": self.building,
        }

    @property
    def building(self) -> dict | None:
        """For a snapshot of a build in progress (:meth:`open` with ``building=True``): ``phase``
        (``"scanning"``, ``"finishing"``), ``photos_done`` (scanned or skipped) of ``photos``,
        ``updated`` (ISO time); None for a finished atlas."""
        return self._meta.get("building")

    @property
    def patches_on_demand(self) -> bool:
        """Whether examples' patches are cut when their unit is first filled
        (:mod:`convscope.atlas.fill`) rather than by the build: a snapshot's, or a build's with
        ``patches=False``."""
        return self.building is not None or (self._meta.get("projections") or {}).get("patches") is False

    @property
    def layers(self) -> list[str]:
        """Layer names in network order."""
        return [r["name"] for r in self._layers]

    def layer(self, name: str) -> dict:
        """One layer: name, type, shape (C, H, W), stride, receptive_field and offset ([y, x] input
        pixels), units (count), complete (all projections computed), ranked_by (``"output"`` or
        ``"pre-activation (input of ReLU6 'bn1.act')"``) and deconvnet (``{"depends", "reason",
        "switches", "computed", "note"}``: whether the layer's deconvnet projection depends on the
        image, why, whether this atlas holds it, and one line for a page); the last two None
        for atlases built before they were recorded."""
        return self._layer_dict(self._layer_row(name))

    def units(self, layer: str) -> list[dict]:
        """Per unit of ``layer``: unit, top (best value), mean, min, max, frac_positive,
        quantiles ({"0.5": v, ...}), histogram ({"counts", "edges"}: 32 equal bins from min to
        max, rebinned from the sketch), sketch (the exact mergeable bins that hold data:
        {"first", "counts", "edges"}) and featvis (relative path or None)."""
        self._layer_row(layer)
        rows = self._query("SELECT * FROM units WHERE layer = ? ORDER BY unit", (layer,))
        out = []
        for r in rows:
            out.append({
                "unit": r["unit"],
                "top": r["top"],
                "mean": r["mean"],
                "min": r["min"],
                "max": r["max"],
                "frac_positive": r["frac_positive"],
                "quantiles": json.loads(r["quantiles"]),
                "histogram": json.loads(r["histogram"]),
                "sketch": json.loads(r["sketch"]),
                "featvis": r["featvis"],
            })
        return out

    def examples(self, layer: str, unit: int) -> list[dict]:
        """The top examples of one unit, best first, named as the build's records name them
        (:mod:`convscope.atlas.records`): rank, image_id, crop, path (the photo's), sha256 (of the
        bytes the scan decoded), size ([W, H] of the photo, or None if it could not be read
        again), window (the crop on the photo: left, top, right, bottom), value (the layer's
        output), pre (the pre-activation there, for a layer ranked by it; else None), y, x (on
        the layer's map), box (top, left, bottom, right on the model input), box_original (the
        same on the photo), display_box (the part of the model input the projection pictures
        show: ``box``, or the energy crop inside it for whole-input fields; None without
        projections), and patch, deconvnet, guided (relative paths, or None)."""
        new = "pre_value" in self._example_columns
        self._check_unit(layer, unit)
        rows = self._query(
            "SELECT e.*, i.path, i.hash, i.crop, i.width, i.height, i.crop_top, i.crop_left, i.crop_bottom, i.crop_right "
            "FROM examples e JOIN images i ON e.image = i.id WHERE e.layer = ? AND e.unit = ? ORDER BY e.rank",
            (layer, int(unit)),
        )
        return [
            {
                "rank": r["rank"],
                "image_id": r["image"],
                "crop": r["crop"],
                "path": r["path"],
                "sha256": r["hash"],
                "size": None if r["width"] is None else [r["width"], r["height"]],
                "window": None if r["crop_top"] is None else [r["crop_left"], r["crop_top"], r["crop_right"], r["crop_bottom"]],
                "value": r["value"],
                "pre": r["pre_value"] if new else None,
                "y": r["y"],
                "x": r["x"],
                "box": [r["box_top"], r["box_left"], r["box_bottom"], r["box_right"]],
                "box_original": None if r["orig_top"] is None else [r["orig_top"], r["orig_left"], r["orig_bottom"], r["orig_right"]],
                "display_box": None if not new or r["display_top"] is None else
                [r["display_top"], r["display_left"], r["display_bottom"], r["display_right"]],
                "patch": r["patch"],
                **{m: r[m] for m in METHODS},
            }
            for r in rows
        ]

    def methods(self, layer: str) -> list[str]:
        """The projection methods this atlas holds for ``layer``: the build's methods, with guided
        backprop standing in for the deconvnet where the build found that the deconvnet cannot
        depend on the image (:func:`convscope.backproject.layer_methods`, recorded per layer)."""
        row = self._layer_row(layer)
        projections = self._meta.get("projections") or {}
        chosen = (projections.get("layer_methods") or {}).get(layer)
        if chosen is None:
            chosen = projections.get("methods") or METHODS
            dep = deconvnet_entry(row)
            if dep is not None and not dep["computed"]:  # an atlas built before layer_methods was recorded
                chosen = [m for m in chosen if m != "deconvnet"]
        return [m for m in chosen if m in METHODS]

    def missing(self, layer: str, unit: int) -> dict:
        """What ``unit`` of ``layer`` lacks (:func:`unit_missing`)."""
        return unit_missing(self.examples(layer, unit), self.featvis(layer, unit), self.methods(layer),
                            self.patches_on_demand, self.building is not None)

    def featvis(self, layer: str, unit: int) -> str | None:
        """Relative path of the unit's feature visualization, or None."""
        self._check_unit(layer, unit)
        row = self._query("SELECT featvis FROM units WHERE layer = ? AND unit = ?", (layer, int(unit)))
        return row[0]["featvis"] if row else None

    def set_featvis(self, layer: str, unit: int, png_path: str | os.PathLike) -> str:
        """Copy a feature visualization image into the atlas for ``unit`` of ``layer``; returns
        its relative path."""
        self._check_unit(layer, unit)
        src = Path(png_path)
        if not src.is_file():
            raise ConvscopeError(f"feature visualization file {src} does not exist")
        relative = f"featvis/{safe_name(layer)}/unit_{int(unit):04d}.png"
        with open(src, "rb") as source, atomic_write(self.root / relative) as dest:
            shutil.copyfileobj(source, dest)
        with self._lock:
            rw = sqlite3.connect(self._db)
            try:
                with rw:
                    rw.execute("UPDATE units SET featvis = ? WHERE layer = ? AND unit = ?", (relative, layer, int(unit)))
            finally:
                rw.close()
        return relative

    def set_projections(self, layer: str, unit: int, examples: dict) -> None:
        """Record projection files already in the atlas (written and fsynced by the caller) for
        ``unit`` of ``layer``: ``examples`` is ``{rank: ({method: relative path}, display box or
        None)}``; one transaction, so the database names all of them or none."""
        self._check_unit(layer, unit)
        display = ("display_top", "display_left", "display_bottom", "display_right")
        with self._lock:
            rw = sqlite3.connect(self._db)
            try:
                with rw:
                    for rank, (files, box) in examples.items():
                        sets = {m: rel for m, rel in files.items() if m in METHODS}
                        if box is not None and display[0] in self._example_columns:
                            sets.update(zip(display, box))
                        if sets:
                            assignments = ", ".join(f"{k} = ?" for k in sets)
                            rw.execute(f"UPDATE examples SET {assignments} WHERE layer = ? AND unit = ? AND rank = ?",
                                       (*sets.values(), layer, int(unit), int(rank)))
            finally:
                rw.close()

    def crop_window(self, crop: int, width: int, height: int) -> tuple[int, int, int, int]:
        """The window (left, top, right, bottom) of crop ``crop`` on a ``width`` x ``height``
        photo, by the atlas's crops (:class:`convscope.crops.Crops`)."""
        from ..crops import Crops

        levels = (self._meta.get("crops") or {}).get("levels") or [1]
        return Crops(tuple(int(n) for n in levels)).windows(width, height)[int(crop)]

    def set_patches(self, layer: str, cut: dict, images: dict) -> None:
        """Record patches already in the atlas (written and fsynced by the caller:
        :mod:`convscope.atlas.fill`) for units of ``layer``: ``cut`` is ``{unit: {rank: (relative
        path, box_original, image id)}}``, ``images`` ``{image id: ((W, H) of its photo, window)}``;
        one transaction. An example is updated only where its rank still holds that image: a
        build's next snapshot may have replaced the file meanwhile (an image id is the same photo
        and crop in every one)."""
        for unit in cut:
            self._check_unit(layer, unit)
        with self._lock:
            rw = sqlite3.connect(self._db)
            try:
                with rw:
                    for image_id, ((w, h), (left, top, right, bottom)) in images.items():
                        rw.execute("UPDATE images SET width = ?, height = ?, crop_top = ?, crop_left = ?, "
                                   "crop_bottom = ?, crop_right = ? WHERE id = ?",
                                   (w, h, top, left, bottom, right, int(image_id)))
                    for unit, ranks in cut.items():
                        for rank, (rel, box, image_id) in ranks.items():
                            rw.execute("UPDATE examples SET patch = ?, orig_top = ?, orig_left = ?, orig_bottom = ?, "
                                       "orig_right = ? WHERE layer = ? AND unit = ? AND rank = ? AND image = ?",
                                       (rel, *box, layer, int(unit), int(rank), int(image_id)))
            finally:
                rw.close()

    def lacking_patches(self, layer: str) -> dict[int, list[int]]:
        """The examples of ``layer`` without a patch file, ``{unit: [ranks]}`` (an atlas whose
        patches are cut on demand; a finished build's lack only those of unreadable photos)."""
        self._layer_row(layer)
        out: dict[int, list[int]] = {}
        for r in self._query("SELECT unit, rank FROM examples WHERE layer = ? AND patch IS NULL ORDER BY unit, rank",
                             (layer,)):
            out.setdefault(r["unit"], []).append(r["rank"])
        return out

    def patch_counts(self) -> dict[str, tuple[int, int]]:
        """Per layer, in network order: (examples with a patch, examples)."""
        rows = {r["layer"]: (r["cut"], r["n"]) for r in self._query(
            "SELECT layer, count(patch) AS cut, count(*) AS n FROM examples GROUP BY layer")}
        return {name: rows.get(name, (0, 0)) for name in self.layers}

    # ------------------------------------------------------------------ unit names

    def images(self) -> list[dict]:
        """Every model input some example is on, by image id: image_id, crop, path (the photo's),
        sha256 (of the bytes the scan decoded), window (the crop on the photo: left, top, right,
        bottom; None if the photo could not be read again)."""
        rows = self._query("SELECT * FROM images ORDER BY id")
        return [{"image_id": r["id"], "crop": r["crop"], "path": r["path"], "sha256": r["hash"],
                 "window": None if r["crop_top"] is None else
                 [r["crop_left"], r["crop_top"], r["crop_right"], r["crop_bottom"]]} for r in rows]

    def example_images(self, layer: str) -> dict[int, list[int]]:
        """Per unit of ``layer``, the image ids of its top examples, best first."""
        self._layer_row(layer)
        out: dict[int, list[int]] = {}
        for r in self._query("SELECT unit, image FROM examples WHERE layer = ? ORDER BY unit, rank", (layer,)):
            out.setdefault(r["unit"], []).append(r["image"])
        return out

    def naming(self) -> dict | None:
        """How this atlas's units were named (:mod:`convscope.atlas.names`): the naming step's
        record (``model``, ``rule``, ``classified``, ``unreadable``; ``available``
        False with a ``reason`` where it could not name), or None for an atlas never named."""
        rows = self._query("SELECT value FROM meta WHERE key = 'names'")
        return json.loads(rows[0]["value"]) if rows else None

    def image_classes(self) -> dict[int, list[tuple[int, float]]]:
        """Per image id, the classifier's top classes of that model input as (class index,
        probability), most probable first; empty for an atlas never named."""
        if not self._has_table("image_classes"):
            return {}
        return {r["image"]: [(int(c), float(p)) for c, p in json.loads(r["top"])]
                for r in self._query("SELECT image, top FROM image_classes")}

    def unit_names(self, layer: str | None = None, source: str | None = None) -> list[dict]:
        """The units' names (:mod:`convscope.atlas.names`), in network and unit order: layer,
        unit, source ("wordnet" or "concept"), named (bool), key (a WordNet synset id or a
        concept's name), name, count (of the unit's top examples that share it), total (its top
        examples), base (the share of the atlas's example images that are one), chance (the
        probability of ``count`` or more of ``total`` by luck at that base rate). An unnamed unit
        gives its closest label, or None as key and name where no two examples share one. Empty
        for an atlas never named."""
        if layer is not None:
            self._layer_row(layer)
        if not self._has_table("unit_names"):
            return []
        where, args = [], []
        for column, value in (("n.layer", layer), ("n.source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self._query("SELECT n.* FROM unit_names n JOIN layers l ON n.layer = l.name"
                           + (" WHERE " + " AND ".join(where) if where else "")
                           + " ORDER BY l.position, n.unit, n.source", args)
        return [{"layer": r["layer"], "unit": r["unit"], "source": r["source"], "named": bool(r["named"]),
                 "key": r["key"], "name": r["name"], "count": r["count"], "total": r["total"], "base": r["base"],
                 "chance": r["chance"]} for r in rows]

    def set_names(self, classes: dict[int, list[tuple[int, float]]], names: list[dict], record: dict) -> None:
        """Write the naming step's results in one transaction, replacing any earlier ones:
        ``classes`` ({image id: [(class, probability), ...]}), ``names`` (records as
        :meth:`unit_names` gives them) and ``record`` (the meta entry :meth:`naming` gives)."""
        with self._lock:
            rw = sqlite3.connect(self._db)
            try:
                with rw:
                    rw.executescript(NAMES_SCHEMA)
                with rw:
                    rw.execute("DELETE FROM image_classes")
                    rw.execute("DELETE FROM unit_names")
                    rw.executemany("INSERT INTO image_classes VALUES (?, ?)",
                                   [(int(i), json.dumps([[int(c), round(float(p), 6)] for c, p in top]))
                                    for i, top in sorted(classes.items())])
                    rw.executemany("INSERT INTO unit_names VALUES (?,?,?,?,?,?,?,?,?,?)",
                                   [(n["layer"], int(n["unit"]), n["source"], int(n["named"]), n["key"], n["name"],
                                     int(n["count"]), int(n["total"]), json_number(n["base"]),
                                     json_number(n["chance"])) for n in names])
                    rw.execute("INSERT OR REPLACE INTO meta VALUES ('names', ?)", (json.dumps(record),))
            finally:
                rw.close()

    def _has_table(self, name: str) -> bool:
        return bool(self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def path(self, relative: str | os.PathLike) -> Path:
        """Absolute path of a file inside the atlas; anything that would leave the atlas folder
        (absolute paths, ``..``, links pointing out) raises :class:`ConvscopeError`."""
        rel = str(relative)
        if not rel or Path(rel).is_absolute() or rel.startswith(("/", "\\")):
            raise ConvscopeError(f"{rel!r} is not a path inside the atlas")
        root = self.root.resolve()
        p = (root / rel).resolve()
        if p != root and root not in p.parents:
            raise ConvscopeError(f"{rel!r} is outside the atlas")
        return p

    def state(self, device: str = "cpu"):
        """The final :class:`~convscope.scan.ScanState` (to merge more scans into)."""
        return ScanState.load(self.root / STATE_NAME, device)

    def skipped(self) -> list[tuple[str, str]]:
        """The photos the scan could not read, as (path as given, reason), in input order."""
        where = " WHERE phase = 'scan'" if self._phases else ""
        return [(r["path"], r["reason"]) for r in self._query(f"SELECT path, reason FROM skipped{where} ORDER BY rowid")]

    def unreadable(self) -> list[tuple[str, str]]:
        """The photos that were scanned but could not be read again to cut their patches and
        projections (removed, changed or damaged since the scan), as (path as given, reason);
        their examples have no patch, and their layers are not ``complete``. Empty for atlases
        written before this was kept."""
        if not self._phases:
            return []
        rows = self._query("SELECT path, reason FROM skipped WHERE phase = 'render' ORDER BY rowid")
        return [(r["path"], r["reason"]) for r in rows]

    # ------------------------------------------------------------------ internals

    def _layer_row(self, name: str) -> dict:
        for r in self._layers:
            if r["name"] == name:
                return r
        raise unknown_name_error("layer", name, self.layers, cls=ConvscopeError,
                                 hint=f"It is not in this atlas, whose layers are: {', '.join(self.layers)}.")

    def _check_unit(self, layer: str, unit: int) -> None:
        c = self._layer_row(layer)["channels"]
        if not isinstance(unit, (int, np.integer)) or not 0 <= int(unit) < c:
            raise ConvscopeError(f"layer {layer!r} has units 0 to {c - 1}; there is no unit {unit}")

    @staticmethod
    def _layer_dict(r: dict) -> dict:
        return {
            "name": r["name"],
            "type": r["type"],
            "shape": [r["channels"], r["height"], r["width"]],
            "stride": [r["stride_y"], r["stride_x"]],
            "receptive_field": [r["rf_y"], r["rf_x"]],
            "offset": [r["offset_y"], r["offset_x"]],
            "units": r["channels"],
            "complete": bool(r["complete"]),
            "ranked_by": r.get("ranked_by"),
            "deconvnet": deconvnet_entry(r),
        }

    def __repr__(self) -> str:
        return f"Atlas({str(self.root)!r}, {len(self._layers)} layers)"


def unit_missing(examples: list[dict], featvis: str | None, methods: Sequence[str], on_demand: bool = False,
                 building: bool = False) -> dict:
    """What a unit lacks, from its ``examples`` (:meth:`Atlas.examples`), its ``featvis`` file (or
    None) and its layer's ``methods`` (:meth:`Atlas.methods`): ``patches``, the ranks without a
    patch where patches are cut ``on_demand`` (:attr:`Atlas.patches_on_demand`); ``projections``, the
    ranks of the examples that have a patch (their photo was read) but not every method's
    projection; ``featvis``, True when it has none; ``methods``; ``any``, whether anything lacks.
    A snapshot of a build in progress (``building``) lacks only patches: the rest waits for the
    finished atlas. What the fill (:mod:`convscope.atlas.fill`) adds and the unit page offers."""
    patches = [ex["rank"] for ex in examples if on_demand and not ex["patch"]]
    ranks = [] if building else [ex["rank"] for ex in examples if ex["patch"] and any(not ex[m] for m in methods)]
    featvis_lacking = featvis is None and not building
    return {"patches": patches, "projections": ranks, "featvis": featvis_lacking, "methods": list(methods),
            "any": bool(patches) or bool(ranks) or featvis_lacking}


def deconvnet_entry(r: dict) -> dict | None:
    """A layer row's deconvnet dependence for the reader (None for atlases without it)."""
    if r.get("deconvnet_depends") is None:
        return None
    depends, computed = bool(r["deconvnet_depends"]), bool(r["deconvnet_computed"])
    if depends:
        note = r["deconvnet_reason"].removeprefix("the deconvnet ")  # "depends on the image through ..."
    else:
        note = (f"image-independent here (no max-pool or other forward-dependent routing between the input and "
                f"{r['name']!r}: the projection depends only on the unit and its position); "
                + ("guided backprop shown" if not computed else "computed anyway (deconvnet='always')"))
    return {"depends": depends, "reason": r["deconvnet_reason"], "switches": json.loads(r["deconvnet_switches"] or "[]"),
            "computed": computed, "note": note}


# --------------------------------------------------------------------------- writing


__all__ = [
    "DB_NAME", "SNAPSHOT_NAME", "FORMAT", "FORMAT_VERSION", "METHODS", "NAMES_SCHEMA", "PARTIAL", "QUANTILES", "SCHEMA", "STATE_NAME", "Atlas",
    "IncompleteAtlasError", "deconvnet_entry", "fsync_file", "unit_missing",
]
