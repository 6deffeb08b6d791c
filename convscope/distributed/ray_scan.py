"""The streaming top-k scan on a Ray cluster, identical to the one-process :func:`convscope.scan.scan`.

The driver expands the inputs into one numbered photo list (so image ids are global) and cuts
it into contiguous shards of ``shard_size`` photos, rounded up to whole batches: each shard's
batches are then the very batches the one-process scan decodes and runs, so even a kernel whose
rounding depends on the batch gives the same numbers. Each actor of a
:class:`~convscope.distributed.pool.Pool` scans a shard from the paths (a filesystem every node
sees) into a fresh :class:`~convscope.scan.ScanState` numbered from the shard's first photo,
and returns it packed (:func:`pack_state`: its state dict with the histograms, nearly all
zeros, as their nonzero cells; 0.6-0.8 MB for 1,824 units), with the shard's bad files (the
reason names the node) and the sha256 of its photos among its top examples. The driver
merges each state as it arrives: the merge is exact and its order does not matter (the top-K
order is total; counts and sums are integers), so the result is the one-process result, bit for
bit, whichever actor ran which shard and however often a shard ran again after a worker died.

With ``checkpoint`` the merged state and the finished shards (first photo, length) are written
atomically (:meth:`ScanState.save`) every ``checkpoint_every`` photos and at the end;
``resume=True`` scans only the photos outside them, in shards of any size. One progress bar on the driver advances by each shard's photos
as its result arrives.

>>> result = scan(load_model(), ["@imagenet.txt"], layers=["blocks.4"], top=9, address="auto")
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..crops import Crops
from ..files import disk_full_as_error, remove_stale_temps
from ..progress import Bar
from ..scan import (RESUME_HINT, Scan, ScanState, check_arguments, checkpoint_config, referenced_photos, resume_from,
                    scan_batches)
from ..scan_settings import ScanOptions, rank_choices, ranking
from ..sketch import Sketch
from .pool import Pool, WorkerInfo, cluster

#: Photos per shard on CPU workers: the unit of work, of retry and of checkpointing. Each shard
#: starts its own decoding processes, a fixed cost that 1,024 photos make small (a few percent;
#: at 64 photos the scan runs at half speed), and sends back one state of about 1 MB that the
#: driver merges in about 25 ms (docs/distributed.md has the measurements).
SHARD_SIZE = 1024
#: Photos per shard on GPU workers, which scan a shard of 1,024 photos in well under a second.
SHARD_SIZE_GPU = 4096


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """What every shard of one scan shares (sent with each job; a few hundred bytes)."""

    layers: tuple[str, ...]
    top: int
    crops: Crops
    photos_per_batch: int
    workers: int | None
    autocast: bool
    pre: tuple[tuple[str, str], ...] = ()  # (layer, activation) of the layers ranked by the pre-activation


@dataclasses.dataclass
class ShardResult:
    """One shard's scan: photos ``first`` to ``first + photos`` of the scan's list, ``state``
    (:func:`pack_state`'s bytes, read with :meth:`read_state`), ``skipped`` (path, reason) in
    path order, ``hashes`` (index into the scan's paths -> sha256) of its photos among its top
    examples, and where and how long it ran."""

    first: int
    photos: int
    state: bytes
    skipped: list[tuple[str, str]]
    hashes: dict[int, str]
    node: str
    pid: int
    seconds: float

    def read_state(self) -> ScanState:
        return unpack_state(self.state)


def pack_state(state: ScanState) -> bytes:
    """A state as the bytes a shard sends: its :meth:`ScanState.state_dict` with each histogram
    (C x 4096 int64, 32 KiB a unit, nearly all zeros) as its nonzero cells (flat index, count),
    ``torch.save``-d and zlib-compressed (level 1)."""
    data = state.state_dict()
    for t in data["tensors"].values():
        flat = t.pop("hist").view(-1)
        index = flat.nonzero().view(-1)
        t["hist_index"] = index.int() if flat.numel() < 2**31 else index
        t["hist_count"] = flat[index]
    buf = io.BytesIO()
    torch.save(data, buf)
    return zlib.compress(buf.getvalue(), 1)


def unpack_state(blob: bytes) -> ScanState:
    """The :class:`ScanState` of :func:`pack_state`'s bytes (read with ``weights_only``)."""
    data = torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu", weights_only=True)
    bins = Sketch(**data["sketch"]).bins
    for name, shape in data["layers"]:
        t = data["tensors"][name]
        hist = torch.zeros(shape[0] * bins, dtype=torch.long)
        hist[t.pop("hist_index").long()] = t.pop("hist_count")
        t["hist"] = hist.view(shape[0], bins)
    return ScanState.from_state_dict(data)


def scan_shard(model, info: WorkerInfo, settings: ShardSettings, paths: Sequence[str], first: int,
               first_id_photo: int) -> ShardResult:
    """Scan ``paths`` (photos ``first``.. of the scan's list; photo ``first_id_photo`` in image
    id terms, the scan's ``offset`` included) on the actor's model: the loop of
    :func:`convscope.scan.scan`, from the same decoder and hooks."""
    from ..runtime import keep_freed_memory

    keep_freed_memory()
    started = time.perf_counter()
    names = list(settings.layers)
    state = ScanState({i.name: i.shape for i in model.layers.select(names)}, settings.top, model.device,
                      rank_by={layer: "pre-activation" for layer, _ in settings.pre})
    skipped: list[tuple[str, str]] = []
    hashes: dict[int, str] = {}
    batches = scan_batches(model, state, paths, names, settings.crops, settings.photos_per_batch,
                           first_id_photo=first_id_photo, workers=settings.workers, autocast=settings.autocast,
                           pre=dict(settings.pre))
    with contextlib.closing(batches):
        for batch in batches:
            skipped.extend((err.path, f"{err.reason} (on node {info.node})") for err in batch.errors)
            hashes.update((first + i, digest) for i, digest in zip(batch.indices, batch.hashes))
    offset = first_id_photo - first
    hashes = {p: hashes[p] for p in referenced_photos(state, settings.crops, offset) if p in hashes}
    return ShardResult(first, len(paths), pack_state(state), skipped, hashes, info.node, info.pid,
                       time.perf_counter() - started)


def _shards(photos: int, done: dict[int, int], size: int) -> list[tuple[int, int]]:
    """(first, stop) of the shards still to scan: the stretches no merged shard covers (each
    starting on a batch boundary, as every shard does), cut into ``size`` photos from their start."""
    out, pos = [], 0
    for first in sorted(done) + [photos]:
        out.extend((a, min(a + size, first)) for a in range(pos, first, size))
        pos = first + done.get(first, 0)
    return out


def _describe(model, _info: WorkerInfo, layers, rank_by: str = "auto"):
    """The driver's view of the model, from a worker: layer infos, spec, weights, input size,
    and what ranks each layer (:func:`convscope.scan_settings.ranking`)."""
    infos = model.layers.select(layers)
    size = tuple(model.preprocessing.input_size)
    return infos, model.spec, model.weights, size, ranking(model.module, [i.name for i in infos], rank_by, size)


def scan(
    model,
    images: Iterable[str | os.PathLike],
    layers: Sequence[str] | str | None = None,
    top: int = 9,
    *,
    address: str | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float | str = "auto",
    num_cpus: int | None = None,
    **options,
) -> Scan:
    """:func:`convscope.scan.scan` on Ray: the same arguments and the same :class:`Scan`, bit for bit
    (the one difference: a bad file's reason ends with ``(on node NAME)``).

    ``model``: a ``LoadedModel`` or ``nn.Module`` (shipped to the workers by value), a spec
    string (each worker loads it) or a :class:`~convscope.distributed.ModelSpec`. ``address``: a
    Ray cluster to join (``"auto"`` for ``ray start`` on this machine); ``None``: the Ray this
    process already joined, else ``RAY_ADDRESS``, else a local Ray of ``num_cpus`` CPUs, shut
    down afterwards. ``num_workers`` actors (default: one per GPU, or one per node without
    GPUs), each with ``num_gpus_per_worker`` GPUs (``"auto"``: 1 when the cluster has GPUs).
    ``options``: the one-process scan's (``crops``, ``batch_size``, ``workers``, ``checkpoint``,
    ``checkpoint_every``, ``resume``, ``offset``, ``autocast``, ``progress``, ``on_skip``; ``workers``
    counts decoding processes per actor), and ``shard_size``: photos per shard (rounded up to
    whole batches; default :data:`SHARD_SIZE`, :data:`SHARD_SIZE_GPU` on GPU workers); a
    checkpoint resumes with any. Photo paths must name the same files on
    every node (a shared filesystem); the driver lists folders and reads ``@LIST`` files.

    >>> result = scan(load_model(), ["photos/"], top=9, num_workers=2)
    """
    with cluster(model, address, num_workers=num_workers, num_gpus_per_worker=num_gpus_per_worker,
                 num_cpus=num_cpus) as pool:
        return scan_with(pool, images, layers, top, **options)


def scan_with(pool: Pool, images: Iterable[str | os.PathLike], layers: Sequence[str] | str | None = None,
              top: int = 9, *, shard_size: int | None = None, on_shard: Callable[[ShardResult], None] | None = None,
              **options) -> Scan:
    """:func:`scan` on the actors of a running ``pool`` (several scans, one start-up); ``options``
    are :func:`convscope.scan.scan`'s (:class:`~convscope.scan_settings.ScanOptions`). ``on_shard`` is
    called on the driver with each :class:`ShardResult` as it is merged."""
    from ..data import expand_inputs
    from ..runtime import keep_freed_memory

    keep_freed_memory()  # each merge allocates and frees a dense histogram (see runtime)
    o = ScanOptions(**options)
    checkpoint, offset, on_skip = o.checkpoint, o.offset, o.on_skip
    check_arguments(top, o.batch_size, o.checkpoint_every)
    if shard_size is None:
        shard_size = SHARD_SIZE_GPU if pool.plan.gpus > 0 else SHARD_SIZE
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a whole number of photos >= 1, got {shard_size!r}")
    crops = Crops.parse(o.crops)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths_p, missing = expand_inputs(images)
    paths = [str(p) for p in paths_p]
    infos, spec, weights, input_size, sats = pool.call(_describe, layers, o.rank_by)
    choices = rank_choices(sats)
    if not infos:
        raise ValueError("no layers to scan; name some with layers=[...] (run `convscope layers`)")
    names = [i.name for i in infos]
    photos_per_batch = max(1, o.batch_size // crops.count)
    shard_photos = -(-shard_size // photos_per_batch) * photos_per_batch
    config = {"engine": "ray", **checkpoint_config(spec, weights, input_size, names, top, crops, photos_per_batch,
                                                  offset, paths, choices)}
    skipped_missing = [(e.path, e.reason) for e in missing]
    state = ScanState({i.name: i.shape for i in infos}, top, "cpu", rank_by=choices)
    done: dict[int, int] = {}  # first photo -> photos, of every shard merged
    shard_skipped: dict[int, list[tuple[str, str]]] = {}  # first photo -> the shard's bad files
    hashes: dict[int, str] = {}
    data = resume_from(checkpoint, config) if o.resume else None
    if data is not None:
        extra = data["extra"]
        state = ScanState.from_state_dict(data["state"], "cpu")
        done = {int(first): int(n) for first, n in extra["done"]}
        shard_skipped = {int(i): [tuple(s) for s in v] for i, v in extra["skipped"].items()}
        hashes = {int(i): str(h) for i, h in extra["hashes"].items()}
    if on_skip is not None:
        for p, r in skipped_missing + [s for i in sorted(shard_skipped) for s in shard_skipped[i]]:
            on_skip(p, r)

    def save() -> None:
        if checkpoint is not None:
            with disk_full_as_error(checkpoint, RESUME_HINT):  # the checkpoint before this one is whole
                state.save(checkpoint, {"config": config, "done": [[a, done[a]] for a in sorted(done)],
                                        "skipped": {str(i): [list(s) for s in v] for i, v in shard_skipped.items()},
                                        "hashes": {str(p): h for p, h in hashes.items()}})

    if checkpoint is not None:  # a killed run's half-written checkpoint, beside the whole one
        remove_stale_temps(Path(checkpoint).parent, name=Path(checkpoint).name, recursive=False)
    settings = ShardSettings(tuple(names), top, crops, photos_per_batch, o.workers, o.autocast,
                             tuple((n, s.activation) for n, s in sats.items() if s is not None))
    jobs = [(settings, paths[a:b], a, a + offset) for a, b in _shards(len(paths), done, shard_photos)]
    since_saved = 0
    with Bar(len(paths), "scanning", disable=None if o.progress is None else not o.progress) as bar:
        bar.advance(sum(done.values()))
        for _job, result in pool.map(scan_shard, jobs):
            state.merge(result.read_state())
            done[result.first] = result.photos
            shard_skipped[result.first] = result.skipped
            hashes.update(result.hashes)
            if on_skip is not None:
                for p, r in result.skipped:
                    on_skip(p, r)
            if on_shard is not None:
                on_shard(result)
            bar.advance(result.photos)
            since_saved += result.photos
            if since_saved >= o.checkpoint_every and sum(done.values()) < len(paths):
                hashes = {p: hashes[p] for p in referenced_photos(state, crops, offset) if p in hashes}
                save()
                since_saved = 0
    hashes = {p: hashes[p] for p in sorted(referenced_photos(state, crops, offset)) if p in hashes}
    save()
    skipped = skipped_missing + [s for i in sorted(shard_skipped) for s in shard_skipped[i]]
    return Scan(state, paths, infos, crops, skipped, offset, hashes, {n: s for n, s in sats.items() if s is not None})


__all__ = ["SHARD_SIZE", "SHARD_SIZE_GPU", "ShardResult", "ShardSettings", "pack_state", "scan", "scan_shard",
           "scan_with", "unpack_state"]
