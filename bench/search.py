"""Benchmark of the photo index and search, each figure measured in one run on one machine.

1. throughput: ``Index.build`` on JPEG files (decoding, thumbnails, hashing, all features)
   against the bare forward pass on already-decoded tensors (target: ratio >= 0.9);
   and what libjpeg's scaled decoding (``draft``) does to top-1 on the dev photos;
2. latency on a synthetic index of 1,000,000 entries: keyword search and exact ``like``,
   p50/p99 (targets: keyword < 50 ms, like < 1 s);
3. peak memory (RSS) of a build over 1,000 vs 10,000 small photos, each in a fresh process
   (target: within 10 percent);
4. search quality on the dev photos: mean average precision of hypernym queries against the
   labels (target >= 0.9); precision and recall at the default cut-off; the stored top-32
   probabilities against the full 1,000;
5. near-duplicates on transformed copies of the dev photos (resized, recompressed, cropped,
   flipped): pairwise recall and precision at the default threshold (targets 0.98 / 0.98).

    python bench/search.py                      # all, about 20 minutes on 2 CPU cores
    python bench/search.py --only latency       # one part: throughput latency memory quality duplicates
    python bench/search.py --quick              # smaller sizes, a smoke test

Two checkouts side by side (``bench/_trees.py``): ``--before DIR`` measures the speed figures for
DIR and for this checkout (or ``--after DIR``), each in a worker process with PYTHONPATH set to
it, alternating round by round, through the public API only (``Index.build``, ``Index.open``,
``Index.search``, ``Index.like``), and prints both with the ratio after / before: throughput (best
of ``--rounds``, default 3) and keyword and like latency (14 rounds of the 15 words, the 3 broadest
words 9 times, 20 like queries), and with ``--only memory`` the build's peak memory. The
synthetic index is written once, by the convscope of ``--synthetic-writer`` (default: the
``--before`` checkout; its writer uses the build's private partial store of 0f7ca53), and both
trees open that same folder. Quality and duplicates are answers, not speed: run them on each
checkout alone.

    python bench/search.py --before /work/wt/base                 # about 4 minutes on 2 idle CPU cores
    python bench/search.py --before /work/wt/base --after /work/main

The dev photos (``--dev``, default ``../shared/data/imagenet-samples``) are used here only,
never by the tests.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _trees import ROOT, Figure, Trees, dev_photos_dir, print_table, two_tree_run

QUERIES = ("dog", "cat", "bird", "fish", "snake", "insect", "primate", "vehicle", "boat", "fruit",
           "musical instrument", "furniture", "tool", "building", "clothing")
#: The broadest words: "animal" names 398 classes, "organism" 410, "artifact" 522.
BROAD = ("animal", "organism", "artifact")
TRANSFORMS = ("resized", "recompressed", "cropped", "flipped")


def percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def dev_photos(dev: Path, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
    rows = list(csv.DictReader(open(dev.parent / f"{dev.name}-labels.tsv"), delimiter="\t"))[:limit]
    return [dev / r["file"] for r in rows], np.array([int(r["class_index"]) for r in rows])


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` smooth random photos (gradients plus noise: they compress like photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        a = rng.uniform(0, 255, (3, 3))
        img = np.stack([(a[c, 0] * xx / w + a[c, 1] * yy / h + a[c, 2]) % 256 for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- 1. throughput


def bench_throughput(model, n: int, batch: int, workers: int, tmp: Path, rounds: int = 3) -> dict:
    from convscope.index import Index

    paths = write_jpegs(tmp / "jpegs", n, (640, 480))
    tensors = [model.transform(Image.open(p).convert("RGB")) for p in paths]
    xs = [torch.stack(tensors[i:i + batch]) for i in range(0, n, batch)]
    with torch.inference_mode():
        model.module(xs[0])
    rates: dict[str, float] = {}
    # interleaved rounds, best of each: on a shared machine the load comes and goes
    for _ in range(rounds):
        t = time.perf_counter()
        with torch.inference_mode():
            for x in xs:
                model.module(x)
        rates["bare"] = max(rates.get("bare", 0.0), n / (time.perf_counter() - t))
        for draft in (True, False):
            folder = tmp / f"index-{draft}"
            t = time.perf_counter()
            Index.build(model, [tmp / "jpegs"], folder, batch_size=batch, workers=workers, draft=draft, progress=False)
            key = f"draft_{draft}"
            rates[key] = max(rates.get(key, 0.0), n / (time.perf_counter() - t))
            shutil.rmtree(folder)
    out = {"photos": n, "size": "640x480", "batch": batch, "workers": workers, "rounds": rounds,
           "bare_forward_per_s": round(rates["bare"], 2)}
    for draft in (True, False):
        out[f"index_per_s_draft_{draft}"] = round(rates[f"draft_{draft}"], 2)
        out[f"ratio_draft_{draft}"] = round(rates[f"draft_{draft}"] / rates["bare"], 3)
    return out


def bench_draft_top1(model, dev: Path, tmp: Path, limit: int | None) -> dict:
    """Top-1 with and without reduced-scale decoding (``convscope.data.load_image(target_size=)``,
    libjpeg's ``draft`` for a JPEG), on the dev photos as they are (most are 500x375, where no
    scaled decode still covers 256 px, so it changes nothing) and on copies upscaled 4x
    (camera-sized photos, where it decodes at 1/4 or 1/2)."""
    from convscope.data import load_image

    paths, labels = dev_photos(dev, limit)
    big = tmp / "big"
    big.mkdir(exist_ok=True)
    big_paths = []
    for p in paths:
        q = big / p.name
        with Image.open(p) as im:
            im.convert("RGB").resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC).save(q, "JPEG", quality=92)
        big_paths.append(q)
    out = {}
    for name, files in (("as_is", paths), ("upscaled_4x", big_paths)):
        sizes = []
        for p in files:
            with Image.open(p) as im:
                sizes.append(im.size)
        for draft in (False, True):
            preds, reduced, t = [], 0, time.perf_counter()
            decode = 0.0
            for i in range(0, len(files), 50):
                xs = []
                for p, size in zip(files[i:i + 50], sizes[i:i + 50]):
                    t0 = time.perf_counter()
                    image = load_image(p, target_size=model.preprocessing.resize if draft else None)
                    xs.append(model.transform(image))
                    decode += time.perf_counter() - t0
                    reduced += image.size != size
                with torch.inference_mode():
                    preds.append(model.module(torch.stack(xs)).argmax(1).numpy())
            top1 = float((np.concatenate(preds) == labels).mean())
            out[f"{name}_draft_{draft}"] = {"top1": round(top1, 4), "decoded_smaller": reduced,
                                            "decode_ms_per_photo": round(decode / len(files) * 1000, 2)}
    return out


# --------------------------------------------------------------------------- 2. latency


class _FakeExtractor:
    """What the partial build asks of an extractor, for a synthetic index."""

    def __init__(self, dim: int, units: int, labels: list[str]):
        self.dim, self.units, self.classes = dim, units, len(labels)
        self.model = type("M", (), {"labels": labels})()


def synthetic_index(out: Path, n: int, dev_probs: np.ndarray, dim: int = 1280, units: int = 8, seed: int = 0) -> Path:
    """An index of ``n`` entries written through the build's own partial store and finalize, as
    0f7ca53 has them (run by the ``--synthetic-writer`` checkout; the code after issue 19 opens it):
    each entry takes the sorted probability profile of a random dev photo on random classes,
    a random unit embedding and random unit maxima."""
    from convscope.index import build as b
    from convscope.models import imagenet_labels

    labels = imagenet_labels()
    rng = np.random.default_rng(seed)
    settings = {"format": b.FORMAT, "version": b.FORMAT_VERSION, "model": {"spec": "synthetic", "weights": "none", "fingerprint": "0"},
                "preprocessing": {"input_size": [224, 224]}, "labels": labels,
                "layers": [{"name": "synthetic", "offset": 0, "shape": [units, 7, 7]}],
                "head": None, "embedding_dim": dim, "fps": 1.0, "draft": True, "top_classes": b.TOP_CLASSES,
                "prob_floor": b.PROB_FLOOR, "inputs": []}
    out.mkdir(parents=True)
    partial = b._Partial(out, settings, _FakeExtractor(dim, units, labels), resume=False)
    profiles = -np.sort(-dev_probs, axis=1)[:, :b.TOP_CLASSES]
    block = 20000
    thumb = b"\xff\xd8\xff\xd9"
    for a in range(0, n, block):
        m = min(block, n - a)
        probs = np.zeros((m, 1000), np.float32)
        prof = profiles[rng.integers(0, len(profiles), m)]
        cls = rng.integers(0, 1000, (m, b.TOP_CLASSES))  # a repeated class keeps one of its values
        np.put_along_axis(probs, cls, prof, axis=1)
        top_class, top_prob = b._prob_rows(probs)
        emb = rng.standard_normal((m, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        rows = {"top_class": top_class, "top_prob": top_prob, "embedding": emb.astype(np.float16),
                "unit_rows": rng.random((m, units), dtype=np.float32).astype(np.float16),
                "unit_pos_rows": rng.integers(0, 49, (m, units)).astype(np.int16)}
        for name in b.ROW_ARRAYS:
            partial.files[name].append(rows[name])
        first = partial.rows
        partial.conn.executemany("INSERT INTO entries VALUES (?, ?, NULL)", [(first + i, first + i + 1) for i in range(m)])
        partial.conn.executemany("INSERT INTO thumbs VALUES (?, ?)", [(first + i, thumb) for i in range(m)])
        partial.conn.executemany(
            "INSERT INTO files (id, path, kind, size, mtime_ns, sha256, first_row, rows) VALUES (?, ?, 'photo', 1, ?, ?, ?, 1)",
            [(first + i + 1, f"/synthetic/{first + i:07d}.jpg", (first + i) * 10**9, f"{first + i:064x}", first + i) for i in range(m)])
        partial.rows += m
        partial.commit(force=True)
    b._finalize(out, partial, _FakeExtractor(dim, units, labels), 0.0)
    partial.close()
    b._cleanup(out)
    return out


@contextlib.contextmanager
def before_fast_paths(index):
    """Keyword search as it ran before its fast paths, for a side-by-side figure: every match
    sorted (``lexsort``) to merge video frames and to pick the top results, the WordNet path
    walked for all 1,000 classes, no class blocks."""
    from convscope.index import search as S
    from convscope.vocab import wordnet

    def segments(store, rows, scores):
        if len(rows) == 0:
            empty = np.zeros(0, np.int64)
            return empty, np.zeros(0), empty, empty
        files = np.asarray(store.entry_file[rows])
        video = ~np.isnan(np.asarray(store.entry_time[rows]))
        brk = np.ones(len(rows), bool)
        brk[1:] = (np.diff(rows) != 1) | (files[1:] != files[:-1]) | ~video[1:] | ~video[:-1]
        seg = np.cumsum(brk) - 1
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], len(rows)) - 1
        order = np.lexsort((rows, -scores, seg))
        first_of_seg = order[np.searchsorted(seg[order], np.arange(len(starts)))]
        return rows[first_of_seg], scores[first_of_seg], rows[starts], rows[ends]

    def paths(self, senses):
        found = ((i, self.path(i, senses)) for i in range(len(self.class_wnids)))
        return {i: p for i, p in found if p is not None}

    saved = (S.segments, S._top_order, wordnet.Vocabulary._paths, index.class_blocks)
    S.segments = segments
    S._top_order = lambda key, tie, top: np.lexsort((tie, -key))[:top]
    wordnet.Vocabulary._paths = paths
    index.class_blocks = None
    try:
        yield
    finally:
        S.segments, S._top_order, wordnet.Vocabulary._paths, index.class_blocks = saved


def write_synthetic(out: Path, n: int, dev: Path, limit: int | None, writer: Path) -> float:
    """The synthetic index of ``n`` entries, written by :func:`synthetic_index` in a process whose
    convscope is the checkout ``writer`` (the writer uses the build's private partial store of
    0f7ca53: ``writer`` must be a checkout that has it); returns the seconds it took."""
    cmd = [sys.executable, __file__, "--write-synthetic", str(out), str(n), "--dev", str(dev)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "PYTHONPATH": str(writer), "PYTHONDONTWRITEBYTECODE": "1"}
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"writing the synthetic index with the convscope of {writer} failed "
                         f"(--synthetic-writer names a checkout whose index build has _Partial, such as 0f7ca53):\n"
                         f"{res.stderr[-3000:]}")
    return time.perf_counter() - t


def _write_synthetic_child(out: str, n: int, dev: Path, limit: int | None) -> None:
    from convscope.models import load_model

    paths, _ = dev_photos(dev, limit)
    synthetic_index(Path(out), n, _dev_probs(load_model(device="cpu"), paths))


def bench_latency(folder: Path, built: float, runs: int) -> dict:
    from convscope.index import Index

    index = Index.open(folder)
    n = index.entries
    # warm the page cache once, as a server that keeps an index open would be
    index.search("dog", top=20)
    index.like(0, top=20)
    out = {"entries": n, "synthetic_build_s": round(built, 1), "postings": int(index.post_entry.shape[0])}
    kw, kw_cpu, kw_before = [], [], []
    for i in range(runs):
        q = QUERIES[i % len(QUERIES)]
        t, c = time.perf_counter(), time.process_time()
        index.search(q, top=20)
        kw.append(time.perf_counter() - t)
        kw_cpu.append(time.process_time() - c)
        with before_fast_paths(index):  # the same query, side by side, the way it ran before
            t = time.perf_counter()
            index.search(q, top=20)
            kw_before.append(time.perf_counter() - t)
    out["keyword"] = percentiles(kw)
    out["keyword_cpu"] = percentiles(kw_cpu)  # this process's CPU time: what a loaded machine does not inflate
    out["keyword_before_fast_paths"] = percentiles(kw_before)
    out["keyword_p99_ratio_before_over_now"] = round(out["keyword_before_fast_paths"]["p99_ms"] / out["keyword"]["p99_ms"], 2)
    for word in BROAD:
        with before_fast_paths(index):
            t = time.perf_counter()
            index.search(word, top=20)
            out[f"keyword_{word}_before_fast_paths_ms"] = round((time.perf_counter() - t) * 1000, 2)
    # broad words side by side: with the class blocks (the default) and from the inverted lists alone
    blocks = index.class_blocks
    for word in BROAD:
        ms = {"blocks": [], "lists": []}
        for _ in range(5):
            for how, columns in (("blocks", blocks), ("lists", None)):
                index.class_blocks = columns
                t = time.perf_counter()
                index.search(word, top=20)
                ms[how].append(time.perf_counter() - t)
        index.class_blocks = blocks
        a, b = (float(np.median(ms[h])) * 1000 for h in ("blocks", "lists"))
        out[f"keyword_{word}_ms"] = {"blocks": round(a, 2), "lists_only": round(b, 2), "speedup": round(b / a, 2)}
    lk = []
    for i in range(max(5, runs // 10)):
        t = time.perf_counter()
        index.like(int(i * 9973 % n), top=20)
        lk.append(time.perf_counter() - t)
    out["like_exact"] = percentiles(lk)
    out["index_bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    index.close()
    return out


# --------------------------------------------------------------------------- 3. memory


def _memory_child(n: int, folder: str) -> None:
    from convscope.index import Index
    from convscope.models import Preprocessing, load_model

    model = load_model(device="cpu")
    p = model.preprocessing
    import dataclasses

    model = dataclasses.replace(model, preprocessing=Preprocessing((64, 64), 64, p.interpolation, p.mean, p.std))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the parent process
    base = _vm_hwm()
    Index.build(model, [Path(folder) / "jpegs"], Path(folder) / f"index-{n}", batch_size=32, workers=1, progress=False)
    peak = _vm_hwm()
    print(json.dumps({"photos": n, "peak_rss_mib": round(peak / 1024, 1), "growth_mib": round((peak - base) / 1024, 1)}))


def _vm_hwm() -> int:
    """This process's peak resident memory in KiB (the main process; decoding workers aside)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_run(n: int, folder: Path, env: dict | None = None) -> dict:
    """A build over the ``n`` JPEGs in ``folder/jpegs`` in a fresh process (under ``env``: a
    tree's PYTHONPATH); its peak RSS."""
    res = subprocess.run([sys.executable, __file__, "--memory-child", str(n), str(folder)], capture_output=True,
                         text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"the memory run over {n} photos failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(folder / f"index-{n}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_memory(sizes: list[int], tmp: Path) -> dict:
    out = {}
    for n in sizes:
        folder = tmp / f"mem-{n}"
        write_jpegs(folder / "jpegs", n, (96, 72), seed=n)
        out[n] = memory_run(n, folder)
        shutil.rmtree(folder)
    a, b = out[sizes[0]]["peak_rss_mib"], out[sizes[-1]]["peak_rss_mib"]
    out["peak_ratio"] = round(b / a, 3)
    return out


# --------------------------------------------------------------------------- 4-5. dev photos


def transformed_copies(paths: list[Path], folder: Path) -> dict[str, list[Path]]:
    """Four near-duplicates of each photo: half size, JPEG quality 30, a centre crop of 80
    percent, a horizontal flip."""
    out = {t: [] for t in TRANSFORMS}
    for t in TRANSFORMS:
        (folder / t).mkdir(parents=True, exist_ok=True)
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            w, h = im.size
            copies = {
                "resized": im.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
                "recompressed": Image.open(io.BytesIO(_jpeg(im, 30))),
                "cropped": im.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
                "flipped": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            }
        for t, img in copies.items():
            q = folder / t / (p.stem + ".jpg")
            img.save(q, "JPEG", quality=90 if t != "recompressed" else 30)
            out[t].append(q)
    return out


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / max(rel.sum(), 1))


