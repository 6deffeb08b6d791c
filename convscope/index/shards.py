"""The index's shards: what an actor computes when the forward passes run on a Ray cluster
(:mod:`convscope.distributed.ray_index` opens the pool and sends them), identical to the
one-process build.

The driver plans as one process does (the file list, the unchanged files copied, videos probed
and cut into pieces, the batches fixed by :func:`.build._tasks_and_ends`), then cuts the work items
into shards of whole batches. Each actor of a :class:`~convscope.distributed.Pool` decodes its
shard's files (a filesystem every node sees), forwards the very batches one process forwards
and sends back each item's rows (top classes, embedding, unit maxima and positions), times,
thumbnails and file facts (about 15 KB a photo), with a bad file's reason naming the node. The
driver takes the shards in order and appends them with the one-process :func:`.compute.write_rows`,
so the records, row order, arrays and thumbnails are the same bytes, whichever actor ran which
shard and however often a shard ran again after a worker died. Commits, ``resume`` and one
progress bar on the driver work as in one process.

>>> build(load_model(), ["photos/"], "photos.index", ray="auto", ray_workers=4)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from ..data import default_workers
from .compute import Decoded, Task, decode, forward
from .features import Extractor


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What every shard of one build shares."""

    layers: tuple[str, ...]
    fps: float
    target_size: int | None
    workers: int | None


@dataclasses.dataclass
class IndexShard:
    """One shard's work items, each with its rows (tensors dropped), and where it ran."""

    items: list[tuple[Decoded, dict]]
    node: str
    pid: int
    seconds: float


_extractors: dict[int, tuple[object, Extractor]] = {}  # per actor: id(model) -> (model, its Extractor)


def _extractor(model, layers: tuple[str, ...]) -> Extractor:
    """The actor's :class:`Extractor` (its set-up runs probe passes: once per actor and layers)."""
    key = id(model)
    if key not in _extractors or _extractors[key][0] is not model or _extractors[key][1].layers != list(layers):
        _extractors[key] = (model, Extractor(model, list(layers)))
    return _extractors[key][1]


def index_shard(model, info, settings: ShardSettings, tasks: Sequence[Task], ends: Sequence[int]) -> IndexShard:
    """Decode and forward one shard (``ends``: its batches, counted from its first task)."""
    started = time.perf_counter()
    extractor = _extractor(model, settings.layers)
    workers = default_workers(len(tasks)) if settings.workers is None else max(0, settings.workers)
    items = []
    for item, rows in forward(extractor, decode(tasks, model.transform, settings.fps, settings.target_size, workers), ends):
        if item.error is not None:
            item = dataclasses.replace(item, error=f"{item.error} (on node {info.node})")
        items.append((item, rows))
    return IndexShard(items, info.node, info.pid, time.perf_counter() - started)


def shards(tasks: Sequence[Task], ends: Sequence[int], size: int) -> list[tuple[int, int, list[int]]]:
    """(first, stop, ends counted from first) of shards of whole batches, ``size`` items or more."""
    out, first, local = [], 0, []
    for end in ends:
        local.append(end - first)
        if end - first >= size or end == len(tasks):
            out.append((first, end, local))
            first, local = end, []
    return out


__all__ = ["IndexShard", "ShardSettings", "index_shard", "shards"]
