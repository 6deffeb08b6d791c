"""Building an atlas: Zeiler & Fergus's figure 2 for every unit of chosen layers, over any photos.

:func:`build` runs its steps in order, each a function here:

1. :func:`_prepare`: check what the folder holds (``overwrite``, ``resume``) before any work;
2. the scan (:func:`convscope.scan.scan`, or on Ray :func:`convscope.distributed.scan_with`),
   checkpointed in ``.partial/``: each unit's top images, and the sha256 of every photo among
   them, hashed from the bytes the scan decoded;
3. :func:`_records`: the records (:mod:`convscope.atlas.records`) of every example, image and
   photo;
4. :func:`render`: read only those photos again, cut the patches and project the examples in
   batches (:func:`convscope.backproject.project_boxes`, on the private copy of
   :func:`convscope.backproject.projection_module`), written as PNG files (on Ray, spread by
   photo over the actors: :func:`convscope.distributed.render`); a photo that cannot be read
   again, or whose bytes changed since the scan, is recorded as unreadable;
5. :func:`~convscope.atlas.store.write_db` into ``.partial/``, then
   :func:`convscope.stores.commit` renames it to ``atlas.sqlite``: the commit point, so a
   crash never leaves an atlas that reads as complete, and ``build(..., resume=True)`` continues
   where it stopped.

>>> atlas = build(load_model(), ["photos/"], "atlas/", top=9)
>>> atlas.examples("blocks.2", 7)[0]["patch"]
'patches/412/40_96_107_163.png'
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..backproject import ActivationRuleWarning, check_deconvnet, layer_methods, projection_module
from ..data import load_image_hashed
from ..errors import ArgumentError, ImageError, unknown_name_error
from ..files import atomic_write, disk_full_as_error, remove_stale_temps
from ..progress import Bar
from ..runtime import keep_freed_memory
from ..scan import RESUME_HINT, Scan, scan
from ..scan_settings import check_rank_by
from .records import ExampleRecord, ImageRecord, PhotoRecord, Records
from ..stores import PARTIAL, check_folder, commit, remove_partial, state, sync_written, writer_lock
from .store import DB_NAME, METHODS, SNAPSHOT_NAME, STATE_NAME, Atlas
from .projecting import Drawer, project_examples
from .write import write_db

#: Images read and projected together (:func:`image_chunks`). The examples of one layer whose
#: field is the whole input share a forward pass per image and run in rounds of one example per
#: image; with many images to choose from, the images of one batch have about as many examples
#: each, so few rows of a round run empty (on the 500 dev photos: 17,100 backward rows for
#: 15,400 such examples, against 21,200 with 32 images a chunk). 256 inputs are 150 MB.
CHUNK_IMAGES = 256


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
    ray: bool | str | None = None,
    ray_workers: int | None = None,
    rank_by: str = "auto",
    deconvnet: str = "auto",
    names: bool = True,
    snapshots: bool = False,
    patches: bool = True,
) -> Atlas:
    """Build an atlas of ``model`` over ``images`` in the folder ``out``; returns it opened.

    ``images``: files, folders, globs or ``@LIST`` files. ``layers``: dotted names (default: the
    catalogue's default selection). ``top``: examples kept per unit. ``crops``: grid levels per
    photo, e.g. ``"1,2,3"`` (see :class:`convscope.crops.Crops`). ``batch_size``: model inputs
    per forward pass, for the scan and for the projections. The scan state is checkpointed into
    ``out/.partial`` every ``checkpoint_every`` photos; ``resume=True`` continues an interrupted
    build and gives exactly the atlas an uninterrupted one gives. ``project``: how many of each
    unit's top examples get projections (default: all ``top``; 0: none). ``methods``: projection
    methods (of :data:`convscope.atlas.METHODS`). ``projection_batch``: whole inputs per
    projection batch (default: ``batch_size`` on a GPU, at most 8 on a CPU, where larger batches
    outgrow the caches and run slower per example). ``ray``: run the scan and the projections on a
    Ray cluster (True: a local Ray, or the one this process joined; ``"auto"`` or
    ``"HOST:PORT"``: that cluster; or a running :class:`convscope.distributed.Pool`) with
    ``ray_workers`` actors (default: one per GPU, else one per node): the same atlas as one
    process (:mod:`convscope.distributed`), ``workers`` then counting decoding processes per actor.
    ``rank_by``: what ranks each layer's top images (``"auto"``, ``"output"``,
    ``"pre-activation"``: :func:`convscope.scan.scan`'s); the atlas records it per layer and
    keeps both values per example. ``deconvnet``: ``"auto"`` computes guided backprop instead of
    the deconvnet projection in every layer where the deconvnet cannot depend on the image
    (:func:`convscope.backproject.layer_methods`: no max-pool or other forward-dependent
    routing below the layer, so the picture is the same for every photo), ``"always"``
    computes it everywhere; the dependence is recorded per layer either way. ``names``: name the
    units by WordNet once the atlas is committed (:func:`convscope.atlas.names.name_atlas`: one
    more read and forward pass of the example images; False leaves that to ``atlas name``).
    ``snapshots``: while the scan runs (in one process), publish what it has so far as
    ``out/.partial/snapshot.sqlite`` (:data:`~convscope.atlas.store.SNAPSHOT_NAME`), after the
    first batch, then every few seconds, and once more when the scan is done: a consistent atlas
    of the photos scanned so far, without patches, that ``Atlas.open(out, building=True)``
    reads (a gallery serves it while the build runs). ``patches=False`` (with ``project=0``)
    leaves every patch to be cut when its unit is first filled (:mod:`convscope.atlas.fill`),
    so the atlas is complete right after the scan.

    >>> atlas = build(load_model(), ["photos/"], "atlas/", layers=["blocks.2"], top=9)
    """
    keep_freed_memory()  # big batches reuse freed memory instead of page-faulting (see runtime)
    started = time.time()
    out = Path(out)
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive whole number, got {top!r}")
    project = top if project is None else int(project)
    if project < 0:
        raise ArgumentError(f"`project` (the examples per unit to project) must be 0 or more, got {project}",
                            param="project")
    methods = tuple(methods)
    for m in methods:
        if m not in METHODS:  # the atlas has a column for these only
            raise unknown_name_error("projection method", m, METHODS, list_all=True)
    check_deconvnet(deconvnet)
    check_rank_by(rank_by)
    choices = dict(rank_by=rank_by, deconvnet=deconvnet, snapshots=snapshots, patches=patches or project > 0)
    check_out(out, resume=resume, overwrite=overwrite)  # (a file as `out` is refused before the lock makes a folder)
    # One writer at a time. A full disk stops the build with one line; every file written so far
    # is whole, the last checkpoint included, and resume=True continues from it.
    with writer_lock(out, kind="atlas"), disk_full_as_error(out, RESUME_HINT):
        _prepare(out, resume, overwrite)
        if not ray:
            atlas = _build(model, images, out, layers, top, crops, batch_size, workers, resume, checkpoint_every,
                           project, methods, projection_batch, progress, on_skip, started, None, **choices)
        else:
            from .. import distributed

            with distributed.open_pool(ray, model, ray_workers) as pool:
                atlas = _build(model, images, out, layers, top, crops, batch_size, workers, resume, checkpoint_every,
                               project, methods, projection_batch, progress, on_skip, started, pool, **choices)
    if names and atlas.naming() is None:  # after the build's lock: the naming step takes it again
        from .names import name_atlas

        name_atlas(atlas, model, batch_size)
    return atlas


def _build(model, images, out: Path, layers, top, crops, batch_size, workers, resume, checkpoint_every, project,
           methods, projection_batch, progress, on_skip, started, pool, rank_by="auto", deconvnet="auto",
           snapshots=False, patches=True) -> Atlas:
    """:func:`build`'s steps, once its arguments are checked and ``out`` is prepared."""
    partial = out / PARTIAL
    if resume and state(out, DB_NAME).committed:  # finished already (say, killed while cleaning up)
        remove_partial(out)
        return Atlas.open(out)
    partial.mkdir(parents=True, exist_ok=True)
    kwargs = dict(crops=crops, batch_size=batch_size, workers=workers, checkpoint=partial / "scan.ckpt",
                  checkpoint_every=checkpoint_every, resume=resume, progress=progress, on_skip=on_skip, rank_by=rank_by)
    publish = Publisher(model, out, methods, started, deconvnet=deconvnet, layers=layers) if snapshots else None
    if pool is None:
        result = scan(model, images, layers, top, on_batch=publish, **kwargs)
    else:
        from .. import distributed

        result = distributed.scan_with(pool, images, layers, top, **kwargs)
    if publish is not None:
        publish.publish(result, "finishing")  # the scan's final top-k, while the patches are cut
    records = _records(result, model)
    dependence, skip_note = _deconvnet_methods(model, [info.name for info in result.layers], records, methods, deconvnet)
    if projection_batch is None:
        on_gpu = model.device.type == "cuda" if pool is None else pool.infos()[0].device.startswith("cuda")
        projection_batch = batch_size if on_gpu else min(batch_size, 8)
    stats: dict = {}
    job = RenderJob(result, records, out, project, methods, projection_batch, image_chunks(records),
                    progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if not patches:  # nothing to read again: every patch is cut on demand (convscope.atlas.fill)
            incomplete = set()
        elif pool is None:
            incomplete = render(model, job, stats)
        else:
            incomplete = distributed.render(pool, render, job, stats)
    notes = _summarize_warnings(caught) + ([skip_note] if skip_note else [])
    stats = {info.name: stats[info.name] for info in result.layers if info.name in stats}  # network order
    db_tmp = partial / DB_NAME
    for leftover in (db_tmp, *(db_tmp.with_name(DB_NAME + s) for s in ("-journal", "-wal", "-shm"))):
        if leftover.exists():  # of a killed write: SQLite would replay an old journal into the new file
            leftover.unlink()
    projections = {"methods": list(methods), "per_unit": project, "layers": stats, "notes": notes, "deconvnet": deconvnet,
                   "layer_methods": {name: list(ms) for name, ms in records.methods.items()},
                   **({} if patches else {"patches": False})}
    write_db(db_tmp, model, result, records, incomplete, projections, time.time() - started, dependence)
    result.state.save(out / STATE_NAME, {"paths": result.paths, "crops": list(result.crops.levels)})
    sync_written(out)  # the PNGs, written without an fsync each, are on disk before the commit
    remove_stale_temps(out)  # none of ours is left; any other is a killed run's
    commit(db_tmp, out / DB_NAME)  # the commit point: the atlas is complete from here on
    remove_partial(out)
    return Atlas.open(out)


def check_out(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse (:class:`~convscope.errors.FolderInUseError`) a folder ``out`` that a build with
    these ``resume`` and ``overwrite`` may not use; :func:`build` asks first, and so may a caller
    before it loads a model."""
    # overwrite replaces an atlas or an unfinished build, never a file or a folder of other things
    check_folder(out, DB_NAME, kind="atlas", resume=resume or overwrite, reuse=overwrite,
                 reuse_hint="give `overwrite=True` to replace it",
                 resume_hint="give `resume=True` to continue it, or `overwrite=True` to start again")


def _prepare(out: Path, resume: bool, overwrite: bool) -> None:
    """Check what ``out`` holds and clear it as asked, before any work; a build that goes on
    (resumed or overwritten) starts without the temporary files a killed run left."""
    check_out(out, resume=resume, overwrite=overwrite)
    if overwrite:
        for name in (DB_NAME, STATE_NAME):
            if (out / name).exists():
                (out / name).unlink()
        for name in (PARTIAL, "patches", "layers", "featvis"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        remove_stale_temps(out)
        return
    if resume:
        remove_stale_temps(out)


def _summarize_warnings(caught) -> list[str]:
    """The projection rules warn once per activation module (EfficientNet: dozens of ReLU6):
    keep their notes for the atlas and warn once; pass any other warning on unchanged."""
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
            f"e.g. {notes[0]} (all listed in the atlas's info, under projections.notes)",
            ActivationRuleWarning, stacklevel=3,
        )
    return notes


def _deconvnet_methods(model, names: list[str], records: Records, methods, deconvnet: str) -> tuple[dict, str | None]:
    """Each layer's projection methods (:func:`convscope.backproject.layer_methods`, one traced
    forward pass for all): ``records.methods`` holds those of the layers where guided backprop
    stands in for the deconvnet; returns whether each layer's deconvnet depends on the image, as
    the atlas records it, and the note saying where it was left out, for the build's notes."""
    chosen = layer_methods(model.module, names, methods, deconvnet, tuple(model.preprocessing.input_size))
    left_out = [n for n in names if chosen[n].note is not None]
    for n in left_out:
        records.methods[n] = chosen[n].methods
    table = {n: {**chosen[n].dependence.to_dict(), "computed": "deconvnet" in chosen[n].methods} for n in names}
    note = None
    if left_out:
        note = (f"deconvnet projections not computed for {', '.join(left_out)}: image-independent there (no max-pool "
                "or other forward-dependent routing between the input and the layer, so the deconvnet gives the same "
                "picture for every image); guided backprop shown (deconvnet='always' computes them)")
    return table, note


def _records(result, model) -> Records:
    """Every (layer, unit, rank) example with its box, the images they are on, and their photos."""
    examples: list[ExampleRecord] = []
    images: dict[int, ImageRecord] = {}
    size = model.preprocessing.input_size
    for li, info in enumerate(result.layers):
        keys, ids, ys, xs = result.state.top(info.name)
        values = result.state.outputs(info.name)
        by_pre = result.state.rank_by.get(info.name) == "pre-activation"
        for u, r in torch.nonzero(ids >= 0).tolist():
            image_id = int(ids[u, r])
            y, x = int(ys[u, r]), int(xs[u, r])
            box = tuple(int(v) for v in info.box(y, x, size))
            examples.append(ExampleRecord(info.name, li, u, r, image_id, float(values[u, r]), y, x, box,
                                          pre=float(keys[u, r]) if by_pre else None))
            if image_id not in images:
                images[image_id] = ImageRecord(image_id, *result.photo_of(image_id))
    photos: dict[int, PhotoRecord] = {}
    for image in images.values():
        p = image.photo
        if p not in photos:
            photos[p] = PhotoRecord(p, os.path.abspath(result.paths[p]), result.hashes.get(p))
    return Records(examples, images, photos)


def _load_inputs(model, result, photo: PhotoRecord, crops_wanted: Sequence[int]) -> tuple[dict[int, torch.Tensor], tuple[int, int], list]:
    """Model inputs of the wanted crops of one photo, its size (W, H) and all its windows; an
    :class:`ImageError` if it cannot be read again or its bytes are not those scanned."""
    path = result.paths[photo.index]
    img, sha256 = load_image_hashed(path)
    if photo.sha256 is None:  # a scan resumed from a checkpoint that kept no hashes
        photo.sha256 = sha256
    elif sha256 != photo.sha256:
        raise ImageError(path, "changed since the scan (its sha256 differs)")
    windows = result.crops.windows(*img.size)
    transform = model.transform
    return {c: transform(img.crop(windows[c])) for c in crops_wanted}, img.size, windows


@dataclasses.dataclass
class RenderJob:
    """What the render step (:func:`render`) takes besides the model: the scan ``result`` (its
    paths, crops and layers), the ``records`` it fills, the atlas folder ``out``, how many ranks
    per unit get projections (``project``) and by which ``methods``, ``batch_size`` examples per
    backward pass, the image ids read together (``chunks``, in order: :func:`image_chunks`) and
    ``progress``. The build on Ray sends one job per run of whole chunks
    (:func:`convscope.distributed.render`), so every batch holds what it holds in one process."""

    result: Scan
    records: Records
    out: Path
    project: int
    methods: tuple[str, ...]
    batch_size: int
    chunks: list[list[int]]
    progress: bool | None = None

    def work(self) -> dict[int, int]:
        """Per image id, the steps the progress bar counts: a patch per example, a projection
        per method of each example of the first ``project`` ranks."""
        work: dict[int, int] = {}
        for e in self.records.examples:
            steps = 1 + (len(self.records.methods_of(e.layer, self.methods)) if e.rank < self.project else 0)
            work[e.image_id] = work.get(e.image_id, 0) + steps
        return work


def image_chunks(records: Records, size: int = CHUNK_IMAGES) -> list[list[int]]:
    """The image ids of ``records`` in the order the render reads them (by id), cut into chunks of
    ``size`` images: the photos of a chunk are read, then its examples projected together, a
    layer at a time. The one owner of the cut, on one process or on Ray."""
    order = sorted(records.images)
    size = max(1, size)
    return [order[start : start + size] for start in range(0, len(order), size)]


def render(model, job: RenderJob, stats: dict) -> set[str]:
    """Patches for every example and projections for the first ``job.project`` ranks: photos read
    a chunk at a time, examples of one layer projected ``job.batch_size`` at a time. Fills each
    example's patch, box_original and projections, each image's window and each photo's size
    (or error), and ``stats`` with per-layer counts of windowed / whole-input projections;
    returns the layers left incomplete."""
    result, records, out, project, batch_size = job.result, job.records, job.out, job.project, job.batch_size
    prep = model.preprocessing
    example = torch.randn(1, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    module, memory_format = projection_module(model.module, example, [info.name for info in result.layers])
    by_image: dict[int, list[ExampleRecord]] = {}
    for e in records.examples:
        by_image.setdefault(e.image_id, []).append(e)
    incomplete: set[str] = set()
    per_layer = {info.name: records.methods_of(info.name, job.methods) for info in result.layers}
    work = job.work()
    label = "cutting patches and projecting" if project else "cutting patches"
    with Bar(sum(work.values()), label, disable=None if job.progress is None else not job.progress) as bar, \
            Drawer() as drawer:
        for ids in job.chunks:
            inputs: dict[int, torch.Tensor] = {}
            wanted: dict[int, list[int]] = {}
            for i in ids:
                wanted.setdefault(records.images[i].photo, []).append(records.images[i].crop)
            for p, crops_wanted in wanted.items():
                photo = records.photos[p]
                if photo.error is not None:  # failed in an earlier chunk: the same for all its crops
                    continue
                try:
                    tensors, size, windows = _load_inputs(model, result, photo, crops_wanted)
                except ImageError as exc:  # removed, changed or damaged since the scan
                    photo.error = exc.reason
                    continue
                photo.size = size
                for c, t in tensors.items():
                    image_id = result.image_id(p, c)
                    inputs[image_id] = t
                    records.images[image_id].window = windows[c]
            # patches (deduplicated: deep layers share whole-input boxes)
            for i in ids:
                if i not in inputs:
                    incomplete.update(e.layer for e in by_image[i])
                    bar.advance(work[i])  # nothing to do for them
                    continue
                image = records.images[i]
                pixels = None
                for e in by_image[i]:
                    t, l, b, r = e.box
                    e.box_original = prep.input_box_to_original(e.box, image.window)
                    rel = f"patches/{i}/{t}_{l}_{b}_{r}.png"
                    if rel not in image.written and not (out / rel).is_file():  # or cut on demand already
                        if pixels is None:
                            pixels = input_pixels(prep, inputs[i])
                        _save_png(np.ascontiguousarray(pixels[t:b, l:r]), out / rel)
                        image.written.add(rel)
                    e.patch = rel
                bar.advance(len(by_image[i]))
            # projections, per layer, batch_size examples per backward pass
            todo = [e for i in ids if i in inputs for e in by_image[i] if e.rank < project and per_layer[e.layer]]
            todo.sort(key=lambda e: (e.layer_index, e.image_id, e.unit, e.rank))
            for li in sorted({e.layer_index for e in todo}):
                group = [e for e in todo if e.layer_index == li]
                counts = project_examples(module, memory_format, result.layers[li], group, inputs,
                                          per_layer[result.layers[li].name], batch_size, out, bar, drawer)
                layer_counts = stats.setdefault(result.layers[li].name, {})
                for k, v in counts.items():
                    layer_counts[k] = layer_counts.get(k, 0) + v
    return incomplete


def input_pixels(prep, tensor: torch.Tensor) -> np.ndarray:
    """A model input (3, H, W) as the (H, W, 3) uint8 picture its patches are cut from."""
    pixels = prep.denormalize(tensor.unsqueeze(0))[0].clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_patch(pixels: np.ndarray, box, out: Path, image_id: int) -> str:
    """Write the patch of ``box`` (top, left, bottom, right) of an input's ``pixels``
    (:func:`input_pixels`) in the atlas ``out`` unless it is there; returns its relative path."""
    t, l, b, r = box
    rel = f"patches/{image_id}/{t}_{l}_{b}_{r}.png"
    if not (out / rel).is_file():
        _save_png(np.ascontiguousarray(pixels[t:b, l:r]), out / rel)
    return rel


class Publisher:
    """The snapshots of a build with ``snapshots=True``: called with the scan so far after each
    batch (:func:`convscope.scan.scan`'s ``on_batch``), it writes an atlas database of it into
    ``.partial/`` (:func:`~convscope.atlas.write.write_db` with ``building``) and renames it
    over the last one, so a reader sees one whole snapshot or the next. The first batch is
    published at once, then at most one snapshot per ``every`` seconds or four times the time
    the last one took to write, whichever is longer, so publishing costs the scan little."""

    def __init__(self, model, out: Path, methods, started: float, every: float = 3.0, deconvnet: str = "auto",
                 layers=None):
        self.model, self.out, self.methods, self.started, self.every = model, out, tuple(methods), started, every
        self.deconvnet = deconvnet
        # each layer's methods, as the finished atlas records them: one traced pass, before the
        # scan's hooks are on the model
        names = [info.name for info in model.layers.select(layers)]
        records = Records([], {}, {})
        dependence, _note = _deconvnet_methods(model, names, records, self.methods, deconvnet)
        self._chosen = (dependence, dict(records.methods))
        self._next = 0.0
        self.published = 0

    def __call__(self, partial: Scan) -> None:
        if time.monotonic() >= self._next:
            self.publish(partial, "scanning")

    def publish(self, result: Scan, phase: str) -> None:
        begun = time.monotonic()
        records = _records(result, self.model)
        dependence, records.methods = self._chosen[0], dict(self._chosen[1])
        done = len(result.paths) if result.done is None else result.done
        building = {"phase": phase, "photos_done": done, "photos": len(result.paths),
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        projections = {"methods": list(self.methods), "per_unit": 0, "layers": {}, "notes": [], "patches": False,
                       "deconvnet": self.deconvnet,
                       "layer_methods": {name: list(ms) for name, ms in records.methods.items()}}
        final = self.out / PARTIAL / SNAPSHOT_NAME
        tmp = final.with_name(SNAPSHOT_NAME + ".writing")
        if tmp.exists():  # of a killed run
            tmp.unlink()
        write_db(tmp, self.model, result, records, {info.name for info in result.layers}, projections,
                 time.time() - self.started, dependence, building=building)
        os.replace(tmp, final)
        self.published += 1
        self._next = time.monotonic() + max(self.every, 4 * (time.monotonic() - begun))


def _save_png(array: np.ndarray, path: Path) -> None:
    """An atomic PNG write of a photo's patch; not fsynced one by one (see :func:`build`)."""
    with atomic_write(path, fsync=False) as f:
        Image.fromarray(array).save(f, format="PNG", compress_level=6)


__all__ = ["Publisher", "RenderJob", "build", "image_chunks", "input_pixels", "render", "save_patch"]