def bench_dev(model, dev: Path, tmp: Path, limit: int | None, batch: int, workers: int) -> dict:
    from convscope.index import DUPLICATE_COSINE, MIN_SCORE, Index
    from convscope.index.organize import file_vectors
    from convscope.vocab import Vocabulary

    paths, labels = dev_photos(dev, limit)
    folder = tmp / "dev"
    copies = transformed_copies(paths, folder / "copies")
    t = time.perf_counter()
    index = Index.build(model, paths + [p for t_ in TRANSFORMS for p in copies[t_]], folder / "index",
                        batch_size=batch, workers=workers, progress=False)
    out: dict = {"photos": len(paths), "copies_each": list(TRANSFORMS), "build_s": round(time.perf_counter() - t, 1)}
    # 4. quality, over the originals only
    vocab = Vocabulary.load()
    row_of = {str(Path(p).resolve()): i for i, p in enumerate(paths)}
    aps, tp, fp, fn = {}, 0, 0, 0
    for q in QUERIES:
        classes = sorted(vocab.classes_for(q).paths)
        relevant = np.isin(labels, classes)
        scores = np.zeros(len(paths))
        for r in index.search(q, top=10**6, min_score=0.0):
            if r.path in row_of:
                scores[row_of[r.path]] = r.score
        aps[q] = round(average_precision(scores, relevant), 4)
        hit = scores >= MIN_SCORE
        tp += int((hit & relevant).sum()); fp += int((hit & ~relevant).sum()); fn += int((~hit & relevant).sum())
    out["mean_average_precision"] = round(float(np.mean(list(aps.values()))), 4)
    out["average_precision"] = aps
    out[f"at_min_score_{MIN_SCORE}"] = {"precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(tp + fn, 1), 4)}
    # 5. duplicates: pairs of files from one original are the true pairs
    groups = index.duplicates()
    origin = {}
    for i, p in enumerate(paths):
        origin[str(Path(p).resolve())] = i
        for t_ in TRANSFORMS:
            origin[str(copies[t_][i].resolve())] = i
    found = set()
    for g in groups:
        members = sorted(g["paths"])
        found.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    true = {(a, b) for a in origin for b in origin if a < b and origin[a] == origin[b]}
    tp = len(found & true)
    out["duplicates"] = {"threshold": DUPLICATE_COSINE, "pair_recall": round(tp / len(true), 4),
                         "pair_precision": round(tp / max(len(found), 1), 4), "groups": len(groups)}
    sweep = {}
    for threshold in (0.7, 0.75, 0.8, 0.85, 0.9):
        found = set()
        for g in index.duplicates(threshold=threshold):
            members = sorted(g["paths"])
            found.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
        tp = len(found & true)
        sweep[threshold] = {"recall": round(tp / len(true), 4), "precision": round(tp / max(len(found), 1), 4)}
    out["duplicates_by_threshold"] = sweep
    # the cosine of each copy to its original, and of each photo to its nearest other photo
    ids, vectors = file_vectors(index)
    files = index.files()
    idx = {files[f]["path"]: k for k, f in enumerate(ids)}
    originals = np.array([idx[str(Path(p).resolve())] for p in paths])
    per = {}
    for t_ in TRANSFORMS:
        cp = np.array([idx[str(q.resolve())] for q in copies[t_]])
        cos = (vectors[originals] * vectors[cp]).sum(1)
        per[t_] = {"min": round(float(cos.min()), 4), "p02": round(float(np.percentile(cos, 2)), 4), "median": round(float(np.median(cos)), 4)}
    sims = vectors[originals] @ vectors[originals].T
    np.fill_diagonal(sims, -1)
    nearest_other = sims.max(1)
    per["nearest_other_photo"] = {"max": round(float(nearest_other.max()), 4), "p98": round(float(np.percentile(nearest_other, 98)), 4)}
    out["copy_to_original_cosine"] = per
    index.close()
    return out


# --------------------------------------------------------------------------- two trees (--before)
# Calls made by the harness in each tree's worker process (bench/_trees.py), through the public
# API only (Index.build, Index.open, Index.search, Index.like): the model and the open index stay
# in the worker between calls.

_WORKER: dict = {}


def w_load(threads: int) -> None:
    from convscope.models import load_model

    torch.set_num_threads(threads)
    _WORKER["model"] = load_model(device="cpu")


def w_throughput(jpegs: str, out: str, batch: int, workers: int) -> dict:
    """One round of figure 1: the bare forward pass over the photos decoded beforehand, then
    ``Index.build`` on the files (default options), each as photos per second."""
    from convscope.index import Index

    model = _WORKER["model"]
    paths = sorted(Path(jpegs).iterdir())
    if _WORKER.get("tensors_of") != (jpegs, batch):
        tensors = [model.transform(Image.open(p).convert("RGB")) for p in paths]
        _WORKER["tensors"] = [torch.stack(tensors[i:i + batch]) for i in range(0, len(paths), batch)]
        _WORKER["tensors_of"] = (jpegs, batch)
        with torch.inference_mode():
            model.module(_WORKER["tensors"][0])
    t = time.perf_counter()
    with torch.inference_mode():
        for x in _WORKER["tensors"]:
            model.module(x)
    bare = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    Index.build(model, [jpegs], out, batch_size=batch, workers=workers, progress=False).close()
    built = len(paths) / (time.perf_counter() - t)
    shutil.rmtree(out)
    return {"bare_per_s": bare, "index_per_s": built}


def w_open(folder: str) -> dict:
    from convscope.index import Index

    index = _WORKER["index"] = Index.open(folder)
    index.search("dog", top=20)  # the page cache warmed once, as a server that keeps an index open has it
    index.like(0, top=20)
    return {"entries": int(index.entries)}


def w_keyword(queries: list[str]) -> dict:
    wall, cpu = [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        _WORKER["index"].search(q, top=20)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"wall": wall, "cpu": cpu}


def w_like(rows: list[int]) -> list[float]:
    times = []
    for row in rows:
        t = time.perf_counter()
        _WORKER["index"].like(row, top=20)
        times.append(time.perf_counter() - t)
    return times


def w_close() -> None:
    _WORKER.pop("index").close()


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def compare(args, trees: Trees) -> None:
    want = set(args.only or ["throughput", "latency"])
    unknown = want - {"throughput", "latency", "memory"}
    if unknown:
        raise SystemExit(f"--before compares speed and memory (--only throughput latency memory); "
                         f"{' '.join(sorted(unknown))} measure answers: run them on each checkout alone")
    quick = args.quick
    limit = 60 if quick else None
    print(f"search benchmark, two trees side by side; threads {args.threads}, batch {args.batch}, "
          f"decoding workers {args.workers}, torch {torch.__version__}, {os.cpu_count()} CPUs\n{trees.header()}",
          flush=True)
    figures: list[Figure] = []
    with trees.workers(__file__) as w, tempfile.TemporaryDirectory(prefix="convscope-bench-search-") as tmp:
        tmp = Path(tmp)
        w.broadcast("w_load", threads=args.threads)
        if "throughput" in want:
            n = 64 if quick else 256
            rounds = args.rounds or (2 if quick else 3)
            write_jpegs(tmp / "jpegs", n, (640, 480))
            runs = w.interleave("w_throughput", rounds, jpegs=str(tmp / "jpegs"), out=str(tmp / "index"),
                                batch=args.batch, workers=args.workers)
            best = {t: {k: max(r[k] for r in runs[t]) for k in ("bare_per_s", "index_per_s")} for t in runs}
            rows = [
                Figure("[1] bare forward on decoded tensors, photos/s", best["before"]["bare_per_s"], best["after"]["bare_per_s"]),
                Figure(f"[1] Index.build, {n} 640x480 JPEGs, photos/s", best["before"]["index_per_s"], best["after"]["index_per_s"]),
                Figure("[1] Index.build / bare forward, best / best (target >= 0.9)",
                       best["before"]["index_per_s"] / best["before"]["bare_per_s"],
                       best["after"]["index_per_s"] / best["after"]["bare_per_s"], digits=3),
                # each round times the bare forward and the build back to back: their ratio drifts
                # less with the machine's load than rates taken minutes apart
                Figure("[1] Index.build / bare forward, median of the rounds' own ratios",
                       *(float(np.median([r["index_per_s"] / r["bare_per_s"] for r in runs[t]])) for t in ("before", "after")),
                       digits=3),
            ]
            figures += rows
            print_table(f"[1] throughput, best of {rounds} rounds", rows)
        if "latency" in want:
            n = 50_000 if quick else 1_000_000
            writer = args.synthetic_writer or trees.before.root
            folder = tmp / "synthetic"
            built = write_synthetic(folder, n, args.dev, limit, writer)
            print(f"synthetic index of {n:,} entries written in {built:.0f} s by the convscope of {writer}; "
                  f"both trees open that one folder", flush=True)
            w.broadcast("w_open", folder=str(folder))
            rounds = 3 if quick else 14  # each round: the 15 words once per tree
            kw = w.interleave("w_keyword", rounds, queries=list(QUERIES))
            wall = {t: [x for r in kw[t] for x in r["wall"]] for t in kw}
            cpu = {t: [x for r in kw[t] for x in r["cpu"]] for t in kw}
            rows = []
            for q in (50, 99):
                rows.append(Figure(f"[2] keyword, {len(wall['after'])} queries, p{q}, ms", _ms(wall["before"], q),
                                   _ms(wall["after"], q), "lower", digits=2))
            for q in (50, 99):
                rows.append(Figure(f"[2] keyword, CPU time, p{q}, ms", _ms(cpu["before"], q), _ms(cpu["after"], q),
                                   "lower", digits=2))
            broad = w.interleave("w_keyword", 9, queries=list(BROAD))
            for k, word in enumerate(BROAD):
                rows.append(Figure(f"[2] keyword {word!r}, median of 9, ms", _ms([r["wall"][k] for r in broad["before"]], 50),
                                   _ms([r["wall"][k] for r in broad["after"]], 50), "lower", digits=2))
            like_rows = [int(i * 9973 % n) for i in range(10 if quick else 20)]
            lk_rounds = [like_rows[i:i + 5] for i in range(0, len(like_rows), 5)]
            lk = {t.label: [] for t in trees}
            for r, chunk in enumerate(lk_rounds):
                for t in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                    lk[t.label] += w.call(t.label, "w_like", rows=chunk)
            for q in (50, 99):
                rows.append(Figure(f"[2] like, exact, {len(lk['after'])} queries, p{q}, ms", _ms(lk["before"], q),
                                   _ms(lk["after"], q), "lower", digits=1))
            w.broadcast("w_close")
            shutil.rmtree(folder)
            figures += rows
            print_table(f"[2] latency on a synthetic index of {n:,} entries", rows)
    if "memory" in want:
        sizes = [100, 1000] if quick else [1000, 10000]
        mem: dict = {t.label: {} for t in trees}
        with tempfile.TemporaryDirectory(prefix="convscope-bench-search-") as tmp:
            for k, n in enumerate(sizes):
                folder = Path(tmp) / f"mem-{n}"
                write_jpegs(folder / "jpegs", n, (96, 72), seed=n)
                for t in (list(trees) if k % 2 == 0 else list(trees)[::-1]):
                    mem[t.label][n] = memory_run(n, folder, t.env())
                shutil.rmtree(folder)
        rows = [Figure(f"[3] peak RSS of a build over {n} photos, MiB", mem["before"][n]["peak_rss_mib"],
                       mem["after"][n]["peak_rss_mib"], "lower", digits=0) for n in sizes]
        rows.append(Figure(f"[3] peak RSS {sizes[-1]} / {sizes[0]} (target <= 1.10)",
                           mem["before"][sizes[-1]]["peak_rss_mib"] / mem["before"][sizes[0]]["peak_rss_mib"],
                           mem["after"][sizes[-1]]["peak_rss_mib"] / mem["after"][sizes[0]]["peak_rss_mib"], "lower", digits=3))
        figures += rows
        print_table("[3] memory (fresh process per build, 96x72 JPEGs, model at 64 px)", rows)
    print()
    print_table("search: all figures, after / before", figures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="throughput latency memory quality duplicates")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dev", type=Path, default=dev_photos_dir(),
                    help="the dev photos, beside their NAME-labels.tsv (default: shared/data/imagenet-samples in a "
                         "folder above this checkout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=None, help="with --before: throughput rounds per tree (default 3)")
    ap.add_argument("--synthetic-writer", type=Path, default=None, metavar="DIR",
                    help="the checkout whose convscope writes the synthetic index of the latency figures (its "
                         "build's private partial store, as at 0f7ca53; default: --before, else this checkout)")
    Trees.add_arguments(ap)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--write-synthetic", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    labels = args.dev.parent / f"{args.dev.name}-labels.tsv"
    if not (args.dev.is_dir() and labels.is_file()):
        raise SystemExit(f"--dev {args.dev}: no such folder of photos beside {labels.name}")
    if args.memory_child:
        _memory_child(int(args.memory_child[0]), args.memory_child[1])
        return
    if args.write_synthetic:
        _write_synthetic_child(args.write_synthetic[0], int(args.write_synthetic[1]), args.dev, args.limit)
        return
    if two_tree_run(args, globals(), compare):
        return
    from convscope.models import load_model

    want = set(args.only or ["throughput", "latency", "memory", "quality"])
    if "duplicates" in want:
        want.add("quality")  # one dev index serves both
    limit = 60 if args.quick else None
    model = load_model(device="cpu")
    results: dict = {"threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="convscope-bench-search-") as tmp:
        tmp = Path(tmp)
        if "throughput" in want:
            results["throughput"] = bench_throughput(model, 64 if args.quick else 256, args.batch, args.workers, tmp)
            results["draft_top1"] = bench_draft_top1(model, args.dev, tmp, limit)
            print(json.dumps({"throughput": results["throughput"], "draft_top1": results["draft_top1"]}), flush=True)
        if "latency" in want:
            folder = tmp / "synthetic"
            built = write_synthetic(folder, 50_000 if args.quick else 1_000_000, args.dev, limit,
                                    args.synthetic_writer or ROOT)
            results["latency"] = bench_latency(folder, built, 40 if args.quick else 200)
            shutil.rmtree(folder)
            print(json.dumps({"latency": results["latency"]}), flush=True)
        if "memory" in want:
            results["memory"] = bench_memory([100, 1000] if args.quick else [1000, 10000], tmp)
            print(json.dumps({"memory": results["memory"]}), flush=True)
        if "quality" in want:
            results["dev"] = bench_dev(model, args.dev, tmp, limit, args.batch, args.workers)
            print(json.dumps({"dev": results["dev"]}), flush=True)
    print(json.dumps(results, indent=2))


def _dev_probs(model, paths: list[Path]) -> np.ndarray:
    from convscope.data import iter_batches

    out = []
    for batch in iter_batches(paths, model.transform, batch_size=50, workers=1):
        with torch.inference_mode():
            out.append(torch.softmax(model.module(batch.tensors), 1).numpy())
    return np.concatenate(out)


if __name__ == "__main__":
    main()
