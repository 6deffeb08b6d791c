"""The atlas on disk: Zeiler & Fergus's figure 2 for every unit of chosen layers, over any photos.

An atlas is a folder (schema in ``docs/atlas.md``)::

    atlas.sqlite                      model, preprocessing, layers, units, images, examples
    patches/<image id>/<t>_<l>_<b>_<r>.png        an example's receptive field on the model input
    layers/<layer>/unit_<u>/top_<r>_deconvnet.png its projection, cropped to the same box
    layers/<layer>/unit_<u>/top_<r>_guided.png
    featvis/<layer>/unit_<u>.png      feature visualizations added later (:meth:`Atlas.set_featvis`)
    scan_state.pt                     the final ScanState (merge more images in later)

:func:`build` scans the photos (:func:`convscope.scan.scan`), then re-reads only the photos of the
top examples to cut their patches and project them back to pixels in batches
(:func:`convscope.backproject.project`). Until it finishes, everything in progress lives in
``.partial/`` (the scan checkpoint and the database being written); ``atlas.sqlite`` appears by
an atomic rename only once complete, so a crash never leaves an atlas that reads as complete,
and ``build(..., resume=True)`` continues where it stopped.

>>> atlas = build(load_model(), ["photos/"], "atlas/", top=9)
>>> atlas = Atlas.open("atlas/")
>>> atlas.examples("blocks.2", 7)[0]["patch"]
'patches/412/40_96_107_163.png'
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import ConvscopeError, ImageError

FORMAT = "convscope-atlas"
FORMAT_VERSION = 1
DB_NAME = "atlas.sqlite"
PARTIAL = ".partial"
STATE_NAME = "scan_state.pt"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 32
METHODS = ("deconvnet", "guided")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE layers (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE, type TEXT NOT NULL,
    channels INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    stride_y INTEGER NOT NULL, stride_x INTEGER NOT NULL, rf_y INTEGER NOT NULL, rf_x INTEGER NOT NULL,
    offset_y INTEGER NOT NULL, offset_x INTEGER NOT NULL, complete INTEGER NOT NULL
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
    PRIMARY KEY (layer, unit, rank)
);
CREATE TABLE skipped (path TEXT NOT NULL, reason TEXT NOT NULL);
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

    def __init__(self, root: Path, conn: sqlite3.Connection):
        self.root = root
        self._conn = conn
        self._lock = threading.Lock()
        self._meta = {k: json.loads(v) for k, v in self._query("SELECT key, value FROM meta")}
        self._layers = [dict(r) for r in self._query("SELECT * FROM layers ORDER BY position")]

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Atlas":
        """Open the atlas in ``directory``; an unfinished build raises :class:`IncompleteAtlasError`
        (one line, saying to rerun with ``--resume``)."""
        root = Path(directory)
        db = root / DB_NAME
        resume_hint = f"finish it with `convscope atlas build IMAGES... --out {root} --resume` (same arguments)"
        if not db.is_file():
            if (root / PARTIAL).exists():
                raise IncompleteAtlasError(f"the atlas in {root} is incomplete (its build stopped before the end); {resume_hint}")
            if not root.is_dir():
                raise ConvscopeError(f"no atlas folder {root}; build one with `convscope atlas build IMAGES... --out {root}`")
            raise ConvscopeError(f"{root} holds no atlas ({DB_NAME} is missing); build one with `convscope atlas build IMAGES... --out {root}`")
        try:
            conn = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            complete = conn.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
            fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConvscopeError(f"{db} is not a readable atlas database ({exc}); rebuild it with --overwrite") from None
        if fmt is None or json.loads(fmt[0]) != FORMAT:
            conn.close()
            raise ConvscopeError(f"{db} is not a convscope atlas; rebuild it with --overwrite")
        if complete is None or json.loads(complete[0]) is not True:
            conn.close()
            raise IncompleteAtlasError(f"the atlas in {root} is incomplete (its build stopped before the end); {resume_hint}")
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
        }

    @property
    def layers(self) -> list[str]:
        """Layer names in network order."""
        return [r["name"] for r in self._layers]

    def layer(self, name: str) -> dict:
        """One layer: name, type, shape (C, H, W), stride, receptive_field and offset ([y, x] input
        pixels), units (count), complete (all projections computed)."""
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
        """The top examples of one unit, best first: rank, image (photo path), image_id, crop,
        hash (sha256 of the file), value, y, x (on the layer's map), box (top, left, bottom,
        right on the model input), box_original (the same on the photo), crop_box (the crop's
        window on the photo), and patch, deconvnet, guided (relative paths, or None)."""
        self._check_unit(layer, unit)
        rows = self._query(
            "SELECT e.*, i.path, i.hash, i.crop, i.width, i.height, i.crop_top, i.crop_left, i.crop_bottom, i.crop_right "
            "FROM examples e JOIN images i ON e.image = i.id WHERE e.layer = ? AND e.unit = ? ORDER BY e.rank",
            (layer, int(unit)),
        )
        return [
            {
                "rank": r["rank"],
                "image": r["path"],
                "image_id": r["image"],
                "crop": r["crop"],
                "hash": r["hash"],
                "value": r["value"],
                "y": r["y"],
                "x": r["x"],
                "box": [r["box_top"], r["box_left"], r["box_bottom"], r["box_right"]],
                "box_original": None if r["orig_top"] is None else [r["orig_top"], r["orig_left"], r["orig_bottom"], r["orig_right"]],
                "crop_box": None if r["crop_top"] is None else [r["crop_top"], r["crop_left"], r["crop_bottom"], r["crop_right"]],
                "image_size": None if r["width"] is None else [r["width"], r["height"]],
                "patch": r["patch"],
                "deconvnet": r["deconvnet"],
                "guided": r["guided"],
            }
            for r in rows
        ]

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
        relative = f"featvis/{_safe(layer)}/unit_{int(unit):04d}.png"
        dest = self.root / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        with self._lock:
            rw = sqlite3.connect(self.root / DB_NAME)
            try:
                with rw:
                    rw.execute("UPDATE units SET featvis = ? WHERE layer = ? AND unit = ?", (relative, layer, int(unit)))
            finally:
                rw.close()
        return relative

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
        from .scan import ScanState

        return ScanState.load(self.root / STATE_NAME, device)

    def skipped(self) -> list[tuple[str, str]]:
        return [(r["path"], r["reason"]) for r in self._query("SELECT path, reason FROM skipped ORDER BY rowid")]

    # ------------------------------------------------------------------ internals

    def _layer_row(self, name: str) -> dict:
        for r in self._layers:
            if r["name"] == name:
                return r
        import difflib

        close = difflib.get_close_matches(name, self.layers, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConvscopeError(f"layer {name!r} is not in this atlas.{hint} Its layers: {', '.join(self.layers)}")

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
        }

    def __repr__(self) -> str:
        return f"Atlas({str(self.root)!r}, {len(self._layers)} layers)"


# --------------------------------------------------------------------------- building


def _safe(name: str) -> str:
    """A layer name as a folder name (dotted names are kept; anything odd becomes _)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=6)
    os.replace(tmp, path)


