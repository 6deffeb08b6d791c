"""The index's forward passes on a Ray cluster, identical to the one-process build.

The index's build plans as one process does and hands its work items here with the batches it
fixed; :func:`forward` cuts them into shards of whole batches (:func:`shards`), runs each shard
on an actor of the pool (:func:`index_shard`: decode, forward, the rows of every item, with the
one-process :mod:`convscope.index.compute`; a bad file's reason names the node; about 15 KB a
photo back) and yields the items with their rows in the order one process
forwards them, whichever actor ran which shard and however often a shard ran again after a
worker died. The build appends them with its own writer, so the index is the same bytes.

>>> for item, rows in forward(True, None, extractor, tasks, ends, fps=1.0, target_size=None, workers=None):
...     ...
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator, Sequence

from ..data import default_workers
from ..index.compute import Decoded, Task, decode, forward as forward_batches
from ..index.features import Extractor
from .pool import open_pool

#: Work items (photos, or video pieces) per shard, at least: the unit of work and of retry. As
#: for the scan, each shard starts its own decoding processes, a cost that some hundreds of
#: photos make small, and sends back about 15 KB a photo.
SHARD_ITEMS = 512


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What every shard of one build shares."""

    layers: tuple[str, ...]
    fps: float
    target_size: int | None
    workers: int | None
    signals: tuple[str, ...] | None = None


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
    decoded = decode(tasks, model.transform, settings.fps, settings.target_size, workers, settings.signals)
    for item, rows in forward_batches(extractor, decoded, ends, settings.signals):
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


def forward(ray, ray_workers: int | None, extractor, tasks: Sequence, ends: Sequence[int], fps: float,
            target_size: int | None, workers: int | None, shard_items: int | None = None,
            signals: Sequence[str] | None = None) -> Iterator[tuple]:
    """``(item, rows)`` of every work item of ``tasks`` (batches ending at ``ends``), in order,
    forwarded on Ray (``ray``: True, an address, or a running Pool, as :func:`open_pool` takes it)
    by ``extractor``'s model with ``ray_workers`` actors; ``shard_items``: items per shard, at
    least (default :data:`SHARD_ITEMS`); ``signals``: the names of the signals computed (None: all)."""
    settings = ShardSettings(tuple(extractor.layers), fps, target_size, workers, None if signals is None else tuple(signals))
    with open_pool(ray, extractor.model, ray_workers) as pool:
        jobs = [(settings, list(tasks[a:b]), local) for a, b, local in shards(tasks, ends, shard_items or SHARD_ITEMS)]
        for _job, shard in pool.map(index_shard, jobs, ordered=True):
            yield from shard.items


__all__ = ["SHARD_ITEMS", "IndexShard", "ShardSettings", "forward", "index_shard", "shards"]
