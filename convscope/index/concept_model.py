"""The model of a taught concept (:mod:`.concepts`): its features, its fit, its calibration and
its scores over a whole index.

Features: an entry's pooled embedding (the input of the classifier head, L2-normalized, as the
index stores it) beside the square roots of its stored probabilities of the concept's classes
(the classes the examples' own stored probabilities name, most probable first, at most
:data:`MAX_CLASSES`; a class an entry did not keep counts 0). The square roots of a probability
vector have unit length, as the embedding has: the two halves weigh alike. On the dev photos
(``bench/teach.py``, BENCHMARKS.md "Issue 22") this ranks new concepts at mean average precision
0.501 from 5 examples, against 0.457 for the embedding alone, 0.468 for a plain logistic
regression and 0.385 for ``--like``; all 1,000 classes gave 0.509 (one draw), so the concept's own classes
keep the quality and make the score cheap: over an index, the class half is a sum over the
inverted lists of those classes (:func:`.postings.gather`), not a read of every entry's classes.

Model: a logistic regression of the examples against a sample of the rest of the index (the
background) and the counter-examples, each of the three weighing alike, whatever their counts.
Its decision is calibrated to 0..1 on out-of-fold decisions: the examples each scored by a model
taught without them, against background photos that no model saw (Platt scaling at the odds of
:data:`PRIOR`, one example to four background photos), so 0.5 is where an entry looks four
times as much like a held-out example as like the background.

A concept taught before the class half existed has the layout ``"embedding"`` (no classes); it
is scored as it was taught until it is taught again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Callable

import numpy as np

from ..errors import ArgumentError, ConvscopeError
from . import postings

#: Background entries a teach samples for training, and (disjoint) for calibration.
BACKGROUND = 2048
HELD_OUT = 1024
#: The regularization of the logistic regression (scikit-learn's C, with mean sample weight 1),
#: chosen on the dev photos (``bench/teach.py``: C = 0.5 and 2 within 0.01 of it).
C = 1.0
#: The weight of each side of the calibration (examples, held-out background): fixes how
#: steep a calibration the evidence of a few examples may ask for.
PLATT_WEIGHT = 50.0
#: The prior share of the concept the calibration assumes (the examples' side weighs this much
#: against the background's 1 - PRIOR): on the dev photos a cut-off of 0.5 then keeps, with 5
#: examples, about a third of the concept at about half precision (BENCHMARKS.md, "Issue 22").
PRIOR = 0.2
#: The cut-off of a calibrated score.
THRESHOLD = 0.5
#: Out-of-fold calibration: folds over the examples (leave-one-out up to this many examples).
FOLDS = 3
#: Rows per float16 product when scoring (as ``search.nearest`` reads the memory map).
CHUNK = 65536
#: The most classes a concept's features hold (their inverted lists are read when scoring).
MAX_CLASSES = 128


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a concept's weights weigh: the ``embedding`` width D, then the square roots of the
    stored probabilities of ``classes`` (class ids, in this order)."""

    embedding: int
    classes: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.embedding + len(self.classes)

    def to_text(self) -> str:
        return json.dumps({"embedding": self.embedding, "classes": list(self.classes)})

    @classmethod
    def from_text(cls, text: str, weights: int) -> "Layout":
        """The layout stored as ``text``; ``"embedding"`` (taught before classes counted) is the
        embedding alone, ``weights`` wide."""
        if text == "embedding":
            return cls(weights)
        data = json.loads(text)
        return cls(int(data["embedding"]), tuple(int(c) for c in data["classes"]))


def sqrt_probs(top_class: np.ndarray, top_prob: np.ndarray, classes: int) -> np.ndarray:
    """(B, classes) float32: the square roots of the stored probabilities (``top_class`` (B, K),
    -1 past the last kept; ``top_prob`` (B, K)), 0 for a class not kept."""
    top_class, top_prob = np.atleast_2d(top_class), np.atleast_2d(top_prob)
    out = np.zeros((len(top_class), classes), np.float32)
    rows, cols = np.nonzero(top_class >= 0)
    out[rows, top_class[rows, cols]] = np.sqrt(top_prob[rows, cols].astype(np.float32))
    return out


def choose_classes(pos: np.ndarray, neg: np.ndarray) -> tuple[int, ...]:
    """The concept's classes from the examples' (``pos``) and counter-examples' (``neg``) square
    rooted probabilities (rows over every class): those of the examples, by their sum, then those
    of the counter-examples, up to :data:`MAX_CLASSES`."""
    out: list[int] = []
    for side in (pos, neg):
        if not len(side):
            continue
        total = side.sum(0)
        for c in np.argsort(-total, kind="stable"):
            if total[c] <= 0 or len(out) >= MAX_CLASSES:
                break
            if int(c) not in out:
                out.append(int(c))
    return tuple(out)


