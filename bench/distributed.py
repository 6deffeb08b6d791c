"""Benchmark of the scan on Ray against the one-process scan, side by side in one run, same photos.

1. one process: ``convscope.scan.scan`` (images/s, decoding included);
2. local Ray, ``convscope.distributed.scan_with`` with 1 and with 2 workers (actors sharing the
   CPUS cores), each result checked equal to the one-process result; the ratio to one process
   (target with 1 worker: >= 0.8). The three run in turn, ``--rounds`` times, and the medians
   are reported: on a shared machine the load changes from one minute to the next;
3. the same shards through Ray Data (``map_batches`` with an actor pool), for the choice between
   Ray core and Ray Data (``--no-ray-data`` to skip);
4. what travels per shard: the packed scan state (bytes, and the dense ``state_dict`` it stands
   for), the worker's packing time and the driver's unpack + merge time per shard, the bytes of
   the model sent once to each node, and an index shard as it travels (pickled: its rows,
   thumbnails and file facts), per photo;
5. the index built in one process and on the 2-worker pool (``Index.build(ray=pool)``, shards
   of ``--index-shard`` items), on ``--index-photos`` of the photos, checked byte-equal.

Start-up (Ray, the actors loading the model) is reported apart and not in the throughput: it is
paid once per build.

    python bench/distributed.py                      # the 500 ImageNet samples, shards of 256
    python bench/distributed.py --photos 192 --shard-size 64 --no-ray-data   # small shards' cost
    python bench/distributed.py --photos 64 --rounds 1 --shard-size 32       # a quick look
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"


def photo_list(n: int) -> list[str]:
    paths = sorted(glob.glob(str(SAMPLES / "*")))
    if not paths:
        from convscope.data import sample_photos

        paths = [str(p) for p in sample_photos()]
    if n > len(paths):  # the scan keeps a repeated path once: repeats would not count
        raise SystemExit(f"--photos {n}: only {len(paths)} photos in {SAMPLES}")
    return paths[:n]


def one_process(model, paths, args) -> tuple[dict, object]:
    from convscope.scan import scan

    scan(model, paths[: args.batch_size], top=args.top, batch_size=args.batch_size, workers=args.workers,
         progress=False)  # warm up: imports, the first forward pass
    t = time.perf_counter()
    result = scan(model, paths, top=args.top, batch_size=args.batch_size, workers=args.workers, progress=False)
    dt = time.perf_counter() - t
    return {"seconds": round(dt, 2), "images_per_s": round(len(paths) / dt, 2)}, result


def start_pool(model, args, workers: int):
    """A pool of ``workers`` actors sharing the CPUs, warmed up (model loaded, first forward)."""
    from convscope.distributed import Pool, scan_with

    t = time.perf_counter()
    pool = Pool(model, num_workers=workers, num_cpus_per_worker=max(1, args.cpus // workers))
    pool.infos()
    photos = photo_list(args.batch_size * workers)
    scan_with(pool, photos, top=args.top, batch_size=args.batch_size, workers=args.workers,
              shard_size=args.batch_size, progress=False)  # one shard each (the jobs go round the actors)
    return pool, time.perf_counter() - t


def on_ray(pool, paths, args, reference) -> dict:
    from convscope.distributed import scan_with

    shards = []
    t = time.perf_counter()
    result = scan_with(pool, paths, top=args.top, batch_size=args.batch_size, workers=args.workers,
                       shard_size=args.shard_size, progress=False, on_shard=shards.append)
    dt = time.perf_counter() - t
    if result.state != reference.state or result.hashes != reference.hashes:
        raise SystemExit(f"the Ray scan with {len(pool.actors)} workers differs from the one-process scan")
    return {"seconds": round(dt, 2), "images_per_s": round(len(paths) / dt, 2),
            "shard_seconds_median": round(statistics.median(s.seconds for s in shards), 2), "_results": shards}


def ray_data(model, paths, args, reference, workers: int) -> dict:
    """The same shards as rows of a Ray Data dataset, scanned by ``map_batches`` over an actor pool."""
    import ray.data

    from convscope.distributed import ModelSpec
    from convscope.distributed.pool import Worker
    from convscope.distributed.ray_scan import ShardSettings, scan_shard, unpack_state
    from convscope.scan import ScanState

    spec = ModelSpec.of(model)
    infos = model.layers.select(None)
    settings = ShardSettings(tuple(i.name for i in infos), args.top, reference.crops, args.batch_size, args.workers,
                             False)
    cpus = max(1, args.cpus // workers)

    class Scanner:
        def __init__(self, spec, paths):
            self.worker = Worker(cpus, 0)
            self.spec = [ray.put(spec)]  # Ray resolved the constructor's reference
            self.paths = paths

        def __call__(self, batch):
            out = [self.worker.run(self.spec, scan_shard, settings, self.paths[f : f + args.shard_size], int(f), int(f))
                   for f in batch["first"]]
            return {"first": np.array([r.first for r in out]), "state": np.array([r.state for r in out], dtype=object)}

    paths = reference.paths  # as the scan numbered them
    starts = list(range(0, len(paths), args.shard_size))
    t = time.perf_counter()
    ds = ray.data.from_items([{"first": s} for s in starts], override_num_blocks=len(starts))
    ds = ds.map_batches(Scanner, fn_constructor_args=(spec, paths), batch_size=1, concurrency=workers, num_cpus=cpus)
    state = ScanState({i.name: i.shape for i in infos}, args.top)
    for row in ds.iter_rows():
        state.merge(unpack_state(row["state"]))
    dt = time.perf_counter() - t
    if state != reference.state:
        raise SystemExit(f"the Ray Data scan differs from the one-process scan ({state.images} images merged, "
                         f"{reference.state.images} scanned)")
    return {"workers": workers, "seconds_with_startup": round(dt, 2),
            "images_per_s_with_startup": round(len(paths) / dt, 2)}


def transport(model, shards, reference) -> dict:
    """Sizes and costs of what travels: per shard of this run, and for one shard holding every
    photo of the run (the state grows with the photos only through its histograms)."""
    import io

    from convscope.distributed.ray_scan import pack_state, unpack_state
    from convscope.distributed.spec import ModelSpec
    from convscope.scan import ScanState

    def costs(state, label):
        blob = pack_state(state)
        buf = io.BytesIO()
        torch.save(state.state_dict(), buf)
        t = time.perf_counter()
        for _ in range(3):
            pack_state(state)
        pack_s = (time.perf_counter() - t) / 3
        merged = ScanState(state.shapes, state.top_k)
        t = time.perf_counter()
        for _ in range(3):
            merged.merge(unpack_state(blob))
        merge_s = (time.perf_counter() - t) / 3
        return {f"{label}_packed_bytes": len(blob), f"{label}_dense_state_dict_bytes": len(buf.getvalue()),
                f"{label}_pack_seconds": round(pack_s, 3), f"{label}_driver_unpack_merge_seconds": round(merge_s, 3)}

    one = unpack_state(shards[0].state)
    packed = [len(s.state) for s in shards]
    photos = len(reference.paths)
    return {
        "units": sum(c for c, _h, _w in one.shapes.values()),
        "photos_per_shard": shards[0].photos, "packed_bytes_per_shard_median": int(statistics.median(packed)),
        **costs(one, "shard"), **costs(reference.state, f"all_{photos}_photos"),
        "paths_bytes_per_shard": sum(len(p.encode()) for p in reference.paths[: shards[0].photos]),
        "model_bytes_once_per_node": ModelSpec.of(model).size,
    }


def index_shard_bytes(model, paths: list[str], batch_size: int) -> dict:
    """An index shard of 64 photos as it travels back (pickled, as Ray does): bytes in all and per
    photo, and of that the rows (top classes, float16 embedding and unit maxima, int16 positions)
    and the thumbnails."""
    import pickle

    from convscope.distributed.pool import WorkerInfo
    from convscope.index.build import Source, _tasks_and_ends
    from convscope.index.features import Extractor
    from convscope.distributed.ray_index import ShardSettings, index_shard

    paths = paths[:64]
    sources = [Source(p, os.path.getsize(p), 0, False) for p in paths]
    tasks, ends = _tasks_and_ends(sources, range(len(sources)), 1.0, batch_size, lambda p, r: None)
    settings = ShardSettings(tuple(Extractor(model).layers), 1.0, model.preprocessing.resize, 0)
    shard = index_shard(model, WorkerInfo(os.getpid(), "bench", "cpu", torch.get_num_threads()), settings, tasks, ends)
    total = len(pickle.dumps(shard, protocol=5))
    rows = sum(a.nbytes for _item, r in shard.items for a in r.values())
    thumbs = sum(len(t) for item, _r in shard.items for t in item.thumbs)
    n = len(shard.items)
    return {"index_shard_photos": n, "index_shard_bytes": total, "index_shard_bytes_per_photo": total // n,
            "index_row_bytes_per_photo": rows // n, "index_thumbnail_bytes_per_photo": thumbs // n}


def index_on_ray(model, pool, paths: list[str], args) -> dict:
    """``Index.build`` in one process and on ``pool``, the same photos; the two indexes compared."""
    import shutil
    import tempfile

    from convscope.distributed import ray_index
    from convscope.index import Index

    ray_index.SHARD_ITEMS = args.index_shard
    out: dict = {"photos": len(paths), "shard_items": args.index_shard}
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for name, ray in (("one_process", None), ("ray_2_workers", pool)):
            t = time.perf_counter()
            with Index.build(model, paths, Path(tmp) / name, batch_size=args.batch_size, workers=args.workers,
                             progress=False, ray=ray) as index:
                dt = time.perf_counter() - t
                arrays[name] = [np.asarray(a).tobytes() for a in (index.embedding, index.units, index.top_prob)]
                arrays[name].append([index.thumbnail(r) for r in range(index.entries)])
            out[name] = {"seconds": round(dt, 2), "photos_per_s": round(len(paths) / dt, 2)}
            shutil.rmtree(Path(tmp) / name)
    if arrays["one_process"] != arrays["ray_2_workers"]:
        raise SystemExit("the index built on Ray differs from the one-process index")
    out["ratio"] = round(out["ray_2_workers"]["photos_per_s"] / out["one_process"]["photos_per_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="one process, Ray 1 and Ray 2 workers, interleaved")
    parser.add_argument("--top", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=256, help="photos per shard (a multiple of the batch)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes per scan (as the CLI's)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--no-ray-data", action="store_true")
    parser.add_argument("--index-photos", type=int, default=128, help="photos of the index comparison (0: none)")
    parser.add_argument("--index-shard", type=int, default=64, help="work items per index shard")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args()

    import ray

    from convscope.distributed import connect
    from convscope.models import load_model

    torch.set_num_threads(args.cpus)
    model = load_model(args.model, device="cpu")
    paths = photo_list(args.photos)
    out: dict = {"model": args.model, "photos": len(paths), "batch_size": args.batch_size, "rounds": args.rounds,
                 "shard_size": args.shard_size, "cpus": args.cpus, "torch_threads_one_process": torch.get_num_threads()}
    t = time.perf_counter()
    # Ray is told of twice the CPUs, so that both pools stay up between rounds (only one scans
    # at a time); each actor still gets CPUS / workers threads.
    with connect(None, num_cpus=2 * args.cpus):
        out["ray_init_seconds"] = round(time.perf_counter() - t, 1)
        pools = {}
        for workers in (1, 2):
            pools[workers], startup = start_pool(model, args, workers)
            out[f"ray_{workers}_workers_startup_seconds"] = round(startup, 1)
        rounds = []
        for r in range(args.rounds):  # interleaved: a shared machine's load changes by the minute
            row, reference = one_process(model, paths, args)
            for workers, pool in pools.items():
                res = on_ray(pool, paths, args, reference)
                shards = res.pop("_results")
                res["ratio_to_one_process"] = round(res["images_per_s"] / row["images_per_s"], 3)
                row[f"ray_{workers}_workers"] = res
            print(json.dumps({"round": r, **row}), flush=True)
            rounds.append(row)
        out["rounds_measured"] = rounds
        for workers in (1, 2):
            ratios = [row[f"ray_{workers}_workers"]["ratio_to_one_process"] for row in rounds]
            out[f"ray_{workers}_workers_ratio_median"] = statistics.median(ratios)
        out["one_process_images_per_s_median"] = statistics.median(row["images_per_s"] for row in rounds)
        out["transport"] = transport(model, shards, reference)
        out["transport"].update(index_shard_bytes(model, paths, args.batch_size))
        if args.index_photos:
            out["index"] = index_on_ray(model, pools[2], paths[: args.index_photos], args)
            print(json.dumps({"index": out["index"]}), flush=True)
        for pool in pools.values():
            pool.close()
        if not args.no_ray_data:
            for workers in (1, 2):
                r = ray_data(model, paths, args, reference, workers)
                out[f"ray_data_{workers}_workers"] = r
                print(json.dumps({f"ray_data_{workers}_workers": r}), flush=True)
        out["ray"] = ray.__version__
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
