"""Benchmark of taught concepts (``convscope teach``): few-shot retrieval on the dev photos, as
Zeiler and Fergus's section 5 measured transfer to new categories, and the speed of teaching.

1. quality: the dev photos are one per even ImageNet class, so a "new" concept is a WordNet group
   of them (dog, bird, insect, reptile, vehicle, musical instrument, clothing, food, structure,
   container: 13 to 59 photos each). Its labels are hidden; ``k`` of its photos (1, 3, 5, 10,
   drawn at random, ``--trials`` draws) are the examples and the rest of the index is the
   background, as ``teach`` with positives only sees it. Every other photo is ranked, and the
   mean average precision over the groups and draws is reported for, side by side:
   ``like-mean`` / ``like-max`` (the mean or the max of the cosines to the examples, as
   ``search --like`` from each example), ``logreg`` (a plain scikit-learn logistic regression
   on the pooled features, examples against the background), and the candidates for the
   concept model (features: pooled embedding, unit maxima of the indexed layers, class
   probabilities; models: balanced, regularized logistic regression). Precision and recall at
   the concept's own threshold (the calibration) are reported for the chosen model.
2. speed: teaching (the chosen model, with its leave-out figure) on a synthetic index of
   100,000 entries (random unit embeddings), and scoring a concept over 1,000,000.

    python -m convscope index ../shared/data/imagenet-samples --out /tmp/teach-dev.index
    python bench/teach.py --index /tmp/teach-dev.index
"""
from __future__ import annotations

import argparse
import csv
import time
import zlib
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from convscope.index import concepts
from convscope.index.store import IndexStore
from convscope.vocab import Vocabulary

GROUPS = ("dog", "bird", "insect", "reptile", "vehicle", "musical instrument", "clothing", "food", "structure",
          "container")
SHOTS = (1, 3, 5, 10)


def labels(store: IndexStore, dev: Path) -> np.ndarray:
    """The ImageNet class of each entry, from the labels file beside the dev photos."""
    by_name = {r["file"]: int(r["class_index"]) for r in csv.DictReader(open(dev.parent / f"{dev.name}-labels.tsv"),
                                                                          delimiter="\t")}
    files = store.files()
    return np.array([by_name[Path(files[int(f)]["path"]).name] for f in store.entry_file])


def feature_sets(store: IndexStore) -> dict[str, np.ndarray]:
    emb = np.asarray(store.embedding, np.float32)
    probs = np.zeros((store.entries, len(store.labels)), np.float32)
    tc, tp = np.asarray(store.top_class), np.asarray(store.top_prob, np.float32)
    for j in range(tc.shape[1]):
        ok = tc[:, j] >= 0
        probs[np.flatnonzero(ok), tc[ok, j]] = tp[ok, j]
    units = np.asarray(store.units, np.float32).T
    units = (units - units.mean(0)) / (units.std(0) + 1e-6)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    sq = np.sqrt(probs)
    return {"embedding": emb, "units": units, "probs": sq,
            "embedding+probs": np.hstack([emb, sq]) / np.sqrt(2)}


def plain_logreg(x, pos, bg):
    model = LogisticRegression(max_iter=1000).fit(np.vstack([x[pos], x[bg]]), np.r_[np.ones(len(pos)), np.zeros(len(bg))])
    return model.decision_function(x)


def balanced(c: float):
    def fit(x, pos, bg):
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=1000)
        model.fit(np.vstack([x[pos], x[bg]]), np.r_[np.ones(len(pos)), np.zeros(len(bg))])
        return model.decision_function(x)
    return fit


def like_mean(x, pos, bg):
    return (x @ x[pos].T).mean(1)


def like_max(x, pos, bg):
    return (x @ x[pos].T).max(1)


def concept_model(x, pos, bg):
    """The model ``convscope.index.concepts`` fits (its own code path; a quarter of the
    background, drawn at random, held out to calibrate, as ``teach`` samples it)."""
    bg = np.random.default_rng(len(pos)).permutation(bg)
    fitted = concepts.fit(x[pos], x[bg], np.zeros((0, x.shape[1]), np.float32))
    return x @ fitted.weights + fitted.bias