def features(embedding: np.ndarray, dense: np.ndarray | None, layout: Layout) -> np.ndarray:
    """(B, width) float32 rows of ``layout`` from embeddings (B, D) and square-rooted
    probabilities over every class (B, C), None for a layout without classes."""
    embedding = np.atleast_2d(np.asarray(embedding, np.float32))
    if not layout.classes:
        return embedding
    return np.hstack([embedding, np.asarray(dense, np.float32)[:, list(layout.classes)]])


def store_features(store, rows: np.ndarray, layout: Layout) -> np.ndarray:
    """(len(rows), width) float32: the entries ``rows`` of ``store`` in ``layout``."""
    rows = np.asarray(rows, np.int64)
    emb = np.asarray(store.embedding[rows], np.float32)
    if not layout.classes:
        return emb
    dense = sqrt_probs(np.asarray(store.top_class[rows]), np.asarray(store.top_prob[rows]), len(store.labels))
    return features(emb, dense, layout)


# --------------------------------------------------------------------------- the fit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exact, and no overflow warning for large |x|


@dataclasses.dataclass
class Fitted:
    """A taught linear model: raw decision ``x @ weights + bias``; the calibrated score
    ``sigmoid(scale * decision + shift)``; ``separation``: the ROC AUC of the examples' out-of-fold
    decisions against held-out background (None with one example)."""

    weights: np.ndarray
    bias: float
    scale: float
    shift: float
    separation: float | None
    threshold: float = THRESHOLD

    def calibrated(self, decision: np.ndarray) -> np.ndarray:
        return _sigmoid(self.scale * np.asarray(decision, np.float64) + self.shift)


def _logistic(pos: np.ndarray, bg: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression: ``pos`` against ``bg`` and ``neg``, each of the
    three groups weighing alike (mean sample weight 1). A plain regression (every photo weighing
    1) ranked the dev photos' new concepts about as well (0.515 at 5 examples, one draw, against 0.501, two
    draws per group), but its out-of-fold decisions calibrate badly: at 5 examples the cut-off
    kept under one photo on average (0.4 photos, recall 0.01; this model: precision 0.56, recall 0.24),
    and no prior gave both back (BENCHMARKS.md "Issue 22")."""
    from sklearn.linear_model import LogisticRegression

    groups = [g for g in (pos, bg, neg) if len(g)]
    x = np.vstack(groups).astype(np.float32)
    y = np.r_[np.ones(len(pos)), np.zeros(len(x) - len(pos))]
    w = np.concatenate([np.full(len(g), 1.0 / len(g)) for g in groups])
    w *= len(x) / w.sum()
    model = LogisticRegression(C=C, max_iter=500, tol=1e-4).fit(x, y, sample_weight=w)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def _auc(pos: np.ndarray, bg: np.ndarray) -> float:
    """P(a positive outranks a background value), ties half."""
    both = np.concatenate([pos, bg])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average ranks of ties
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(bg)))


def fit(pos: np.ndarray, bg: np.ndarray, neg: np.ndarray, held_out: np.ndarray | None = None) -> Fitted:
    """Teach a model from example vectors ``pos`` (k, D), background vectors ``bg`` (B, D) and
    counter-examples ``neg`` (m, D), and calibrate it on out-of-fold decisions: each example
    scored by a model taught without its fold, ``held_out`` background vectors (default: the
    last quarter of ``bg``, then left out of the training) by the full model."""
    if len(pos) < 1:
        raise ArgumentError("a concept needs at least one example", param="examples")
    pos, bg, neg = (np.asarray(a, np.float32) for a in (pos, bg, neg))
    if held_out is None:
        cut = len(bg) - len(bg) // 4
        bg, held_out = bg[:cut], bg[cut:]
    weights, bias = _logistic(pos, bg, neg)
    if len(pos) >= 2:
        folds = np.arange(len(pos)) % min(FOLDS, len(pos))
        oof = np.empty(len(pos))
        for f in np.unique(folds):
            w, b = _logistic(pos[folds != f], bg, neg)
            oof[folds == f] = pos[folds == f] @ w + b
        separation = _auc(oof, held_out @ weights + bias) if len(held_out) else None
    else:  # one example: no model taught without it; its own decision stands in
        oof = pos @ weights + bias
        separation = None
    scale, shift = _platt(oof, np.asarray(held_out @ weights + bias, np.float64) if len(held_out) else np.zeros(0))
    return Fitted(weights, bias, scale, shift, separation)


def _platt(pos: np.ndarray, bg: np.ndarray) -> tuple[float, float]:
    """``scale, shift`` of a logistic curve over the decision values: a one-feature logistic
    regression of the examples' out-of-fold decisions against the held-out background's, the
    two sides weighing alike, then shifted to the odds of :data:`PRIOR`."""
    from sklearn.linear_model import LogisticRegression

    if not len(bg):
        return 1.0, 0.0
    d = np.concatenate([pos, bg])
    mu, sd = float(d.mean()), float(d.std()) or 1.0
    y = np.r_[np.ones(len(pos)), np.zeros(len(bg))]
    # each side weighs PLATT_WEIGHT in all, so that the slope's regularization does not depend
    # on the index's size or the number of examples
    w = np.r_[np.full(len(pos), PLATT_WEIGHT / len(pos)), np.full(len(bg), PLATT_WEIGHT / len(bg))]
    model = LogisticRegression(C=1.0).fit(((d - mu) / sd)[:, None], y, sample_weight=w)
    a, c = float(model.coef_[0, 0]), float(model.intercept_[0])
    return a / sd, c - a * mu / sd - math.log((1 - PRIOR) / PRIOR)


def background_rows(n: int, count: int, exclude: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``count`` entry rows drawn without replacement from ``0..n-1``, less ``exclude``
    (rows of the examples' own files), sorted (the memory map is read in order)."""
    rng = np.random.default_rng(seed)
    take = min(n, count + len(exclude))
    rows = np.sort(rng.choice(n, take, replace=False)) if take < n else np.arange(n)
    return rows[~np.isin(rows, exclude)][:count] if len(exclude) else rows[:count]


