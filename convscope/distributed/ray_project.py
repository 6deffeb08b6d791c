"""The atlas's projections on a Ray cluster, spread by photo, identical to the one-process build.

:func:`render` runs the atlas builder's render step (``step(model, job, stats)``:
:func:`convscope.atlas.builder.render`, passed in by the builder so that this engine does not
import the store above it) on the actors of a :class:`~convscope.distributed.pool.Pool`. The job
(:class:`convscope.atlas.builder.RenderJob`) holds the chunks of images the builder reads together
(its :func:`~convscope.atlas.builder.image_chunks`, the one owner of the cut); here each actor's
job is a run of whole chunks (so every batch of projections holds the examples it holds in one
process, and the numbers are the same), runs the step on it, writes its files into the atlas
folder (which every node must see), flushes them to disk, and sends back its records, the layers
it left incomplete, its per-layer counts and the warnings it raised. The driver puts the records
back in place and raises the warnings in job order, so the builder's notes are what one process
writes.

>>> incomplete = render(pool, builder.render, RenderJob(result, records, out, ...), stats)
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import ray

from ..progress import Bar
from ..scan import Scan, ScanState
from ..stores import sync_written
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


def render_job(model, info: WorkerInfo, step: Callable, result: Scan, job) -> RenderResult:
    """The builder's render ``step`` on one run of chunks (``job``, its scan ``result`` sent apart:
    once in the object store for all jobs), on the actor's model."""
    stats: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        incomplete = step(model, dataclasses.replace(job, result=result), stats)
    sync_written(job.out)  # the files are whole on disk before the driver commits the atlas
    return RenderResult(job.records, incomplete, stats, [(w.category, str(w.message)) for w in caught], info.node)


def _runs(job, job_images: int) -> list:
    """``job`` cut into jobs of whole chunks, ``job_images`` images or more each (the last may
    hold fewer), each with its own records and no scan result (sent apart) or progress bar."""
    records = job.records
    by_image: dict[int, list] = {}
    for e in records.examples:
        by_image.setdefault(e.image_id, []).append(e)
    runs: list[list[list[int]]] = []
    for chunk in job.chunks:
        if not runs or sum(map(len, runs[-1])) >= job_images:
            runs.append([])
        runs[-1].append(chunk)
    out = []
    for chunks in runs:
        ids = [i for chunk in chunks for i in chunk]
        images = {i: records.images[i] for i in ids}
        photos = {records.images[i].photo: records.photos[records.images[i].photo] for i in ids}
        examples = [e for i in ids for e in by_image.get(i, [])]
        part = dataclasses.replace(records, examples=examples, images=images, photos=photos)
        out.append(dataclasses.replace(job, result=None, records=part, out=Path(job.out), chunks=chunks, progress=False))
    return out


def render(pool: Pool, step: Callable, job, stats: dict, job_images: int | None = None) -> set[str]:
    """The builder's render ``step`` (called as ``step(model, job, stats)``) of ``job`` (a
    :class:`convscope.atlas.builder.RenderJob`) on ``pool``'s actors: fills ``job.records`` and
    ``stats`` in place and returns the incomplete layers, as the step does. ``job_images``:
    images per actor's job, at least (default :data:`JOB_IMAGES`)."""
    records = job.records
    jobs = _runs(job, job_images or JOB_IMAGES)
    # what the render reads of the scan: the paths, crops and layers, not the state
    result = job.result
    light = dataclasses.replace(result, state=ScanState({}, result.state.top_k), hashes={})
    light_ref = ray.put(light)  # once in the object store, not once per job
    work = [sum(j.work().values()) for j in jobs]
    done: dict[int, RenderResult] = {}
    with Bar(sum(work), "projecting", disable=None if job.progress is None else not job.progress) as bar:
        for k, res in pool.map(render_job, [(step, light_ref, j) for j in jobs]):
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
