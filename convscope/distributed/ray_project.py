"""The atlas's projections on a Ray cluster, spread by photo, identical to the one-process build.

:func:`render` runs the atlas builder's render step (``step``: read the photos of the top
examples again, cut the patches, project the examples, write the PNG files; the builder passes
its own, so that this engine does not import the store above it) on the actors of a
:class:`~convscope.distributed.pool.Pool`. The builder walks the
images in id order in chunks; here each job is a run of whole chunks (so every batch of
projections holds the examples it holds in one process, and the numbers are the same), runs the
builder's own step on it, writes its files into the atlas folder (which every node must see),
flushes them to disk, and sends back its records, the layers it left incomplete, its per-layer
counts and the warnings it raised. The driver puts the records back in place and raises the
warnings in job order, so the builder's notes are what one process writes.

>>> incomplete = render(pool, _render, result, records, out, project, methods, batch_size, progress, stats)
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import ray

from ..progress import Bar
from ..scan import Scan, ScanState
from .pool import Pool, WorkerInfo

#: Images per job, at least: a few chunks of the builder's (256 images at most each).
JOB_IMAGES = 512


@dataclasses.dataclass
class RenderResult:
    """One job's output: its ``records`` (filled in), the ``incomplete`` layers, ``stats`` per
    layer, the ``warnings`` raised (category, message) in order, and where it ran."""

    records: object  # convscope.atlas.records.Records
    incomplete: set[str]
    stats: dict
    warnings: list[tuple[type, str]]
    node: str


def render_job(model, info: WorkerInfo, step: Callable, result: Scan, records, out: str, project: int,
               methods: Sequence[str], batch_size: int) -> RenderResult:
    """The builder's render ``step`` on one run of chunks, on the actor's model."""
    stats: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        incomplete = step(model, result, records, Path(out), project, tuple(methods), batch_size, False, stats)
    if hasattr(os, "sync"):  # the files are whole on disk before the driver commits the atlas
        os.sync()
    return RenderResult(records, incomplete, stats, [(w.category, str(w.message)) for w in caught], info.node)


def _jobs(records, chunk: int, job_images: int) -> list:
    """The records cut into runs of whole chunks of the builder's image order."""
    order = sorted(records.images)
    per_job = max(1, -(-job_images // chunk)) * chunk
    by_image: dict[int, list] = {}
    for e in records.examples:
        by_image.setdefault(e.image_id, []).append(e)
    out = []
    for start in range(0, len(order), per_job):
        ids = order[start : start + per_job]
        images = {i: records.images[i] for i in ids}
        photos = {records.images[i].photo: records.photos[records.images[i].photo] for i in ids}
        examples = [e for i in ids for e in by_image.get(i, [])]
        out.append(dataclasses.replace(records, examples=examples, images=images, photos=photos))
    return out


def render(pool: Pool, step: Callable, result: Scan, records, out: str | os.PathLike, project: int,
           methods: Sequence[str], batch_size: int, progress: bool | None, stats: dict,
           job_images: int | None = None) -> set[str]:
    """The builder's render ``step`` (``convscope.atlas.builder._render``, called as
    ``step(model, result, records, out, project, methods, batch_size, progress, stats)``) on
    ``pool``'s actors, with the arguments it takes less the model (the actors hold it): fills
    ``records`` (:class:`convscope.atlas.records.Records`) and ``stats`` in place and returns
    the incomplete layers, as the step does. ``job_images``: images per job, at least (default
    :data:`JOB_IMAGES`)."""
    chunk = max(1, min(256, 4 * batch_size))  # the builder's chunk of images
    jobs = _jobs(records, chunk, job_images or JOB_IMAGES)
    # what the render reads of the scan: the paths, crops and layers, not the state
    light = dataclasses.replace(result, state=ScanState({}, result.state.top_k), hashes={})
    light_ref = ray.put(light)  # once in the object store, not once per job
    work = [len(j.examples) + sum(len(records.methods_of(e.layer, methods)) for e in j.examples if e.rank < project)
            for j in jobs]
    done: dict[int, RenderResult] = {}
    with Bar(sum(work), "projecting", disable=None if progress is None else not progress) as bar:
        args = [(step, light_ref, j, os.fspath(out), project, tuple(methods), batch_size) for j in jobs]
        for k, res in pool.map(render_job, args):
            done[k] = res
            bar.advance(work[k])
    examples = {}
    incomplete: set[str] = set()
    for k in range(len(jobs)):
        res = done[k]
        for e in res.records.examples:
            examples[(e.layer_index, e.unit, e.rank)] = e
        records.images.update(res.records.images)
        for p, photo in res.records.photos.items():  # a photo whose crops fall in two jobs: read alike
            if p not in records.photos or records.photos[p].size is None and records.photos[p].error is None:
                records.photos[p] = photo
        incomplete |= res.incomplete
        for layer, counts in res.stats.items():
            mine = stats.setdefault(layer, {})
            for key, v in counts.items():
                mine[key] = mine.get(key, 0) + v
        for category, message in res.warnings:
            warnings.warn(message, category, stacklevel=2)
    records.examples[:] = [examples[(e.layer_index, e.unit, e.rank)] for e in records.examples]
    return incomplete


__all__ = ["JOB_IMAGES", "RenderResult", "render", "render_job"]