def teach_vectors(rows_of: Callable[[np.ndarray], np.ndarray], n: int, pos: np.ndarray, neg: np.ndarray, *,
                  exclude: np.ndarray | None = None, seed: int = 0) -> tuple[Fitted, int]:
    """Fit a concept from example vectors ``pos`` and counter-example vectors ``neg`` against
    background entries of an index of ``n``: :data:`BACKGROUND` rows to train on and
    :data:`HELD_OUT` others to calibrate on (``exclude``: rows never drawn), their vectors read
    by ``rows_of(sorted rows)``. Returns the fitted model and the background count."""
    rows = background_rows(n, BACKGROUND + HELD_OUT, np.asarray(exclude if exclude is not None else [], np.int64), seed)
    rng = np.random.default_rng(seed + 1)
    rng.shuffle(rows)
    held = max(1, len(rows) * HELD_OUT // (BACKGROUND + HELD_OUT)) if len(rows) >= 2 else 0
    train, calib = np.sort(rows[held:]), np.sort(rows[:held])
    return fit(pos, rows_of(train), neg, rows_of(calib)), len(train)


# --------------------------------------------------------------------------- scoring


def embedding_products(embedding: np.ndarray, weights: np.ndarray, *, chunk: int = CHUNK) -> np.ndarray:
    """``embedding @ weights`` for every row of a (N, D) float16 array (a memory map), a chunk
    of rows at a time in float16, as :func:`convscope.index.search.nearest` reads it: (N,) float64."""
    import torch

    n, d = embedding.shape
    out = np.empty(n, np.float64)
    w = torch.from_numpy(np.array(weights, np.float32)).half()  # (a copy: the stored blob is read-only)
    for a in range(0, n, chunk):
        with warnings.catch_warnings():  # the memory map is read-only, and is only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            block = torch.from_numpy(np.ascontiguousarray(embedding[a:a + chunk]))
        out[a:a + len(block)] = (block.view(-1, d) @ w).float().numpy()
    return out


def decisions(store, weights: np.ndarray, bias: float, layout: Layout) -> np.ndarray:
    """(N,) float64: every entry's decision ``features @ weights + bias``: the embedding's
    products, plus the weighted square roots of the stored probabilities of the layout's classes,
    summed over their inverted lists."""
    if store.embedding.shape[1] != layout.embedding or len(weights) != layout.width:
        raise ConvscopeError(f"the concept was taught on embeddings of {layout.embedding} numbers; this index has "
                             f"{store.embedding.shape[1]}: teach it again")
    if any(not 0 <= c < len(store.labels) for c in layout.classes):
        raise ConvscopeError(f"the concept names classes this index's {len(store.labels)} do not hold: teach it again")
    out = embedding_products(store.embedding, weights[:layout.embedding])
    if layout.classes:
        entries, probs, which = postings.gather(store.post_offsets, store.post_entry, store.post_prob, layout.classes,
                                                 positions=True)
        w = np.asarray(weights[layout.embedding:], np.float64)
        out += np.bincount(entries, weights=np.sqrt(probs) * w[which], minlength=store.entries)
    return out + bias


def row_decision(store, row: int, weights: np.ndarray, bias: float, layout: Layout) -> float:
    """The decision of the one entry ``row`` (as :func:`decisions` computes it)."""
    x = store_features(store, np.array([row]), layout)[0]
    return float(x @ np.asarray(weights, np.float32) + bias)


__all__ = ["BACKGROUND", "C", "Fitted", "HELD_OUT", "Layout", "MAX_CLASSES", "PRIOR", "THRESHOLD", "background_rows",
           "choose_classes", "decisions", "embedding_products", "features", "fit", "row_decision",
           "sqrt_probs", "store_features", "teach_vectors"]

