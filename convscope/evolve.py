"""Features evolving across the checkpoints of a training run (Zeiler & Fergus 2014, figure 4).

One scan per checkpoint over the same photos, the photos decoded once: each batch goes through
every checkpoint's model in turn. Then, per chosen unit and checkpoint, the unit's strongest
example (its receptive-field patch) and that example's projection back to pixels, drawn as a
grid per layer (units as rows, checkpoints as columns).

Two numbers per unit say how much it still changes from one checkpoint to the next:

* ``overlap``: the share of its top-``top`` images that the next checkpoint keeps (1: the same
  images; about ``top / photos``: unrelated ones);
* ``correlation``: the Pearson correlation of its mean activation map (the unit's map averaged
  over all photos, H x W) at the two checkpoints (1: the same spatial pattern). A map that is
  constant at one checkpoint and not at the other (a 1 x 1 map, a dead unit) has no correlation:
  NaN, left out of the layer's mean. Identical maps give exactly 1.

Per layer the means of both over all its units show which layers have converged: in Zeiler and
Fergus's training the lower layers settled within a few epochs, the upper ones only after 40-50.

>>> result = evolve("torchvision:resnet18", ["ep01.pt", "ep05.pt", "ep20.pt"], ["photos/"],
...                 layers=["layer1", "layer4"])
>>> result.changes("layer4")                     # per step: mean overlap and correlation
>>> result.save("evolve/")                       # one grid per layer, the change plot, JSON lines
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .backproject import layer_methods, project
from .checkpoints import checkpoint_labels, checkpoint_models
from .choices import DEFAULT_UNITS
from .crops import Crops
from .data import expand_inputs, iter_batches, load_image
from .display import shown_box, to_picture
from .errors import ArgumentError, ConvscopeError, unknown_layer_error
from .files import atomic_write, json_number, printable_path, safe_name, write_text_atomic
from .hooks import capture, run
from .models import LoadedModel, Preprocessing
from .progress import Bar
from .scan import Scan, ScanState



@dataclasses.dataclass
class Cell:
    """One unit at one checkpoint: its strongest example ``photo`` (a path), where on the
    layer's map (``y``, ``x``) and how strongly (``value``); ``box`` (top, left, bottom, right)
    the part of the model input shown: the receptive field, or the energy crop inside it for a
    whole-input field (as the atlas's ``display_box``); ``patch`` that part of the model input and
    ``projection`` the example's projection on it, drawn by :func:`convscope.display.to_picture`,
    both (h, w, 3) uint8."""

    photo: str
    value: float
    y: int
    x: int
    box: tuple[int, int, int, int]
    patch: np.ndarray
    projection: np.ndarray


@dataclasses.dataclass
class LayerEvolution:
    """One layer across the checkpoints. ``overlap`` and ``correlation`` are (steps, C) arrays,
    row ``s`` comparing checkpoint ``s`` with ``s + 1``, for every unit of the layer; ``units``
    are the units drawn, and ``cells[i][c]`` is unit ``units[i]`` at checkpoint ``c``."""

    layer: str
    channels: int
    units: list[int]
    overlap: np.ndarray
    correlation: np.ndarray
    cells: list[list[Cell]]
    #: The projection drawn (:func:`convscope.backproject.layer_methods`: guided backprop stands in
    #: for the deconvnet where it cannot depend on the image) and why, when it stands in.
    method: str = "deconvnet"
    method_note: str | None = None

    def mean_overlap(self) -> np.ndarray:
        """(steps,) the layer's mean overlap per step."""
        return self.overlap.mean(axis=1)

    def mean_correlation(self) -> np.ndarray:
        """(steps,) the mean correlation per step over the units that have one (NaN if none)."""
        c = self.correlation
        ok = ~np.isnan(c)
        with np.errstate(invalid="ignore"):
            return np.where(ok.any(axis=1), np.nansum(c, axis=1) / np.maximum(ok.sum(axis=1), 1), np.nan)


@dataclasses.dataclass
class Evolution:
    """What :func:`evolve` returns: the ``checkpoints`` (their labels, in order), the ``scans``
    (one :class:`~convscope.scan.Scan` per checkpoint), the ``layers`` by name
    (:class:`LayerEvolution`), ``top``, the projection ``method`` and the ``photos`` scanned."""

    checkpoints: list[str]
    scans: list[Scan]
    layers: dict[str, LayerEvolution]
    top: int
    method: str
    photos: int
    skipped: list[tuple[str, str]]

    @property
    def steps(self) -> list[tuple[str, str]]:
        """The consecutive pairs of checkpoint labels the numbers compare."""
        return list(zip(self.checkpoints[:-1], self.checkpoints[1:]))

    def changes(self, layer: str) -> list[dict]:
        """Per step of ``layer``: ``{"from", "to", "overlap", "correlation"}``, the layer means."""
        ev = self._layer(layer)
        return [
            {"from": a, "to": b, "overlap": float(o), "correlation": json_number(r)}
            for (a, b), o, r in zip(self.steps, ev.mean_overlap(), ev.mean_correlation())
        ]

    def records(self, all_units: bool = False) -> list[dict]:
        """JSON-ready records, one per layer and step (``"unit": None``, the layer means, with
        ``"units"`` the number of units averaged), then one per unit and step: ``{"layer",
        "unit", "from", "to", "overlap", "correlation"}`` (correlation None where undefined).
        Units: the drawn ones, or every unit of the layer with ``all_units``."""
        out = []
        for name, ev in self.layers.items():
            for s, ((a, b), o, r) in enumerate(zip(self.steps, ev.mean_overlap(), ev.mean_correlation())):
                out.append({"layer": name, "unit": None, "from": a, "to": b, "overlap": float(o),
                            "correlation": json_number(r), "units": ev.channels})
            for u in (range(ev.channels) if all_units else ev.units):
                for s, (a, b) in enumerate(self.steps):
                    out.append({"layer": name, "unit": int(u), "from": a, "to": b,
                                "overlap": float(ev.overlap[s, u]), "correlation": json_number(ev.correlation[s, u])})
        return out

    def to_json(self, all_units: bool = False) -> str:
        """:meth:`records` as JSON lines."""
        return "".join(json.dumps(r) + "\n" for r in self.records(all_units))

    def grid(self, layer: str, size: int = 64) -> "Image.Image":
        """Figure 4 for one layer: a row per drawn unit, a column per checkpoint; each cell the
        strongest patch (left) and its projection (right), each ``size`` pixels square, with the
        unit's overlap and correlation against the previous column under it."""
        return _draw_grid(self, self._layer(layer), size)

    def figure(self, size: int = 64) -> "Image.Image":
        """Every layer's :meth:`grid`, from the lowest layer down, each under its name."""
        return _draw_figure(self, size)

    def plot_changes(self, path: str | os.PathLike) -> Path:
        """A PNG of each layer's mean overlap and correlation against the step (matplotlib)."""
        return _plot_changes(self, Path(path))

    def save(self, out: str | os.PathLike, size: int = 64) -> list[Path]:
        """Write ``evolve-LAYER.png`` per layer, ``evolve-changes.png``, the cells with
        ``evolve.json`` (:func:`save_cells`, for the gallery) and ``evolve.jsonl`` (every unit)
        into folder ``out`` (atomically, each); returns the paths. A run saved over an older one
        first removes the older ``evolve.jsonl`` and ``evolve.json``, which are written last: a
        save stopped half-way leaves a folder that reads as incomplete, never old records over a
        mix of old and new pictures."""
        out = Path(out)
        for stale in (out / CHANGES, out / MANIFEST):
            stale.unlink(missing_ok=True)
        paths = []
        for name in self.layers:
            path = out / grid_name(name)
            with atomic_write(path) as f:
                self.grid(name, size).save(f, format="PNG")
            paths.append(path)
        paths.append(self.plot_changes(out / CHANGES_PLOT))
        paths += save_cells(self, out)
        path = out / CHANGES
        with atomic_write(path, "w") as f:
            f.write(self.to_json(all_units=True))
        paths.append(path)
        return paths

    def _layer(self, layer: str) -> LayerEvolution:
        if layer not in self.layers:
            raise unknown_layer_error(layer, self.layers)
        return self.layers[layer]


#: The gallery's manifest of an evolve run's cells, and the folder of the cell pictures.
MANIFEST = "evolve.json"
CELLS = "cells"
CELLS_FORMAT = 1


def save_cells(result, out: str | os.PathLike) -> list[Path]:
    """Write each drawn unit's strongest patch and projection at each checkpoint of ``result``
    (an :class:`~convscope.evolve.Evolution`) as ``cells/LAYER/UNIT-CHECKPOINT-patch.png`` and
    ``-projection.png``, and ``evolve.json`` listing them with the run's checkpoints, top,
    method and photos; atomically, each. Returns the paths. :meth:`Evolution.save` calls it; the
    gallery's evolve pages read it (:mod:`convscope.web.evolve_pages`)."""
    from PIL import Image

    out = Path(out)
    paths, layers = [], {}
    for name, ev in result.layers.items():
        folder = Path(CELLS) / safe_name(name)
        rows = []
        for unit, cells in zip(ev.units, ev.cells):
            row = []
            for c, cell in enumerate(cells):
                entry = {"photo": Path(cell.photo).name, "value": json_number(cell.value), "y": int(cell.y), "x": int(cell.x),
                         "box": [int(v) for v in cell.box]}
                for kind, pixels in (("patch", cell.patch), ("projection", cell.projection)):
                    rel = folder / f"{unit}-{c}-{kind}.png"
                    with atomic_write(out / rel) as f:
                        Image.fromarray(pixels).save(f, format="PNG")
                    paths.append(out / rel)
                    entry[kind] = rel.as_posix()
                row.append(entry)
            rows.append({"unit": int(unit), "cells": row})
        layers[name] = {"channels": int(ev.channels), "method": ev.method, "method_note": ev.method_note, "units": rows}
    manifest = {"format": CELLS_FORMAT, "checkpoints": list(result.checkpoints), "top": int(result.top),
                "method": result.method, "photos": int(result.photos), "layers": layers}
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return [*paths, out / MANIFEST]


# --------------------------------------------------------------------------- reading a run back

#: The records of a saved run: per layer and step the layer's means, then per unit and step its own.
CHANGES = "evolve.jsonl"
#: The plot of every layer's change numbers against the step.
CHANGES_PLOT = "evolve-changes.png"


class RunUnreadable(ConvscopeError, LookupError):
    """A folder that is not a readable evolve run; the message says why and how to write one."""


@dataclasses.dataclass(frozen=True)
class EvolveRun:
    """An evolve run read back from the folder :meth:`Evolution.save` wrote (the reader beside
    that writer). ``checkpoints``: their labels in order; ``layers``: per layer ``{"means":
    [step], "units": {unit: [step]}, "channels"}``, each step ``{"from", "to", "overlap",
    "correlation"}`` (None for what is not a finite number); ``manifest``: ``evolve.json``
    (:func:`save_cells`) or None, and then ``note`` says why.

    >>> run = EvolveRun.open("evolve/")
    >>> run.layers["layer1"]["means"][-1]["overlap"]
    0.95
    """

    root: Path
    checkpoints: list[str]
    layers: dict[str, dict]
    manifest: dict | None
    note: str | None

    @staticmethod
    def stamp(folder: str | os.PathLike) -> tuple:
        """What changes when the run in ``folder`` is saved again (its files' times and sizes)."""
        out = []
        for name in (CHANGES, MANIFEST):
            try:
                st = os.stat(Path(folder) / name)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "EvolveRun":
        """Read the run in ``folder``; :class:`RunUnreadable` with the reason when it has no
        readable ``evolve.jsonl``. A missing or unreadable ``evolve.json`` is a ``note``."""
        root = Path(folder)

        def fail(why: str):
            raise RunUnreadable(f"the evolve run {printable_path(str(root))} {why}; write one with "
                                "`convscope evolve PHOTOS --weights A.pt,B.pt --out RUN` and serve it with --evolve RUN")

        if not root.is_dir():
            fail("is not a folder")
        try:
            text = (root / CHANGES).read_text()
        except FileNotFoundError:
            fail(f"has no {CHANGES}")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"has an unreadable {CHANGES} ({exc.__class__.__name__})")
        layers: dict[str, dict] = {}
        try:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                r = json.loads(line)
                entry = layers.setdefault(str(r["layer"]), {"means": [], "units": {}, "channels": None})
                step = {"from": str(r["from"]), "to": str(r["to"]), "overlap": json_number(r["overlap"]),
                        "correlation": json_number(r.get("correlation"))}
                if r.get("unit") is None:
                    entry["means"].append(step)
                    entry["channels"] = r.get("units")
                else:
                    entry["units"].setdefault(int(r["unit"]), []).append(step)
        except (ValueError, KeyError, TypeError) as exc:
            fail(f"has a malformed {CHANGES} (line {n}: {exc.__class__.__name__} {exc})")
        if not layers:
            fail(f"has an empty {CHANGES}")
        first = next(iter(layers.values()))["means"]
        checkpoints = [s["from"] for s in first] + [first[-1]["to"]] if first else []
        manifest, note = None, None
        try:
            manifest = json.loads((root / MANIFEST).read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), dict):
                manifest, note = None, f"{MANIFEST} is not a run manifest"
        except FileNotFoundError:
            note = f"this run folder has no {MANIFEST}, so no per-unit pictures; the layer's grid picture is shown instead"
        except (OSError, ValueError) as exc:
            note = f"{MANIFEST} cannot be read ({exc.__class__.__name__}); the layer's grid picture is shown instead"
        if manifest and manifest.get("checkpoints"):
            checkpoints = [str(c) for c in manifest["checkpoints"]]
        return cls(root, checkpoints, layers, manifest, note)


