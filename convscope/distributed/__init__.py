"""Builds beyond one machine, on a Ray cluster, identical to the one-process build.

``convscope.distributed.scan`` takes :func:`convscope.scan.scan`'s arguments (and ``address``,
``num_workers``, ``num_gpus_per_worker``, ``shard_size``) and returns the same
:class:`~convscope.scan.Scan`: actors that hold the model scan contiguous shards of the photo
list and the driver merges their states exactly (see :mod:`.ray_scan`; the actor pool is
:mod:`.pool`; how the model travels is :mod:`.spec`). ``render`` spreads the atlas's
projections over the same actors by photo (:mod:`.ray_project`); ``cluster`` opens Ray and the
actors once for both steps. Ray comes with the ``ray`` extra
(``pip install "convscope[ray]"``).

Importing this package does not import Ray; the names below load it on first use (PEP 562).

>>> from convscope import distributed
>>> result = distributed.scan(load_model(), ["photos/"], top=9, address="auto")
"""
from __future__ import annotations

from ..errors import ConvscopeError
from ..lazy import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "ModelSpec": "spec",
    "Pool": "pool", "WorkerInfo": "pool", "cluster": "pool", "connect": "pool", "open_pool": "pool",
    "SHARD_SIZE": "ray_scan", "ShardResult": "ray_scan", "scan": "ray_scan", "scan_with": "ray_scan",
    "render": "ray_project",
}

__all__ = sorted(_EXPORTS)


def _no_ray(exc: ModuleNotFoundError) -> ConvscopeError | None:
    if exc.name != "ray" and not str(exc.name).startswith("ray."):
        return None
    return ConvscopeError('Ray is not installed, and builds on Ray need it: pip install "convscope[ray]"')


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _no_ray)
