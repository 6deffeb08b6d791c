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
   on the pooled features, examples against the background), the candidates for the concept
   model (features: pooled embedding, unit maxima of the indexed layers, class probabilities;
   models: balanced, regularized logistic regression), and the shipped model
   (:mod:`convscope.index.concept_model`: the embedding beside the square roots of the
   probabilities of the examples' classes). Precision and recall at the concept's own
   threshold (the calibration) are reported for the shipped model.
2. speed: teaching (the shipped model, with its leave-out figure) on a synthetic index of
   100,000 entries (random unit embeddings, 14 random classes an entry), and scoring a concept
   over 1,000,000 (the embedding's products and the class half from the inverted lists), beside
   ``search --like``'s read of the same embedding (``search.nearest``).

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

from convscope.index import concept_model as cm
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
            "embedding+probs": np.hstack([emb, sq]) / np.sqrt(2), "embedding|roots": np.hstack([emb, sq])}


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


def shipped(x, pos, bg):
    """The shipped model (:mod:`convscope.index.concept_model`, its own code path) on ``x`` =
    [embedding | square-rooted probabilities of every class]: the examples' classes chosen, a
    quarter of the background, drawn at random, held out to calibrate, as ``teach`` samples it.
    Returns the decisions and the fitted model with its layout."""
    d = x.shape[1] - 1000
    layout = cm.Layout(d, cm.choose_classes(x[pos, d:], np.zeros((0, 1000), np.float32)))
    f = cm.features(x[:, :d], x[:, d:], layout)
    bg = np.random.default_rng(len(pos)).permutation(bg)
    fitted = cm.fit(f[pos], f[bg], np.zeros((0, layout.width), np.float32))
    return f @ fitted.weights + fitted.bias, fitted


def shipped_decisions(x, pos, bg):
    return shipped(x, pos, bg)[0]


def embedding_only(x, pos, bg):
    """The model on the embedding alone (what ``teach`` shipped before the classes counted)."""
    bg = np.random.default_rng(len(pos)).permutation(bg)
    fitted = cm.fit(x[pos], x[bg], np.zeros((0, x.shape[1]), np.float32))
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
    methods.append(("concept model", "embedding", embedding_only))
    methods.append(("concept model (shipped)", "embedding|roots", shipped_decisions))
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
                decision, fitted = shipped(feats["embedding|roots"], pos, rest)
                s = fitted.calibrated(decision[rest])
                hit = s >= fitted.threshold
                calib[k].append(((hit & y).sum() / hit.sum() if hit.any() else np.nan, (hit & y).sum() / y.sum(), hit.sum()))
        print(f"  {group}: {len(members)} photos done", flush=True)
    print(f"mean average precision over {len(GROUPS)} groups x {trials} draws (dev photos, {n} entries)")
    print(f"{'method':26s} {'features':16s} " + " ".join(f"k={k:<5d}" for k in SHOTS))
    for (m, f), by_k in results.items():
        print(f"{m:26s} {f:16s} " + " ".join(f"{np.mean(by_k[k]):.3f}  " for k in SHOTS))
    print("shipped model at its threshold: precision / recall / hits (means)")
    for k in SHOTS:
        p = np.nanmean([c[0] for c in calib[k]])
        r = np.mean([c[1] for c in calib[k]])
        h = np.mean([c[2] for c in calib[k]])
        print(f"  k={k:<3d} precision {p:.3f}  recall {r:.3f}  hits {h:.1f}")


class Synthetic:
    """A stand-in for an index's store: ``n`` random unit embeddings (float16, D = 1280), 14
    random classes an entry with random probabilities, and their inverted lists, in ``folder``."""

    labels = [f"class {c}" for c in range(1000)]

    def __init__(self, folder: Path, n: int, rng, *, memmap: bool):
        from convscope.index.postings import write_postings

        d, self.entries = 1280, n
        emb = np.lib.format.open_memmap(folder / "embedding.npy", mode="w+", dtype=np.float16, shape=(n, d))
        tc = np.lib.format.open_memmap(folder / "top_class.npy", mode="w+", dtype=np.int16, shape=(n, 32))
        tp = np.lib.format.open_memmap(folder / "top_prob.npy", mode="w+", dtype=np.float16, shape=(n, 32))
        for a in range(0, n, 100_000):
            b = min(n, a + 100_000)
            block = rng.standard_normal((b - a, d), dtype=np.float32)
            emb[a:b] = block / np.linalg.norm(block, axis=1, keepdims=True)
            cls = np.argsort(rng.random((b - a, 1000)), axis=1)[:, :14]
            p = rng.dirichlet(np.ones(14) * 0.3, b - a)
            p = np.where(p >= 1e-3, p, 0)
            order = np.argsort(-p, axis=1)
            tc[a:b], tp[a:b] = -1, 0
            tc[a:b, :14] = np.where(np.take_along_axis(p, order, 1) > 0, np.take_along_axis(cls, order, 1), -1)
            tp[a:b, :14] = np.take_along_axis(p, order, 1)
        for m in (emb, tc, tp):
            m.flush()
        del emb, tc, tp
        write_postings(folder, 1000, n)
        mode = "r" if memmap else None
        for name in ("embedding", "top_class", "top_prob", "post_offsets", "post_entry", "post_prob"):
            setattr(self, name, np.load(folder / f"{name}.npy", mmap_mode=mode))


def variants(store: IndexStore, dev: Path, trials: int) -> None:
    """The side runs: the shipped model's neighbours (C, the class half's weight, all classes,
    unit maxima beside it, a plain regression) and the plain regression's calibration by prior."""
    import math

    truth, vocab, feats = labels(store, dev), Vocabulary.load(), feature_sets(store)
    x, units, d = feats["embedding|roots"], feats["units"], feats["embedding"].shape[1]

    def classes_of(pos):
        return list(cm.choose_classes(x[pos, d:], np.zeros((0, 1000), np.float32)))

    def fitted(f, pos, bg, c=1.0):
        old, cm.C = cm.C, c
        try:
            m = cm.fit(f[pos], f[np.random.default_rng(len(pos)).permutation(bg)], np.zeros((0, f.shape[1]), np.float32))
        finally:
            cm.C = old
        return f @ m.weights + m.bias

    def with_units(k):
        def run(pos, bg):
            f = np.hstack([x[:, :d], x[:, d:][:, classes_of(pos)], units])
            m = cm.fit(f[pos], f[np.random.default_rng(len(pos)).permutation(bg)], np.zeros((0, f.shape[1]), np.float32))
            keep = np.argsort(-np.abs(m.weights[f.shape[1] - units.shape[1]:]))[:k]
            return fitted(np.hstack([x[:, :d], x[:, d:][:, classes_of(pos)], units[:, keep]]), pos, bg)
        return run

    def plain(pos, bg):
        f = np.hstack([x[:, :d], x[:, d:][:, classes_of(pos)]])
        return plain_logreg(f, pos, bg)

    runs = {"C=0.5": lambda p, b: fitted(np.hstack([x[:, :d], x[:, d:][:, classes_of(p)]]), p, b, 0.5),
            "C=2": lambda p, b: fitted(np.hstack([x[:, :d], x[:, d:][:, classes_of(p)]]), p, b, 2.0),
            "classes x0.7": lambda p, b: fitted(np.hstack([x[:, :d], 0.7 * x[:, d:][:, classes_of(p)]]), p, b),
            "classes x2": lambda p, b: fitted(np.hstack([x[:, :d], 2 * x[:, d:][:, classes_of(p)]]), p, b),
            "all classes": lambda p, b: fitted(x, p, b),
            "+64 units": with_units(64), "+all units": with_units(units.shape[1]), "plain weights": plain}
    found = {name: {k: [] for k in SHOTS} for name in runs}
    for group in GROUPS:
        members = np.flatnonzero(np.isin(truth, list(vocab.classes_for(group).paths)))
        for k in SHOTS:
            for t in range(trials):
                pos = np.random.default_rng(zlib.crc32(f"{group}/{k}/{t}".encode())).choice(members, k, replace=False)
                rest = np.setdiff1d(np.arange(store.entries), pos)
                for name, run in runs.items():
                    found[name][k].append(average_precision_score(np.isin(rest, members), run(pos, rest)[rest]))
    for name, by_k in found.items():
        print(f"{name:14s} " + " ".join(f"{np.mean(by_k[k]):.3f}" for k in SHOTS))
    # the plain regression, calibrated as the shipped model is, at several priors
    priors = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    kept = {(k, p): [] for k in (3, 5, 10) for p in priors}
    for group in GROUPS:
        members = np.flatnonzero(np.isin(truth, list(vocab.classes_for(group).paths)))
        for k in (3, 5, 10):
            for t in range(trials):
                pos = np.random.default_rng(zlib.crc32(f"{group}/{k}/{t}".encode())).choice(members, k, replace=False)
                rest = np.setdiff1d(np.arange(store.entries), pos)
                y = np.isin(rest, members)
                f = np.hstack([x[:, :d], x[:, d:][:, classes_of(pos)]])
                old = cm._logistic
                cm._logistic = lambda a, b, c: _plain_fit(a, b, c)
                try:
                    m = cm.fit(f[pos], f[np.random.default_rng(len(pos)).permutation(rest)], np.zeros((0, f.shape[1]), np.float32))
                finally:
                    cm._logistic = old
                for p in priors:
                    shift = m.shift + math.log((1 - cm.PRIOR) / cm.PRIOR) - math.log((1 - p) / p)
                    hit = cm._sigmoid(m.scale * (f[rest] @ m.weights + m.bias) + shift) >= 0.5
                    kept[(k, p)].append(((hit & y).sum() / hit.sum() if hit.any() else np.nan, (hit & y).sum() / y.sum(),
                                         hit.sum()))
    for p in priors:
        print(f"plain, prior {p}: " + "  ".join(
            f"k={k} precision {np.nanmean([r[0] for r in kept[(k, p)]]):.2f} recall {np.mean([r[1] for r in kept[(k, p)]]):.2f}"
            f" kept {np.mean([r[2] for r in kept[(k, p)]]):.1f}" for k in (3, 5, 10)))


def _plain_fit(pos, bg, neg):
    """A plain logistic regression (every photo weighing 1), as ``concept_model._logistic`` returns."""
    x = np.vstack([g for g in (pos, bg, neg) if len(g)])
    model = LogisticRegression(max_iter=1000).fit(x, np.r_[np.ones(len(pos)), np.zeros(len(x) - len(pos))])
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def synthetic_speed(rounds: int) -> None:
    """Teaching on 100,000 synthetic entries and scoring over 1,000,000, beside ``--like``."""
    import tempfile

    from convscope.index.search import nearest

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Synthetic(Path(tmp), 100_000, rng, memmap=False)
        times, widths = [], []
        for r in range(rounds):
            pos = rng.choice(store.entries, 10, replace=False)
            t0 = time.perf_counter()
            roots = cm.sqrt_probs(store.top_class[pos], store.top_prob[pos], 1000)
            layout = cm.Layout(1280, cm.choose_classes(roots, np.zeros((0, 1000))))
            cm.teach_vectors(lambda rows: cm.store_features(store, rows, layout), store.entries,
                             cm.store_features(store, pos, layout), np.zeros((0, layout.width), np.float32), seed=r)
            times.append(time.perf_counter() - t0)
            widths.append(len(layout.classes))
        print(f"teach 10 examples on {store.entries:,} entries ({np.mean(widths):.0f} classes): "
              f"median {np.median(times):.3f} s, max {max(times):.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        store = Synthetic(Path(tmp), 1_000_000, rng, memmap=True)
        pos = rng.choice(store.entries, 10, replace=False)
        roots = cm.sqrt_probs(store.top_class[pos], store.top_prob[pos], 1000)
        layout = cm.Layout(1280, cm.choose_classes(roots, np.zeros((0, 1000))))
        w = rng.standard_normal(layout.width).astype(np.float32)
        query = np.asarray(store.embedding[pos[0]], np.float32)
        took = {"concept": [], "like": []}
        for i in range(max(rounds * 10, 20)):  # alternated, so that both see the same machine
            t0 = time.perf_counter()
            cm.decisions(store, w, 0.0, layout)
            took["concept"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            nearest(store, query, 20)
            took["like"].append(time.perf_counter() - t0)
        for name, times in took.items():
            ms = np.array(times[2:]) * 1000
            print(f"{name:8s} over {store.entries:,} entries ({len(layout.classes)} classes): "
                  f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="/tmp/teach-dev.index")
    ap.add_argument("--dev", default="/work/shared/data/imagenet-samples")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", choices=("quality", "speed", "variants"))
    args = ap.parse_args()
    if args.only == "variants":
        with IndexStore.open(args.index) as store:
            variants(store, Path(args.dev), args.trials)
        return
    if args.only != "speed":
        with IndexStore.open(args.index) as store:
            quality(store, Path(args.dev), args.trials)
    if args.only != "quality":
        synthetic_speed(args.rounds)


if __name__ == "__main__":
    main()
