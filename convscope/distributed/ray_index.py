"""The index's forward passes on a Ray cluster, identical to the one-process build.

The index's build plans as one process does and hands its work items here with the batches it
fixed; :func:`forward` cuts them into shards of whole batches (:func:`convscope.index.shards.shards`),
runs each shard on an actor of the pool (:func:`convscope.index.shards.index_shard`: decode,
forward, the rows of every item) and yields the items with their rows in the order one process
forwards them, whichever actor ran which shard and however often a shard ran again after a
worker died. The build appends them with its own writer, so the index is the same bytes.

>>> for item, rows in forward(True, None, extractor, tasks, ends, fps=1.0, target_size=None, workers=None):
...     ...
"""
from __future__ import annotations

from typing import Iterator, Sequence

from ..index.shards import ShardSettings, index_shard, shards
from .pool import open_pool

#: Work items (photos, or video pieces) per shard, at least: the unit of work and of retry. As
#: for the scan, each shard starts its own decoding processes, a cost that some hundreds of
#: photos make small, and sends back about 15 KB a photo.
SHARD_ITEMS = 512


def forward(ray, ray_workers: int | None, extractor, tasks: Sequence, ends: Sequence[int], fps: float,
            target_size: int | None, workers: int | None, shard_items: int | None = None) -> Iterator[tuple]:
    """``(item, rows)`` of every work item of ``tasks`` (batches ending at ``ends``), in order,
    forwarded on Ray (``ray``: True, an address, or a running Pool, as :func:`open_pool` takes it)
    by ``extractor``'s model with ``ray_workers`` actors; ``shard_items``: items per shard, at
    least (default :data:`SHARD_ITEMS`)."""
    settings = ShardSettings(tuple(extractor.layers), fps, target_size, workers)
    with open_pool(ray, extractor.model, ray_workers) as pool:
        jobs = [(settings, list(tasks[a:b]), local) for a, b, local in shards(tasks, ends, shard_items or SHARD_ITEMS)]
        for _job, shard in pool.map(index_shard, jobs, ordered=True):
            yield from shard.items


__all__ = ["SHARD_ITEMS", "forward"]
