"""Benchmark of duplicates: whom a person can trust, and what it costs at a million photos.

1. ``dev``: the dev photos (several per breed, cat and bird family: real look-alikes, no
   copies among them) plus one transformed copy of 200 of them (50 each resized to half,
   JPEG quality 30, a centre crop of 80 percent, mirrored). A copies pair is true where both
   files come from one photo. Precision and recall of the copies pairs, for the evidence
   alone and together: the embedding's cosine (the old rule), the perceptual hash's bits,
   both (the rule applied); and the pairs the old rule (single linkage at cosine 0.80) found.
2. ``scale``: a synthetic library of N files (1,280-dimensional unit float16 embeddings in a
   memory-mapped file, like an index's; 1,000 look-alike classes; one file in 20 with a
   planted copy, with hash bits flipped, and one in 20 with a burst shot, cosine near 0.85) at 10k, 100k and 1M: time and peak memory of
   ``groups`` (candidate pairs from the approximate index, exact check, grouping), each size in
   a fresh process; at 10k, recall of the approximate candidate pairs and of the copies pairs
   against all pairs.

    python bench/duplicates.py dev --index /tmp/dups/dev.index --photos /tmp/dups/photos
    python bench/duplicates.py scale --sizes 10000 100000 1000000

The dev index is built from the folder ``--photos`` (``python bench/duplicates.py make``
writes it: symlinks to the dev photos and the copies, named ``<photo>__<transform>.jpg``).
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRANSFORMS = ("resized", "recompressed", "cropped", "flipped")


# --------------------------------------------------------------------------- 1. dev photos


def make(dev: Path, out: Path, copies: int = 200) -> None:
    from PIL import Image

    paths = sorted(dev.glob("*.JPEG"))
    random.seed(0)
    pick = random.sample(paths, copies)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for p in paths:
        (out / p.name).symlink_to(p)
    for k, p in enumerate(pick):
        t = TRANSFORMS[k % 4]
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            if t == "resized":
                im = im.resize((w // 2, h // 2), Image.Resampling.BILINEAR)
            elif t == "recompressed":
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=30)
                im = Image.open(buf)
            elif t == "cropped":
                im = im.crop((w // 10, h // 10, w - w // 10, h - h // 10))
            else:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.save(out / f"{p.stem}__{t}.jpg", "JPEG", quality=30 if t == "recompressed" else 90)


def _pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for g in groups for x, a in enumerate(g) for b in g[x + 1:]}


def _score(found: set, true: set) -> dict:
    tp = len(found & true)
    return {"pairs": len(found), "true": tp, "precision": round(tp / max(len(found), 1), 4),
            "recall": round(tp / max(len(true), 1), 4)}


def bench_dev(index_dir: Path) -> dict:
    from convscope.index import Index
    from convscope.index import duplicates as dup
    from convscope.index.signals.phash import copy_distance

    with Index.open(index_dir) as idx:
        files, vectors, hashes = dup.file_rows(idx)
        vectors = np.asarray(vectors, np.float32)
        origin = [Path(f["path"]).stem.split("__")[0] for f in files]
        kind = [Path(f["path"]).stem.split("__")[1] if "__" in Path(f["path"]).stem else "original" for f in files]
        n = len(files)
        true = {(a, b) for a in range(n) for b in range(a + 1, n) if origin[a] == origin[b]}
        cos = vectors @ vectors.T
        bits = copy_distance(hashes[:, None, :], hashes[None, :, :])
        iu = np.triu_indices(n, 1)
        out: dict = {"files": n, "true_pairs": len(true), "by_transform": {}}
        # the evidence of each true pair, and the nearest non-copy of every file
        for t in TRANSFORMS:
            tp = [(a, b) for a, b in true if t in (kind[a], kind[b])]
            out["by_transform"][t] = {"cosine_min": round(float(min(cos[a, b] for a, b in tp)), 4),
                                      "bits_max": int(max(bits[a, b] for a, b in tp))}
        false = np.ones((n, n), bool)
        for a, b in true:
            false[a, b] = false[b, a] = False
        np.fill_diagonal(false, False)
        out["look_alikes"] = {"cosine_max": round(float(cos[false].max()), 4), "bits_min": int(bits[false].min()),
                              "pairs_cosine_ge_0.8": int((cos[false] >= 0.8).sum() // 2)}
        # each kind of evidence alone, as a threshold on pairs (no grouping)
        sweep = {}
        for c in (0.8, 0.85, 0.9, 0.95):
            found = {(a, b) for a, b in zip(*iu) if cos[a, b] >= c}
            sweep[f"cosine>={c}"] = _score(found, true)
        for b_ in (4, 6, 8, 10, 12, 16):
            found = {(a, b) for a, b in zip(*iu) if bits[a, b] <= b_}
            sweep[f"bits<={b_}"] = _score(found, true)
        for b_ in (8, 10, 12):
            for c in (0.5, 0.6):
                found = {(a, b) for a, b in zip(*iu) if bits[a, b] <= b_ and cos[a, b] >= c}
                sweep[f"bits<={b_} and cosine>={c}"] = _score(found, true)
        out["evidence"] = sweep
        # the rule applied (complete linkage), and the old one (single linkage at cosine 0.80)
        got = dup.groups(vectors, hashes, [f["sha256"] for f in files], progress=False)
        out["copies"] = _score(_pairs([g["members"] for g in got if g["kind"] == "copies"]), true)
        out["similar_groups"] = sum(g["kind"] == "similar" for g in got)
        out["copies_without_hash"] = _score(_pairs([g["members"] for g in dup.groups(
            vectors, None, [f["sha256"] for f in files], progress=False) if g["kind"] == "copies"]), true)
        parent = list(range(n))

        def find(i):
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in zip(*iu):
            if cos[a, b] >= 0.8:
                parent[max(find(a), find(b))] = min(find(a), find(b))
        old: dict[int, list[int]] = {}
        for i in range(n):
            old.setdefault(find(i), []).append(i)
        old_pairs = _pairs(list(old.values()))
        out["old_single_linkage_0.80"] = {**_score(old_pairs, true),
                                         "lowest_cosine_in_a_group": round(float(min(cos[a, b] for a, b in old_pairs)), 4)}
    return out


# --------------------------------------------------------------------------- 2. scale


def synthetic(n: int, folder: Path, dim: int = 1280, seed: int = 0):
    """N files: unit float16 embeddings (memory-mapped), hashes, and the planted copy pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(folder / "embedding.npy", "w+", np.float16, (n, dim))
    hashes = rng.integers(0, 2**63, (n, 4), dtype=np.int64).astype(np.uint64)
    step = 50_000
    for a in range(0, n, step):
        m = min(step, n - a)
        v = 0.75 * centres[rng.integers(0, 1000, m)] + 0.66 * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        vectors[a:a + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    # one file in 20 is a copy of the file before it: a cosine near 0.95, 0-4 hash bits flipped
    copies = np.arange(1, n, 20)
    for a in range(0, len(copies), step):
        c = copies[a:a + step]
        v = np.asarray(vectors[c - 1], np.float32) + 0.33 * rng.standard_normal((len(c), dim)).astype(np.float32) / np.sqrt(dim)
        vectors[c] = v / np.linalg.norm(v, axis=1, keepdims=True)
        flips = np.zeros(len(c), np.uint64)
        for _ in range(4):
            flips |= np.where(rng.random(len(c)) < 0.5, np.uint64(1) << rng.integers(0, 64, len(c)).astype(np.uint64), np.uint64(0))
        hashes[c, 0] = hashes[c - 1, 0] ^ flips
    # one file in 20 is a burst shot of the file two before it: a cosine near 0.85, another hash
    bursts = np.arange(3, n, 20)
    for a in range(0, len(bursts), step):
        c = bursts[a:a + step]
        v = np.asarray(vectors[c - 2], np.float32) + 0.62 * rng.standard_normal((len(c), dim)).astype(np.float32) / np.sqrt(dim)
        vectors[c] = v / np.linalg.norm(v, axis=1, keepdims=True)
    vectors.flush()
    np.save(folder / "phash.npy", hashes)
    return folder


def _status(key: str) -> int:
    """A field of /proc/self/status, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _one(folder: Path, exact: bool | None) -> dict:
    """One measured run in this (fresh) process."""
    from convscope.index import duplicates as dup
    from convscope.index.neighbours import near_pairs

    vectors = np.load(folder / "embedding.npy", mmap_mode="r")
    hashes = np.load(folder / "phash.npy")
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS from here (not the parent's, inherited)
    base = _status("VmRSS")
    anon = [_status("RssAnon")]
    done = threading.Event()

    def sample():  # the process's own memory (the embedding's mapped pages aside), every 50 ms
        while not done.wait(0.05):
            anon[0] = max(anon[0], _status("RssAnon"))

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t, cpu = time.perf_counter(), time.process_time()
    got = dup.groups(vectors, hashes, None, exact=exact, progress=False)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    done.set()
    watcher.join()
    peak = _status("VmHWM")
    copies = [g["members"] for g in got if g["kind"] == "copies"]
    i, j, _ = near_pairs(vectors, dup.SIMILAR_COSINE, exact=exact, progress=False) if len(vectors) <= 20_000 else (None, None, None)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(peak / 1024, 1), "rss_before_mib": round(base / 1024, 1),
            "peak_anon_mib": round(anon[0] / 1024, 1),
            "copies_groups": len(copies), "copy_pairs": sorted(map(list, _pairs(copies))) if len(vectors) <= 20_000 else None,
            "similar_pairs": None if i is None else sorted(zip(i.tolist(), j.tolist()))}


def bench_scale(sizes: list[int], tmp: Path) -> dict:
    out = {}
    for n in sizes:
        folder = synthetic(n, tmp / f"syn-{n}")
        runs = {"approximate": False} if n > 20_000 else {"approximate": False, "all_pairs": True}
        res = {}
        for name, exact in runs.items():
            code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                    f"from pathlib import Path; from duplicates import _one; "
                    f"print(json.dumps(_one(Path({str(folder)!r}), {exact!r})))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            res[name] = json.loads(done.stdout.strip().splitlines()[-1])
        row = {k: {x: v[x] for x in ("seconds", "cpu_seconds", "peak_rss_mib", "peak_anon_mib", "rss_before_mib", "copies_groups")} for k, v in res.items()}
        if "all_pairs" in res:
            for what in ("copy_pairs", "similar_pairs"):
                exact = set(map(tuple, res["all_pairs"][what]))
                approx = set(map(tuple, res["approximate"][what]))
                row[f"recall_{what}_vs_all_pairs"] = round(len(exact & approx) / max(len(exact), 1), 4)
                row[f"precision_{what}_vs_all_pairs"] = round(len(exact & approx) / max(len(approx), 1), 4)
                row[f"{what}_all_pairs"] = len(exact)
        out[n] = row
        shutil.rmtree(folder)
        print(json.dumps({n: row}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("make", "dev", "scale"))
    ap.add_argument("--dev", type=Path, default=ROOT.parent.parent / "shared/data/imagenet-samples")
    ap.add_argument("--photos", type=Path, default=Path("/tmp/dups/photos"))
    ap.add_argument("--index", type=Path, default=Path("/tmp/dups/dev.index"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/dups"))
    args = ap.parse_args()
    if args.part == "make":
        make(args.dev, args.photos)
    elif args.part == "dev":
        print(json.dumps(bench_dev(args.index), indent=1))
    else:
        res = bench_scale(args.sizes, args.tmp)
        print(f"{'files':>10} {'seconds':>9} {'peak RSS MiB':>13} {'peak anon MiB':>14} {'copies groups':>14}")
        for n, row in res.items():
            r = row["approximate"]
            print(f"{n:>10,} {r['seconds']:>9} {r['peak_rss_mib']:>13} {r['peak_anon_mib']:>14} {r['copies_groups']:>14}")
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