def _prepare(out: Path, resume: bool, overwrite: bool) -> None:
    """Check what ``out`` holds and clear it as asked, before any work."""
    db, partial = out / DB_NAME, out / PARTIAL
    if overwrite:
        for name in (DB_NAME, STATE_NAME):
            if (out / name).exists():
                (out / name).unlink()
        for name in (PARTIAL, "patches", "layers", "featvis"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        return
    if db.exists() and not resume:
        raise ConvscopeError(f"{out} already holds an atlas; pass --overwrite to replace it, or choose another --out")
    if partial.exists() and not resume:
        raise ConvscopeError(f"{out} holds an unfinished atlas build; pass --resume to continue it, or --overwrite to start again")
    if out.exists() and not out.is_dir():
        raise ConvscopeError(f"--out {out} is a file; give a folder for the atlas")
    if out.is_dir() and not partial.exists() and any(out.iterdir()):
        raise ConvscopeError(f"{out} is not empty and holds no atlas; give a new or empty folder as --out")


def build(
    model,
    images: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    layers: Sequence[str] | str | None = None,
    top: int = 9,
    *,
    crops=None,
    batch_size: int = 32,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 1000,
    project: int | None = None,
    methods: Sequence[str] = METHODS,
    projection_batch: int | None = None,
    progress: bool | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> Atlas:
    """Build an atlas of ``model`` over ``images`` in the folder ``out``; returns it opened.

    ``images``: files, folders, globs or ``@LIST`` files. ``layers``: dotted names (default: the
    catalogue's default selection). ``top``: examples kept per unit. ``crops``: grid levels per
    photo, e.g. ``"1,2,3"`` (see :class:`convscope.scan.Crops`). ``batch_size``: model inputs
    per forward pass, for the scan and for the projections. The scan state is checkpointed into
    ``out/.partial`` every ``checkpoint_every`` photos; ``resume=True`` continues an interrupted
    build and gives exactly the atlas an uninterrupted one gives. ``project``: how many of each
    unit's top examples get projections (default: all ``top``; 0: none). ``methods``: projection
    methods (``convscope.backproject.METHODS``). ``projection_batch``: whole inputs per
    projection batch (default: ``batch_size`` on a GPU, at most 8 on a CPU, where larger batches
    outgrow the caches and run slower per example).

    >>> atlas = build(load_model(), ["photos/"], "atlas/", layers=["blocks.2"], top=9)
    """
    from .runtime import keep_freed_memory
    from .scan import scan

    keep_freed_memory()  # big batches reuse freed memory instead of page-faulting (see runtime)
    started = time.time()
    out = Path(out)
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive whole number, got {top!r}")
    project = top if project is None else int(project)
    if project < 0:
        raise ValueError(f"the number of examples to project must be 0 or more, got {project}")
    from .backproject import METHODS as KNOWN

    methods = tuple(methods)
    for m in methods:
        if m not in KNOWN:
            raise ValueError(f"unknown projection method {m!r}; choose from {', '.join(KNOWN)}")
    _prepare(out, resume, overwrite)
    if resume and (out / DB_NAME).exists():  # finished already (say, killed while cleaning up)
        return Atlas.open(out)
    partial = out / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    result = scan(
        model, images, layers, top, crops=crops, batch_size=batch_size, workers=workers,
        checkpoint=partial / "scan.ckpt", checkpoint_every=checkpoint_every, resume=resume,
        progress=progress, on_skip=on_skip,
    )
    jobs, items = _examples(result, model)
    photos = _photo_records(result, items)
    if projection_batch is None:
        projection_batch = batch_size if model.device.type == "cuda" else min(batch_size, 8)
    stats: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        incomplete = _render(model, result, jobs, items, photos, out, project, methods, projection_batch, progress, stats)
    notes = _summarize_warnings(caught)
    stats = {info.name: stats[info.name] for info in result.layers if info.name in stats}  # network order
    db_tmp = partial / DB_NAME
    if db_tmp.exists():
        db_tmp.unlink()
    _write_db(db_tmp, model, result, jobs, items, photos, incomplete, {"methods": list(methods), "per_unit": project,
              "layers": stats, "notes": notes}, time.time() - started)
    result.state.save(out / STATE_NAME, {"paths": result.paths, "crops": list(result.crops.levels)})
    os.replace(db_tmp, out / DB_NAME)  # the commit point: the atlas is complete from here on
    shutil.rmtree(partial, ignore_errors=True)
    return Atlas.open(out)


def _summarize_warnings(caught) -> list[str]:
    """The projection rules warn once per activation module (EfficientNet: dozens of ReLU6):
    keep their notes for the atlas and warn once; pass any other warning on unchanged."""
    from .backproject import ActivationRuleWarning

    notes: list[str] = []
    for w in caught:
        if issubclass(w.category, ActivationRuleWarning):
            if str(w.message) not in notes:
                notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if notes:
        layers = {n.split(" is ")[0].split(" works in place")[0] for n in notes}  # a note per activation and method
        warnings.warn(
            f"projections: substitute rules for {len(layers)} activations that are not plain ReLUs, "
            f"e.g. {notes[0]} (all listed in `convscope atlas info --json`, under projections.notes)",
            ActivationRuleWarning, stacklevel=3,
        )
    return notes


def _examples(result, model) -> tuple[list[dict], dict[int, dict]]:
    """Every (layer, unit, rank) example with its box, and the image items they need."""
    jobs: list[dict] = []
    items: dict[int, dict] = {}
    size = model.preprocessing.input_size
    for li, info in enumerate(result.layers):
        values, ids, ys, xs = result.state.top(info.name)
        valid = ids >= 0
        for u, r in torch.nonzero(valid).tolist():
            image_id = int(ids[u, r])
            y, x = int(ys[u, r]), int(xs[u, r])
            photo, crop = result.photo_of(image_id)
            jobs.append({
                "layer": info.name, "layer_index": li, "unit": u, "rank": r, "image": image_id,
                "value": float(values[u, r]), "y": y, "x": x, "box": tuple(int(v) for v in info.box(y, x, size)),
            })
            items.setdefault(image_id, {"photo": photo, "crop": crop})
    return jobs, items


def _photo_records(result, items: dict[int, dict]) -> dict[int, dict]:
    photos = {}
    for item in items.values():
        p = item["photo"]
        if p not in photos:
            photos[p] = {"path": os.path.abspath(result.paths[p]), "hash": _sha256(result.paths[p])}
    return photos


def _load_inputs(model, result, photo: int, crops_wanted: Sequence[int]) -> tuple[dict[int, torch.Tensor], tuple[int, int], list]:
    """Model inputs of the wanted crops of one photo, its size (W, H) and all its windows."""
    from .data import load_image

    img = load_image(result.paths[photo])
    windows = result.crops.windows(*img.size)
    transform = model.transform
    return {c: transform(img.crop(windows[c])) for c in crops_wanted}, img.size, windows


def _render(model, result, jobs, items, photos, out: Path, project: int, methods, batch_size: int, progress,
            stats: dict) -> set:
    """Patches for every example and projections for the first ``project`` ranks: photos read
    in chunks (in image id order), examples of one layer projected ``batch_size`` at a time.
    Fills each job's patch / method paths and each item's window, and ``stats`` with per-layer
    counts of windowed / whole-input projections; returns the layers left incomplete."""
    from .progress import Bar
    from .scan import input_box_to_original

    prep = model.preprocessing
    example = torch.randn(1, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    module, memory_format = _projection_module(model.module, example, [info.name for info in result.layers])
    by_item: dict[int, list[dict]] = {}
    for job in jobs:
        by_item.setdefault(job["image"], []).append(job)
    order = sorted(items)
    chunk = max(1, min(256, 4 * batch_size))
    incomplete: set[str] = set()
    n_work = len(jobs) + sum(1 for j in jobs if j["rank"] < project) * len(methods)
    with Bar(n_work, "projecting", disable=None if progress is None else not progress) as bar:
        for start in range(0, len(order), chunk):
            ids = order[start : start + chunk]
            inputs: dict[int, torch.Tensor] = {}
            wanted: dict[int, list[int]] = {}
            for i in ids:
                wanted.setdefault(items[i]["photo"], []).append(items[i]["crop"])
            for photo, crops_wanted in wanted.items():
                try:
                    tensors, size, windows = _load_inputs(model, result, photo, crops_wanted)
                except ImageError as exc:  # changed or removed since the scan
                    photos[photo]["error"] = exc.reason
                    continue
                photos[photo]["size"] = size
                for c, t in tensors.items():
                    image_id = photo * result.crops.count + c + result.offset * result.crops.count
                    inputs[image_id] = t
                    items[image_id]["window"] = windows[c]
            # patches (deduplicated: deep layers share whole-input boxes)
            for i in ids:
                if i not in inputs:
                    for job in by_item[i]:
                        incomplete.add(job["layer"])
                    continue
                pixels = None
                for job in by_item[i]:
                    t, l, b, r = job["box"]
                    job["box_original"] = input_box_to_original(job["box"], items[i]["window"], prep)
                    rel = f"patches/{i}/{t}_{l}_{b}_{r}.png"
                    if rel not in items[i].setdefault("written", set()):
                        if pixels is None:
                            pixels = prep.denormalize(inputs[i].unsqueeze(0))[0].clamp(0, 1)
                            pixels = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                        _save_png(np.ascontiguousarray(pixels[t:b, l:r]), out / rel)
                        items[i]["written"].add(rel)
                    job["patch"] = rel
                bar.advance(len(by_item[i]))
            # projections, per layer, batch_size examples per backward pass
            todo = [j for i in ids if i in inputs for j in by_item[i] if j["rank"] < project]
            todo.sort(key=lambda j: (j["layer_index"], j["image"], j["unit"], j["rank"]))
            for li in sorted({j["layer_index"] for j in todo}):
                group = [j for j in todo if j["layer_index"] == li]
                counts = _project_layer(module, memory_format, result.layers[li], group, inputs, methods,
                                        batch_size, out, bar)
                layer_counts = stats.setdefault(result.layers[li].name, {})
                for k, v in counts.items():
                    layer_counts[k] = layer_counts.get(k, 0) + v
    return incomplete


def _window(info, y: int, x: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The smallest window (top, left, bottom, right) of the model input that holds the
    receptive field of unit (y, x), its edges on multiples of the layer's stride (so that every
    layer below sees the same grid and padding as on the whole input) or on the input's border."""
    t, l, b, r = info.box(y, x)
    (sy, sx), (h, w) = info.stride, size
    if sy <= 0 or sx <= 0:
        return 0, 0, h, w
    return (max(0, t // sy * sy), max(0, l // sx * sx), min(h, -(-b // sy) * sy), min(w, -(-r // sx) * sx))


def project_boxes(
    module: torch.nn.Module,
    info,
    inputs: Sequence[torch.Tensor],
    units: Sequence[int],
    positions: Sequence[tuple[int, int]],
    values: Sequence[float] | None = None,
    methods: Sequence[str] = METHODS,
    batch_size: int = 32,
    memory_format: torch.memory_format = torch.contiguous_format,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """Projections of N examples of layer ``info`` (a LayerInfo), each cropped to its unit's
    receptive-field box: example ``k`` is unit ``units[k]`` at ``positions[k]`` (y, x) on the
    map of model input ``inputs[k]`` (3, H, W). Returns, per example, ``{method: (3, h, w)}``
    on the CPU, and counts of ``windowed``, ``whole_input`` and ``fallbacks`` examples.

    Every method of one batch shares one forward pass (:func:`~convscope.backproject.forward_pass`).

    Each example runs on the window of the input that holds its receptive field, edges on
    multiples of the layer's stride (:func:`_window`): a unit with a 3-pixel field costs a
    32 x 32 window, not the whole input. That is exact for networks whose units see only their
    receptive field, and checked: the unit's value on the window must match ``values[k]`` (the
    scan's; computed on the whole input when not given) to 1e-4 of the largest, else the
    example runs on the whole input (a gate that sees everything without the gradient showing
    it). ``batch_size`` whole inputs per batch, or as many windows as fit in the same number of
    pixels (at most 16 times as many). A window of more than half the input is not worth its
    own forward pass: such examples go with the whole-input ones.

    Examples whose field is the whole input share a forward pass per input: examples given the
    same tensor object are on the same input, and a batch of ``batch_size`` distinct inputs
    runs forward once, then one backward pass per method for each round of at most one
    example per input (the rectifying rules are not linear, so two seeds on one input cannot
    share a backward pass).

    >>> crops, counts = project_boxes(module, model.layers.get("blocks.2"), [x[0], x[1]], [3, 7], [(5, 9), (0, 2)])
    """
    from .backproject import forward_pass, project_methods

    n = len(inputs)
    if not (len(units) == len(positions) == n) or (values is not None and len(values) != n):
        raise ValueError("project_boxes needs one unit, one position (and one value) per input")
    methods = list(methods)
    size = tuple(int(v) for v in inputs[0].shape[-2:]) if n else (0, 0)
    full = (0, 0, size[0], size[1])
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    sy, sx = max(1, info.stride[0]), max(1, info.stride[1])
    if values is None and n:
        from .hooks import forward_layers

        values = []
        for s in range(0, n, batch_size):
            x = torch.stack(list(inputs[s : s + batch_size])).to(device).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                out = forward_layers(module, x, [info.name])[info.name]
            for i, k in enumerate(range(s, s + len(x))):
                values.append(float(out[i, units[k], positions[k][0], positions[k][1]]))
    scale = max((abs(v) for v in values), default=1.0) if n else 1.0
    tolerance = 1e-4 * max(scale, 1e-3)
    results: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]

    def keep(k: int, w: tuple, method: str, p: torch.Tensor) -> None:
        t, l, b, r = info.box(*positions[k], size)
        results[k][method] = p[:, t - w[0] : b - w[0], l - w[1] : r - w[1]]

    def run_windows(entries: list[tuple[int, tuple]]) -> list[int]:
        failed: list[int] = []
        if not entries:
            return failed
        w0 = entries[0][1]
        per_batch = max(1, min(16 * batch_size, batch_size * (size[0] * size[1]) // ((w0[2] - w0[0]) * (w0[3] - w0[1]))))
        for s in range(0, len(entries), per_batch):
            batch = entries[s : s + per_batch]
            x = torch.stack([inputs[k][:, w[0] : w[2], w[1] : w[3]] for k, w in batch]).to(device)
            x = x.contiguous(memory_format=memory_format)
            us = [units[k] for k, _ in batch]
            ps = [(positions[k][0] - w[0] // sy, positions[k][1] - w[1] // sx) for k, w in batch]
            res = project_methods(module, x, info.name, us, ps, methods)
            got = res[methods[0]].activations.float().cpu().tolist()
            ok = [abs(v - values[k]) <= tolerance for v, (k, _w) in zip(got, batch)]
            failed += [k for good, (k, _w) in zip(ok, batch) if not good]
            for method in methods:
                for good, (k, w), p in zip(ok, batch, res[method].pixels.float().cpu()):
                    if good:
                        keep(k, w, method, p)
            if on_done is not None:
                on_done(sum(ok))
        return failed

    def run_whole(ks: list[int]) -> None:
        # examples grouped by input; inputs with most examples first, so a batch's rounds are full
        by_input: dict[int, list[int]] = {}
        for k in ks:
            by_input.setdefault(id(inputs[k]), []).append(k)
        queues = sorted(by_input.values(), key=len, reverse=True)
        for s in range(0, len(queues), batch_size):
            batch = queues[s : s + batch_size]
            x = torch.stack([inputs[q[0]] for q in batch]).to(device).contiguous(memory_format=memory_format)
            rounds = len(batch[0])
            with forward_pass(module, x, [info.name], methods, warn=True) as fp:
                out = fp.outputs[info.name]
                for r in range(rounds):
                    rows = [(i, q[r]) for i, q in enumerate(batch) if r < len(q)]
                    seed = torch.zeros_like(out)
                    for i, k in rows:
                        seed[i, units[k], positions[k][0], positions[k][1]] = 1.0
                    for mi, method in enumerate(methods):
                        last = r == rounds - 1 and mi == len(methods) - 1
                        pixels = fp.backward({info.name: seed}, method, retain=not last).float().cpu()
                        for i, k in rows:
                            keep(k, full, method, pixels[i])
                    if on_done is not None:
                        on_done(len(rows))

    by_size: dict[tuple[int, int], list[tuple[int, tuple]]] = {}
    for k in range(n):
        w = _window(info, positions[k][0], positions[k][1], size)
        if 2 * (w[2] - w[0]) * (w[3] - w[1]) > size[0] * size[1]:
            w = full  # a window of most of the input saves little; the shared forward saves more
        by_size.setdefault((w[2] - w[0], w[3] - w[1]), []).append((k, w))
    redo: list[int] = []
    for hw in sorted(key for key in by_size if key != size):
        redo += run_windows(by_size[hw])
    run_whole([k for k, _w in by_size.get(size, [])] + redo)
    windowed = sum(len(v) for key, v in by_size.items() if key != size)
    return results, {"windowed": windowed - len(redo), "whole_input": len(by_size.get(size, [])), "fallbacks": len(redo)}


def _project_layer(module, memory_format, info, group, inputs, methods, batch_size, out, bar) -> dict:
    """Projections of one layer's examples (``group``: jobs), written as PNG files."""
    from .backproject import to_image

    results, counts = project_boxes(
        module, info, [inputs[j["image"]] for j in group], [j["unit"] for j in group],
        [(j["y"], j["x"]) for j in group], [j["value"] for j in group], methods, batch_size, memory_format,
        on_done=lambda k: bar.advance(k * len(methods)),
    )
    for j, res in zip(group, results):
        for method, p in res.items():
            rel = f"layers/{_safe(info.name)}/unit_{j['unit']:04d}/top_{j['rank']:02d}_{method}.png"
            _save_png(to_image(p), out / rel)
            j[method] = rel
    return counts


def _projection_module(module: torch.nn.Module, example: torch.Tensor | None = None,
                       layers: Sequence[str] = ()) -> tuple[torch.nn.Module, torch.memory_format]:
    """A private copy of the model for the projections: eval-mode BatchNorms folded into their
    convolutions (:func:`convscope.fold.fold_batchnorm`, checked on ``example`` against the
    outputs of ``layers``; about 1.3x faster on EfficientNet), depthwise TensorFlow "same"
    padding made static (:mod:`convscope.samepad`, checked too; 6%), and channels-last (about
    1.3x faster convolution backward passes on CPU, more on GPU); the user's model is left as
    it is. Falls back to the model itself where it cannot be copied."""
    import copy

    from .fold import fold_batchnorm

    try:
        if example is not None:
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            # TF32 convolutions on a GPU round at about 1e-3
            private, _ = fold_batchnorm(module, example.to(device), layers, rtol=1e-3 if device.type == "cuda" else 1e-4)
        else:
            private = copy.deepcopy(module)
    except Exception:  # a module holding something uncopyable: use it as it is
        return module, torch.contiguous_format
    if example is not None:
        from .samepad import static_same_padding

        static_same_padding(private, example.to(device))  # TF "same" padding without F.pad copies
    for p in private.parameters():
        p.requires_grad_(False)
    return private.to(memory_format=torch.channels_last), torch.channels_last


def _display_histogram(hist: torch.Tensor, mids: np.ndarray, lo: float, hi: float) -> dict:
    """One unit's sketch counts (value order) rebinned into HISTOGRAM_BINS equal bins over
    [lo, hi] (each sketch bin goes whole to the bin of its midpoint), for drawing."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return {"counts": [], "edges": []}
    if hi <= lo:
        hi = lo + max(1e-6, abs(lo) * 1e-6)
    out_edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    counts = hist.numpy()
    nz = counts > 0
    which = np.clip(np.searchsorted(out_edges, np.clip(mids[nz], lo, hi), side="right") - 1, 0, HISTOGRAM_BINS - 1)
    binned = np.bincount(which, weights=counts[nz], minlength=HISTOGRAM_BINS)
    return {"counts": [int(v) for v in binned], "edges": [float(v) for v in out_edges]}


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _write_db(path: Path, model, result, jobs, items, photos, incomplete, projections: dict, seconds) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executescript(SCHEMA)
        with conn:  # one transaction: all of the atlas, the `complete` flag last
            crops = result.crops
            describe = model.describe()
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": describe,
                "preprocessing": model.preprocessing.to_dict(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "images": {
                    "inputs": len(result.paths),
                    "scanned": result.photos_scanned,
                    "skipped": len(result.skipped),
                    "crops_per_photo": crops.count,
                    "scanned_crops": result.state.images,
                },
                "top_k": result.state.top_k,
                "crops": crops.to_dict(),
                "projections": projections,
                "sketch": {**result.state.sketch.to_dict(), "bins": result.state.sketch.bins},
                "sampled_positions": {i.name: result.state.sketch.positions(*i.shape[1:]) for i in result.layers},
                "quantile_levels": list(QUANTILES),
                "build_seconds": round(seconds, 1),
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            for pos, info in enumerate(result.layers):
                c, h, w = info.shape
                conn.execute(
                    "INSERT INTO layers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (info.name, pos, info.type, c, h, w, info.stride[0], info.stride[1], info.receptive_field[0],
                     info.receptive_field[1], info.offset[0], info.offset[1], int(info.name not in incomplete)),
                )
                conn.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?,?,?)", _unit_rows(result, info.name))
            for image_id in sorted(items):
                item = items[image_id]
                photo = photos[item["photo"]]
                size = photo.get("size")
                win = item.get("window")
                conn.execute(
                    "INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (image_id, item["photo"] + result.offset, item["crop"], photo["path"], photo["hash"],
                     size[0] if size else None, size[1] if size else None,
                     win[1] if win else None, win[0] if win else None, win[3] if win else None, win[2] if win else None),
                )
            conn.executemany(
                "INSERT INTO examples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (j["layer"], j["unit"], j["rank"], j["image"], j["value"], j["y"], j["x"], *j["box"],
                     *(j.get("box_original") or (None,) * 4), j.get("patch"), j.get("deconvnet"), j.get("guided"))
                    for j in jobs
                ],
            )
            conn.executemany("INSERT INTO skipped VALUES (?, ?)", [(p, r) for p, r in result.skipped])
            conn.execute("INSERT INTO meta VALUES ('complete', 'true')")
    finally:
        conn.close()


def _unit_rows(result, layer: str):
    s = result.state.summary(layer, QUANTILES)
    values = result.state.tensors[layer]["values"].cpu()
    edges = s["edges"]
    mids = result.state.sketch.mids().numpy()
    for u in range(values.shape[0]):
        hist = s["hist"][u]
        nz = torch.nonzero(hist).flatten()
        first, last = (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0)
        sketch = {
            "first": first,
            "counts": hist[first:last].tolist(),
            "edges": [_finite(float(e)) for e in edges[first : last + 1]] if last else [],
        }
        lo, hi = float(s["min"][u]), float(s["max"][u])
        yield (
            layer, u, _finite(float(values[u, 0])), float(s["mean"][u]), _finite(lo), _finite(hi),
            float(s["frac_positive"][u]),
            json.dumps({str(q): _finite(float(v)) for q, v in zip(QUANTILES, s["quantiles"][u].tolist())}),
            json.dumps(_display_histogram(hist, mids, lo, hi)),
            json.dumps(sketch),
            None,
        )


__all__ = ["Atlas", "IncompleteAtlasError", "build", "project_boxes", "SCHEMA"]