def grid_name(layer: str) -> str:
    """The grid picture :meth:`Evolution.save` writes for ``layer``."""
    return f"evolve-{safe_name(layer)}.png"


# --------------------------------------------------------------------------- the numbers


def top_overlap(ids_a: torch.Tensor, ids_b: torch.Tensor) -> np.ndarray:
    """(C,) share of each unit's top images (ids (C, K), -1 for an empty slot) found in both:
    shared / the larger of the two sets."""
    valid_a, valid_b = ids_a >= 0, ids_b >= 0
    same = (ids_a[:, :, None] == ids_b[:, None, :]) & valid_a[:, :, None] & valid_b[:, None, :]
    shared = same.any(dim=2).sum(dim=1).double()
    size = torch.maximum(valid_a.sum(dim=1), valid_b.sum(dim=1)).clamp(min=1).double()
    return (shared / size).numpy()


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(C,) Pearson correlation of each unit's map in ``a`` and ``b`` (C, H, W); exactly 1 for
    identical maps, NaN where a map is constant and the two differ."""
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    identical = (a == b).all(dim=1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1))
    r = (a * b).sum(dim=1) / den
    r = torch.where(den > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))
    return torch.where(identical, torch.ones_like(r), r).numpy()


# --------------------------------------------------------------------------- the engine


def evolve(
    model: str | nn.Module | LoadedModel | Callable[[], nn.Module],
    checkpoints: Sequence,
    images: Iterable[str | os.PathLike],
    layers: Sequence[str] | str | None = None,
    units: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    *,
    count: int = DEFAULT_UNITS,
    top: int = 9,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    method: str = "deconvnet",
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Evolution:
    """How the units of ``layers`` change over the ``checkpoints`` of one training run.

    ``model``: the architecture (see :func:`convscope.checkpoints.checkpoint_models`: a spec such as
    ``"torchvision:resnet18"``, an ``nn.Module``, a ``LoadedModel`` or a function returning a
    module). ``checkpoints``: two or more files (or state dicts), in training order. ``images``:
    files, folders, globs or ``@LIST`` files, as :func:`~convscope.scan.scan` takes them; more
    photos than ``top`` (ten times as many makes the overlap meaningful). ``layers``: dotted
    names (default: the catalogue's default selection). ``units``: the units drawn per layer: a
    list (the same for every layer), ``{layer: [units]}`` (the layers left out get the
    strongest), or ``None`` for the ``count`` strongest at the last checkpoint (by their best
    value); the change numbers cover every unit
    either way. ``top``: images kept per unit. ``labels``: a name per checkpoint (default: the
    file names). ``method``: the projection, ``"deconvnet"`` (as the paper) or ``"guided"``.

    Every photo is decoded once, and each batch runs through every checkpoint's model in turn
    (all of them in memory at once); the few photos that are strongest examples are read again
    for their projections. Bad files are skipped and listed in ``Evolution.skipped``.

    >>> result = evolve(TinyNet, ["ep1.pt", "ep2.pt", "ep3.pt"], ["photos/"], ["conv1", "conv3"],
    ...                 preprocessing=Preprocessing((32, 32), 32, "bilinear", (.5,) * 3, (.5,) * 3))
    >>> result.to_json()
    """
    if not isinstance(top, int) or top < 1:
        raise ArgumentError(f"`top` must be a positive whole number, got {top!r}", param="top")
    if isinstance(units, int):
        raise TypeError(f"units are unit indices (a list, or {{layer: [units]}}); for the {units} strongest, pass count={units}")
    if units is None and (not isinstance(count, int) or count < 1):
        raise ArgumentError(f"`count` must be a whole number of at least 1 unit per layer, got {count!r}", param="count")
    checkpoints = list(checkpoints)
    if len(checkpoints) < 2:
        raise ArgumentError(f"evolve compares `checkpoints`: give two or more, got {len(checkpoints)}", param="checkpoints")
    names_of = list(labels) if labels is not None else checkpoint_labels(checkpoints)
    if len(names_of) != len(checkpoints):
        raise ArgumentError(f"got {len(names_of)} `labels` for {len(checkpoints)} checkpoints; give one per checkpoint",
                            param="labels")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths_p, missing = expand_inputs(images)
    paths = [str(p) for p in paths_p]
    if len(paths) <= top:
        raise ArgumentError(
            f"evolve needs more photos than top={top} (got {len(paths)}): with as many photos as top, "
            "every unit keeps the same top images and the overlap says nothing", param="top",
        )
    models = checkpoint_models(model, checkpoints, device=device, preprocessing=preprocessing)
    base = models[0]
    infos = base.layers.select(layers)
    if not infos:
        raise ArgumentError("no layers chosen; name some in `layers` (run `convscope layers`)", param="layers")
    named = _named_units(units, infos)
    skipped = [(e.path, e.reason) for e in missing]
    states, mean_maps = _scan_all(models, paths, infos, top, batch_size, workers, progress, skipped)
    seen = states[0].images
    if seen <= top:
        raise ArgumentError(f"only {seen} of the photos could be read, not more than `top={top}`; give more photos",
                            param="top")
    scans = [Scan(s, paths, infos, Crops(), list(skipped)) for s in states]

    chosen = {name: us if us is not None else _strongest(scans[-1], name, count) for name, us in named.items()}
    result_layers: dict[str, LayerEvolution] = {}
    for info in infos:
        ids = [s.state.top(info.name)[1] for s in scans]
        overlap = np.stack([top_overlap(a, b) for a, b in zip(ids[:-1], ids[1:])])
        corr = np.stack([map_correlation(a[info.name], b[info.name]) for a, b in zip(mean_maps[:-1], mean_maps[1:])])
        result_layers[info.name] = LayerEvolution(info.name, info.channels, chosen[info.name], overlap, corr, [])
    _draw_cells(models, scans, infos, result_layers, method, progress)
    return Evolution(names_of, scans, result_layers, top, method, seen, skipped)


def _scan_all(models, paths, infos, top, batch_size, workers, progress, skipped):
    """One :class:`ScanState` and one summed activation map (C, H, W) per layer for each model,
    each batch of photos decoded once and run through every model."""
    names = [i.name for i in infos]
    base = models[0]
    dev = base.device
    states = [ScanState({i.name: i.shape for i in infos}, top, m.device) for m in models]
    sums = [{i.name: torch.zeros(i.shape, dtype=torch.float64, device=m.device) for i in infos} for m in models]
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(capture(m.module, names, stop=True)) for m in models]
        bar = stack.enter_context(Bar(len(paths), f"scanning {len(models)} checkpoints",
                                      disable=None if progress is None else not progress))
        for batch in iter_batches(paths, base.transform, batch_size=batch_size, workers=workers):
            skipped.extend((e.path, e.reason) for e in batch.errors)
            if batch.indices:
                x = batch.tensors.to(dev)
                ids = torch.tensor(batch.indices, dtype=torch.long)
                with torch.inference_mode():
                    for m, out, state, acc in zip(models, outs, states, sums):
                        run(m.module, x.to(m.device), out)
                        state.update(out, ids)
                        for name in names:
                            acc[name] += out[name].sum(dim=0, dtype=torch.float64)
                        out.clear()
            bar.advance(len(batch.indices) + len(batch.errors))
    n = max(1, states[0].images)
    return states, [{k: (v / n).cpu() for k, v in acc.items()} for acc in sums]


def _named_units(units, infos) -> dict[str, list[int] | None]:
    """The units named per layer, checked against the layers' channels; None for a layer whose
    units are to be chosen after the scan (the strongest)."""
    channels = {i.name: i.channels for i in infos}
    if units is None:
        return {name: None for name in channels}
    if isinstance(units, Mapping):
        unknown = [k for k in units if k not in channels]
        if unknown:
            raise unknown_layer_error(unknown[0], list(channels))
        out = {name: ([int(u) for u in units[name]] if name in units else None) for name in channels}
    else:
        same = [int(u) for u in units]
        out = {name: list(same) for name in channels}
    for name, us in out.items():
        if us is None:
            continue
        bad = [u for u in us if not 0 <= u < channels[name]]
        if bad:
            raise ArgumentError(f"unit {bad[0]} is out of range for layer {name!r} (0..{channels[name] - 1})", param="units")
        if not us:
            raise ArgumentError(f"no `units` named for layer {name!r}; name at least one, or leave it out for the strongest",
                                param="units")
    return out


def _strongest(scan: Scan, layer: str, count: int) -> list[int]:
    """The ``count`` units of ``layer`` with the largest best value in ``scan``, in index order."""
    best = scan.state.top(layer)[0][:, 0].tolist()
    return sorted(sorted(range(len(best)), key=lambda u: (-best[u], u))[:count])


def _draw_cells(models, scans, infos, layers: dict[str, LayerEvolution], method, progress) -> None:
    """Fill each layer's cells: the strongest example of every drawn unit at every checkpoint,
    its patch and its projection (one backward pass per checkpoint and layer)."""
    base = models[0]
    wanted = {ex.path for scan in scans for info in infos for u in layers[info.name].units
              for ex in scan.examples(info.name, u)[:1]}
    transform = base.transform
    inputs = {p: transform(load_image(p)) for p in sorted(wanted)}
    size = tuple(base.preprocessing.input_size)
    # the checkpoints share one architecture, so one traced pass says where the deconvnet is blind
    chosen = layer_methods(base.module, [info.name for info in infos], (method,), input_size=size)
    for info in infos:
        ev = layers[info.name]
        ev.cells = [[] for _ in ev.units]
        ev.method, ev.method_note = chosen[info.name].methods[0], chosen[info.name].note
    with Bar(len(models) * len(infos), "projecting", disable=None if progress is None else not progress) as bar:
        for model, scan in zip(models, scans):
            for info in infos:
                ev = layers[info.name]
                best = [scan.examples(info.name, u)[0] for u in ev.units]
                x = torch.stack([inputs[e.path] for e in best])
                pixels = project(model, x, info.name, ev.units, positions=[(e.y, e.x) for e in best], method=ev.method)
                shown = base.preprocessing.denormalize(x).clamp(0, 1)
                for row, (e, proj, img) in enumerate(zip(best, pixels.cpu(), shown)):
                    t, l, b, r = info.box(e.y, e.x, size)
                    # drawn as the atlas draws it: robust contrast, the energy crop for a whole-input field
                    ct, cl, cb, cr = shown_box(proj[:, t:b, l:r], (t, l, b, r), size)
                    t, l, b, r = t + ct, l + cl, t + cb, l + cr
                    patch = (img[:, t:b, l:r].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                    ev.cells[row].append(Cell(e.path, e.value, e.y, e.x, (t, l, b, r), patch, to_picture(proj[:, t:b, l:r])[0]))
                bar.advance(1)


# --------------------------------------------------------------------------- the pictures

_INK, _SOFT, _PAPER = (30, 30, 30), (110, 110, 110), (255, 255, 255)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(pixels: np.ndarray, size: int) -> "Image.Image":
    """A patch or projection as a ``size`` square: blown up pixel for pixel (a 3-pixel field
    stays three blocks, as the network saw it), shrunk smoothly."""
    from PIL import Image

    img = Image.fromarray(pixels)
    if img.width == 0 or img.height == 0:
        return Image.new("RGB", (size, size), _PAPER)
    side = max(img.width, img.height)
    resample = Image.Resampling.NEAREST if side <= size else Image.Resampling.LANCZOS
    scale = size / side
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def _fmt(v: float) -> str:
    return "  -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _draw_grid(result: Evolution, ev: LayerEvolution, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    gap, col_gap, label_w, head_h, text_h = 2, 12, 58, 20, 14
    cell_w = 2 * size + gap
    cols = len(result.checkpoints)
    rows = len(ev.units)
    width = label_w + cols * cell_w + (cols - 1) * col_gap + 8
    height = head_h + rows * (size + text_h + 6) + text_h + 8
    img = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(img)
    font, small = _font(12), _font(10)
    x0 = [label_w + c * (cell_w + col_gap) for c in range(cols)]
    for c, name in enumerate(result.checkpoints):
        draw.text((x0[c] + cell_w / 2, 3), name, fill=_INK, font=font, anchor="ma")
    for row, (unit, cells) in enumerate(zip(ev.units, ev.cells)):
        y = head_h + row * (size + text_h + 6)
        draw.text((4, y + size / 2), f"unit {unit}", fill=_INK, font=font, anchor="lm")
        for c, cell in enumerate(cells):
            for k, pixels in enumerate((cell.patch, cell.projection)):
                pic = _fit(pixels, size)
                img.paste(pic, (x0[c] + k * (size + gap) + (size - pic.width) // 2, y + (size - pic.height) // 2))
            note = (f"act {cell.value:.3g}" if c == 0 else
                    f"top {_fmt(float(ev.overlap[c - 1, unit]))}  r {_fmt(float(ev.correlation[c - 1, unit]))}")
            draw.text((x0[c] + cell_w / 2, y + size + 2), note, fill=_SOFT, font=small, anchor="ma")
    y = head_h + rows * (size + text_h + 6) + 2
    draw.text((4, y), "layer", fill=_INK, font=small)
    for c, (o, r) in enumerate(zip(ev.mean_overlap(), ev.mean_correlation()), start=1):
        draw.text((x0[c] + cell_w / 2, y), f"top {_fmt(float(o))}  r {_fmt(float(r))}", fill=_INK, font=small, anchor="ma")
    return img


def _draw_figure(result: Evolution, size: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    parts = []
    for name, ev in result.layers.items():
        grid = _draw_grid(result, ev, size)
        title = Image.new("RGB", (grid.width, 22), _PAPER)
        ImageDraw.Draw(title).text((4, 4), f"layer {name}  ({ev.channels} units; top {result.top} of "
                                           f"{result.photos} photos; {ev.method})", fill=_INK, font=_font(13))
        parts += [title, grid]
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), _PAPER)
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def _plot_changes(result: Evolution, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), dpi=110)
    ax_o, ax_r = fig.subplots(1, 2)
    steps = [b for _a, b in result.steps]  # each point compares a checkpoint with the one before
    xs = range(len(steps))
    for name, ev in result.layers.items():
        ax_o.plot(xs, ev.mean_overlap(), marker="o", label=name)
        ax_r.plot(xs, ev.mean_correlation(), marker="o", label=name)
    for ax, title in ((ax_o, f"top-{result.top} images kept"), (ax_r, "mean-map correlation")):
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(xs), steps, fontsize=7, rotation=30 if len(steps) > 4 else 0, ha="right" if len(steps) > 4 else "center")
        ax.set_xlabel("checkpoint, against the one before", fontsize=8)
        ax.set_ylim(-0.05 if ax is ax_o else None, 1.05)
        ax.grid(alpha=0.3)
    ax_o.set_ylabel("layer mean (1 = unchanged)")
    ax_r.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return path


__all__ = ["Cell", "DEFAULT_UNITS", "Evolution", "LayerEvolution", "checkpoint_labels", "checkpoint_models",
           "evolve", "map_correlation", "top_overlap"]
