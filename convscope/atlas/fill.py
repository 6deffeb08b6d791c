"""Filling in what an atlas left out, one unit at a time: the projections of its top examples
and its feature visualization, computed with the build's own code and settings and written
into the atlas atomically.

An atlas built quickly (``atlas build --project 3``, the demo) has projections for a few of
each unit's top examples and feature visualizations for a few units. A gallery server has the
model, so it computes the rest when a page asks (:mod:`convscope.web.fill_pages`); this module
is that computation, and knows nothing of the web.

- Projections: :func:`convscope.atlas.projecting.project_examples`, the build's own step, on the
  same private copy of the model (:func:`convscope.backproject.projection_module` made for all
  the atlas's layers, as the build makes it), the same display (robust contrast, the energy
  crop) and the same file names; the methods are the layer's own (the deconvnet stays out
  where the atlas left it out as image-independent). The photo is read again and its sha256
  checked against the scan's, as the build does. So a filled example's files equal what
  ``atlas build --project K`` would have written for it.
- Feature visualizations: :func:`convscope.featvis.render` of the one unit with
  ``featvis --atlas``'s settings (:data:`FEATVIS`) or the ones given; each unit has its own
  seeded generator, so rendering it alone gives its image from a batch.

Every picture is written to a temporary file, fsynced and renamed into place before
``atlas.sqlite`` names it (:meth:`Atlas.set_projections`, one transaction per unit), so a crash leaves either the old atlas
or the filled one. Filling a unit that lacks nothing does nothing (idempotent).

>>> filler = Filler(Atlas.open("atlas/"), model)
>>> filler.missing("blocks.2", 7)
{'projections': [3, 4, 5], 'featvis': True, 'methods': ['guided'], 'any': True}
>>> filler.fill("blocks.2", 7)
{'layer': 'blocks.2', 'unit': 7, 'projections': [3, 4, 5], 'featvis': True, 'seconds': 2.1}
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ..errors import ConvscopeError, ImageError
from .store import Atlas, fsync_file

#: Seconds between two records of patches cut photo by photo (:meth:`Filler.cut_layer`): a
#: page sees them within about this long, and a layer of 1,280 units takes a few transactions.
RECORD_EVERY = 1.0
#: ``convscope featvis``'s defaults: what ``featvis --atlas`` renders with unless told otherwise.
FEATVIS = {"steps": 512, "size": 128, "seed": 0, "param": "fourier", "lr": 0.05}


def lacking(missing: dict, featvis: bool) -> dict:
    """``missing`` (:func:`convscope.atlas.store.unit_missing`) as a filler sees it: without the
    feature visualization unless it fills them (``featvis``)."""
    if featvis:
        return missing
    return {**missing, "featvis": False, "any": bool(missing["patches"]) or bool(missing["projections"])}


class _Steps:
    """The projection step's progress bar, turned into the place between two projection
    batches where a ``pause`` (see :meth:`Filler.fill`) lets other work use the model. The
    user's model is free there: the batches run on the filler's private copy."""

    def __init__(self, pause):
        self.pause = pause

    def advance(self, n: int = 1) -> None:
        _between(self.pause)


def _between(pause) -> None:
    if pause is not None and pause.wanted():
        pause()


class Filler:
    """Fills units of one open ``atlas`` with ``model`` (the :class:`~convscope.models.LoadedModel`
    the atlas was built with). ``featvis``: :func:`convscope.featvis.render` settings (steps,
    size, seed, param, lr) over :data:`FEATVIS`, or False for no feature visualizations.
    ``batch_size``: whole inputs per projection batch (the build's CPU default, 8). Not
    thread-safe: use it from one thread (the gallery's model thread)."""

    def __init__(self, atlas: Atlas, model, featvis: dict | bool = True, batch_size: int = 8):
        self.atlas = atlas
        self.model = model
        self.featvis = False if featvis is False else {**FEATVIS, **(featvis if isinstance(featvis, dict) else {})}
        self.batch_size = int(batch_size)
        self._private = None

    def missing(self, layer: str, unit: int) -> dict:
        """What ``unit`` of ``layer`` lacks (:meth:`Atlas.missing`), less the feature
        visualization when this filler makes none."""
        return lacking(self.atlas.missing(layer, unit), bool(self.featvis))

    def fill(self, layer: str, unit: int, on_projections=None, pause=None) -> dict:
        """Compute and write what ``unit`` of ``layer`` lacks (:meth:`missing`); returns what was
        added (``projections``: ranks, ``featvis``: bool) and the ``seconds`` it took. A photo
        that can no longer be read, or changed since the scan, is one line
        (:class:`~convscope.errors.ConvscopeError`) and leaves the atlas as it was.
        ``on_projections()`` is called once the projections are written, before the (slower)
        feature visualization, so a page can show them meanwhile. ``pause``: a server's
        (:class:`convscope.web.workers.Pause`), called between steps (each photo read, each
        projection batch, each feature-visualization step) when ``pause.wanted()``, with the
        model as it was given; the pictures are the same."""
        started = time.monotonic()
        todo = self.missing(layer, unit)
        patches = todo["patches"]
        if patches:
            self._patches(layer, {int(unit): patches}, pause)
            todo = self.missing(layer, unit)  # the projections of the examples that now have a patch
            if on_projections is not None and not todo["projections"]:
                on_projections()
        if todo["projections"]:
            self._project(layer, unit, todo["projections"], todo["methods"], pause)
            if on_projections is not None:
                on_projections()
        if todo["featvis"]:
            self._featvis(layer, unit, pause)
        return {"layer": layer, "unit": int(unit), "patches": patches, "projections": todo["projections"],
                "featvis": todo["featvis"],
                "seconds": round(time.monotonic() - started, 2)}

    # ------------------------------------------------------------------ patches

    def fill_tops(self, layer: str, pause=None) -> dict:
        """Cut the top patch of every unit of ``layer`` that lacks one (what its layer page
        shows first), each photo read once; returns ``{"layer", "patches": how many, "seconds"}``."""
        started = time.monotonic()
        wanted = {}
        if self.atlas.patches_on_demand:
            wanted = {u: [0] for u, ranks in self.atlas.lacking_patches(layer).items() if 0 in ranks}
        self._patches(layer, wanted, pause)
        return {"layer": layer, "patches": len(wanted), "seconds": round(time.monotonic() - started, 2)}

    def cut_layer(self, layer: str, pause=None, stop=None, on_record=None) -> dict:
        """Cut every patch ``layer`` lacks (an atlas whose patches are cut on demand), photo by
        photo in image-id order, each photo read once for all its examples in the layer. A photo
        that cannot be read again, or changed, is skipped and listed (``unreadable``: path,
        reason) instead of stopping the rest. ``stop()``, asked between photos, ends it early
        when true (what is cut so far is recorded); ``on_record(units, patches)`` hears the units
        whose patches each record named and how many it named (a record every
        :data:`RECORD_EVERY` seconds: one transaction, the files fsynced before). Returns
        ``{"layer", "patches": how many cut, "done": whether none lacks now but the unreadable
        photos', "unreadable", "seconds"}``."""
        started = time.monotonic()
        wanted = self.atlas.lacking_patches(layer) if self.atlas.patches_on_demand else {}
        unreadable: list[tuple[str, str]] = []
        cut, stopped = self._patches(layer, wanted, pause, stop=stop, on_record=on_record, unreadable=unreadable,
                                     every=RECORD_EVERY)
        return {"layer": layer, "patches": cut, "done": not stopped, "unreadable": unreadable,
                "seconds": round(time.monotonic() - started, 2)}

    def _patches(self, layer: str, wanted: dict[int, list[int]], pause, stop=None, on_record=None,
                 unreadable: list | None = None, every: float | None = None) -> tuple[int, bool]:
        """Cut the patches of the examples ``wanted`` (unit -> ranks) as the build does
        (:func:`~convscope.atlas.builder.render`: the same pixels, file names and boxes on the
        photo), photo by photo, each read again once and its sha256 checked against the scan's
        (a photo that fails is one line, or, given ``unreadable``, listed there and skipped); the
        files are fsynced before the database names them (:meth:`Atlas.set_patches`, in one
        transaction at the end, so a failure leaves the atlas as it was; or, given ``every``,
        also whenever that many seconds passed since the last record). Returns how many were cut
        and whether ``stop()`` ended it early."""
        from ..data import load_image_hashed
        from .builder import input_pixels, save_patch

        prep, root = self.model.preprocessing, self.atlas.root
        by_photo: dict[str, list[tuple[int, dict]]] = {}
        for unit, ranks in wanted.items():
            for ex in self.atlas.examples(layer, unit):
                if ex["rank"] in ranks:
                    by_photo.setdefault(ex["path"], []).append((unit, ex))
        order = sorted(by_photo.values(), key=lambda group: min(ex["image_id"] for _u, ex in group))
        cut: dict[int, dict[int, tuple]] = {}
        images: dict[int, tuple] = {}
        count, recorded = 0, time.monotonic()

        def record() -> None:
            if cut:
                self.atlas.set_patches(layer, cut, images)
                if on_record is not None:
                    on_record(sorted(cut), sum(len(ranks) for ranks in cut.values()))
                cut.clear()
                images.clear()

        for done, group in enumerate(order):
            if stop is not None and done and stop():
                record()
                return count, True
            unit, ex = group[0]
            try:
                img = self._photo(layer, unit, ex, load_image_hashed)
            except ConvscopeError as exc:
                if unreadable is None:
                    raise
                unreadable.append((ex["path"], str(exc)))
                continue
            pixels: dict[int, object] = {}
            for unit, ex in group:
                i = ex["image_id"]
                if i not in pixels:
                    window = self.atlas.crop_window(ex["crop"], *img.size)
                    pixels[i] = input_pixels(prep, self.model.transform(img.crop(window)))
                    images[i] = (img.size, window)
                rel = save_patch(pixels[i], ex["box"], root, i)
                fsync_file(root / rel)
                cut.setdefault(unit, {})[ex["rank"]] = (rel, prep.input_box_to_original(tuple(ex["box"]), images[i][1]), i)
                count += 1
            del img, pixels
            if every is not None and time.monotonic() - recorded >= every:
                record()
                recorded = time.monotonic()
            _between(pause)
        record()
        return count, False

    def _photo(self, layer: str, unit: int, ex: dict, load):
        """The photo of example ``ex``, read again; one line if it cannot be, or changed."""
        what = f"example {ex['rank'] + 1} of unit {unit} of {layer!r}: its photo {Path(ex['path']).name}"
        try:
            img, sha256 = load(ex["path"])
        except ImageError as exc:
            raise ConvscopeError(f"cannot show {what} cannot be read again ({exc.reason})") from None
        if ex["sha256"] is not None and sha256 != ex["sha256"]:
            raise ConvscopeError(f"cannot show {what} changed since the scan (its sha256 differs); build the atlas again")
        return img

    # ------------------------------------------------------------------ projections

    def _module(self):
        """The build's private copy of the model, made once (for all the atlas's layers)."""
        if self._private is None:
            from ..backproject import projection_module

            example = torch.randn(1, 3, *self.model.input_size, generator=torch.Generator().manual_seed(0))
            self._private = projection_module(self.model.module, example, self.atlas.layers)
        return self._private

    def _project(self, layer: str, unit: int, ranks: list[int], methods: list[str], pause) -> None:
        import warnings

        from ..backproject import ActivationRuleWarning
        from ..data import load_image_hashed
        from .projecting import project_examples
        from .records import ExampleRecord

        examples = {ex["rank"]: ex for ex in self.atlas.examples(layer, unit)}
        info = self.model.layers.get(layer)
        position = self.atlas.layers.index(layer)
        inputs: dict[int, torch.Tensor] = {}
        group = []
        for rank in ranks:
            ex = examples[rank]
            if ex["image_id"] not in inputs:
                try:
                    img, sha256 = load_image_hashed(ex["path"])
                except ImageError as exc:
                    raise ConvscopeError(f"cannot project example {rank + 1} of unit {unit} of {layer!r}: its photo "
                                         f"{Path(ex['path']).name} cannot be read again ({exc.reason})") from None
                if ex["sha256"] is not None and sha256 != ex["sha256"]:
                    raise ConvscopeError(f"cannot project example {rank + 1} of unit {unit} of {layer!r}: its photo "
                                         f"{Path(ex['path']).name} changed since the scan (its sha256 differs); "
                                         "build the atlas again")
                inputs[ex["image_id"]] = self.model.transform(img.crop(tuple(ex["window"] or (0, 0, *img.size))))
                del img
                _between(pause)
            group.append(ExampleRecord(layer, position, int(unit), rank, ex["image_id"], float(ex["value"]),
                                       ex["y"], ex["x"], tuple(ex["box"]), pre=ex["pre"]))
        module, memory_format = self._module()
        _between(pause)
        group.sort(key=lambda e: (e.image_id, e.rank))  # the build's order within a layer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ActivationRuleWarning)  # the build recorded them in its notes
            project_examples(module, memory_format, info, group, inputs, tuple(methods), self.batch_size,
                           self.atlas.root, _Steps(pause))
        for e in group:  # the files are on disk before the database names them
            for rel in e.projections.values():
                fsync_file(self.atlas.root / rel)
        self.atlas.set_projections(layer, unit, {e.rank: (e.projections, e.display_box) for e in group})

    # ------------------------------------------------------------------ feature visualization

    def _featvis(self, layer: str, unit: int, pause) -> None:
        from .. import featvis

        s = self.featvis
        result = featvis.render(self.model, layer, [int(unit)], steps=s["steps"], size=s["size"], seed=s["seed"],
                                param=s["param"], lr=s["lr"], progress=False, pause=pause)
        with tempfile.TemporaryDirectory(prefix="convscope-fill-") as tmp:
            png = Path(tmp) / "featvis.png"
            result.image(0).save(png)
            self.atlas.set_featvis(layer, int(unit), png)  # atomic file, then one UPDATE


__all__ = ["FEATVIS", "Filler", "RECORD_EVERY", "lacking"]