def quality(store: IndexStore, dev: Path, trials: int) -> None:
    truth = labels(store, dev)
    vocab = Vocabulary.load()
    feats = feature_sets(store)
    methods = [("like-mean", "embedding", like_mean), ("like-max", "embedding", like_max),
               ("logreg (plain)", "embedding", plain_logreg)]
    for name in ("embedding", "units", "probs", "embedding+probs"):
        methods.append(("balanced C=1", name, balanced(1.0)))
    for c in (0.1, 10.0):
        methods.append((f"balanced C={c:g}", "embedding", balanced(c)))
    methods.append(("concepts.fit (chosen)", "embedding", concept_model))
    results = {(m, f): {k: [] for k in SHOTS} for m, f, _ in methods}
    calib = {k: [] for k in SHOTS}
    n = store.entries
    for group in GROUPS:
        members = np.flatnonzero(np.isin(truth, list(vocab.classes_for(group).paths)))
        for k in SHOTS:
            for t in range(trials):
                rng = np.random.default_rng(zlib.crc32(f"{group}/{k}/{t}".encode()))
                pos = rng.choice(members, k, replace=False)
                rest = np.setdiff1d(np.arange(n), pos)
                y = np.isin(rest, members)
                for m, f, fn in methods:
                    scores = fn(feats[f], pos, rest)
                    results[(m, f)][k].append(average_precision_score(y, scores[rest]))
                shuffled = rng.permutation(rest)
                fitted = concepts.fit(feats["embedding"][pos], feats["embedding"][shuffled],
                                      np.zeros((0, feats["embedding"].shape[1]), np.float32))
                s = fitted.calibrated(feats["embedding"][rest] @ fitted.weights + fitted.bias)
                hit = s >= fitted.threshold
                calib[k].append((hit & y).sum() / max(hit.sum(), 1) if hit.any() else np.nan)
                calib[k][-1] = (calib[k][-1], (hit & y).sum() / y.sum(), hit.sum())
        print(f"  {group}: {len(members)} photos done", flush=True)
    print(f"mean average precision over {len(GROUPS)} groups x {trials} draws (dev photos, {n} entries)")
    print(f"{'method':26s} {'features':16s} " + " ".join(f"k={k:<5d}" for k in SHOTS))
    for (m, f), by_k in results.items():
        print(f"{m:26s} {f:16s} " + " ".join(f"{np.mean(by_k[k]):.3f}  " for k in SHOTS))
    print("chosen model at its threshold: precision / recall / hits (means)")
    for k in SHOTS:
        p = np.nanmean([c[0] for c in calib[k]])
        r = np.mean([c[1] for c in calib[k]])
        h = np.mean([c[2] for c in calib[k]])
        print(f"  k={k:<3d} precision {p:.3f}  recall {r:.3f}  hits {h:.1f}")


def synthetic_speed(rounds: int) -> None:
    """Teaching on 100,000 random unit embeddings (D=1280) and scoring over 1,000,000."""
    import tempfile

    from convscope.index.concepts import teach_vectors, score_rows

    rng = np.random.default_rng(0)
    d = 1280
    for n in (100_000,):
        emb = rng.standard_normal((n, d), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb.astype(np.float16)
        times = []
        for r in range(rounds):
            pos = rng.choice(n, 10, replace=False)
            t0 = time.perf_counter()
            teach_vectors(emb, np.asarray(emb[pos], np.float32), np.zeros((0, d), np.float32), seed=r)
            times.append(time.perf_counter() - t0)
        print(f"teach 10 examples on {n:,} entries: median {np.median(times):.3f} s, max {max(times):.3f} s")
    n = 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        mm = np.lib.format.open_memmap(Path(tmp) / "e.npy", mode="w+", dtype=np.float16, shape=(n, d))
        for a in range(0, n, 100_000):
            block = rng.standard_normal((100_000, d), dtype=np.float32)
            mm[a:a + 100_000] = block / np.linalg.norm(block, axis=1, keepdims=True)
        mm.flush()
        del mm
        emb = np.load(Path(tmp) / "e.npy", mmap_mode="r")
        w = rng.standard_normal(d).astype(np.float32)
        times = []
        for _ in range(max(rounds * 10, 20)):
            t0 = time.perf_counter()
            score_rows(emb, w, 0.0)
            times.append(time.perf_counter() - t0)
        ms = np.array(times[2:]) * 1000
        print(f"score a concept over {n:,} entries: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="/tmp/teach-dev.index")
    ap.add_argument("--dev", default="/work/shared/data/imagenet-samples")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("quality", "speed"))
    args = ap.parse_args()
    if args.only != "speed":
        with IndexStore.open(args.index) as store:
            quality(store, Path(args.dev), args.trials)
    if args.only != "quality":
        synthetic_speed(args.rounds)


if __name__ == "__main__":
    main()
