"""Concepts a person teaches an index from a few example photos ("rex", "our kitchen", "receipts").

A concept is a linear model on the index's pooled embedding (the input of the classifier head,
L2-normalized, stored per entry): a logistic regression of the examples against a sample of the
rest of the index (the background) and the counter-examples, each of the three weighing alike,
whatever their counts. Its score for an entry is calibrated to 0..1 on out-of-fold decisions:
the examples each scored by a model taught without them, against background photos that no
model saw (Platt scaling at the odds of :data:`PRIOR`, one example to four background photos),
so 0.5 is where an entry looks four times as much like a held-out example as like the background. ``bench/teach.py`` chose the features and the
model by measurement (``docs/concepts.md``).

Storage: tables ``concepts`` and ``concept_examples`` of the index's database, written in one
SQLite transaction under the folder's writer lock (:func:`convscope.stores.writer_lock`), so a
reader sees the old set or the new one and a build never runs beside a teach. An example is kept
as its path, its SHA-256 and its embedding, so a concept survives the file moving or going; an
``index --update`` copies both tables into the new database (:func:`copy`).

>>> concepts.teach(index, "rex", ["photos/rex1.jpg", "photos/rex2.jpg"], counter=["photos/max.jpg"])
>>> c = concepts.load(index).get("Rex")
>>> scores = c.scores(index)          # (N,) float64, 0..1
>>> rows = np.flatnonzero(scores >= c.threshold)
>>> c.why(index, int(rows[0]))        # {"concept": "rex", "score": 0.93, "nearest": [...]}
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sqlite3
import unicodedata
import warnings
import zlib
from typing import Iterator, Sequence

import numpy as np

from ..errors import ArgumentError, ConvscopeError, ImageError, unknown_name_error
from ..stores import writer_lock
from .store import DB_NAME, IndexStore, db_path, read_path

#: The longest concept name, in characters.
MAX_NAME = 64
#: Examples (and counter-examples) a concept keeps at most.
MAX_EXAMPLES = 1000
#: Background entries a teach samples for training, and (disjoint) for calibration.
BACKGROUND = 2048
HELD_OUT = 1024
#: The regularization of the logistic regression (scikit-learn's C, with mean sample weight 1),
#: chosen on the dev photos (``bench/teach.py``).
C = 1.0
#: The weight of each side of the calibration (examples, held-out background): fixes how
#: steep a calibration the evidence of a few examples may ask for.
PLATT_WEIGHT = 50.0
#: The prior share of the concept the calibration assumes (the examples' side weighs this much
#: against the background's 1 - PRIOR): on the dev photos a cut-off of 0.5 then keeps, with 5
#: examples, about a third of the concept at about half precision (0.8 of the even-odds curve;
#: the even-odds 0.5 kept 110 photos of 500 at precision 0.17; BENCHMARKS.md, "Issue 22").
PRIOR = 0.2
#: The cut-off of a calibrated score (see the module's docstring).
THRESHOLD = 0.5
#: Out-of-fold calibration: folds over the examples (leave-one-out up to this many examples).
FOLDS = 3
#: Rows per float16 product when scoring (as ``search.nearest`` reads the memory map).
CHUNK = 65536
#: The closest examples a why names.
NEAREST = 3
FEATURES = "embedding"

TABLES = """
CREATE TABLE IF NOT EXISTS concepts (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, taught TEXT NOT NULL, features TEXT NOT NULL,
    weights BLOB NOT NULL, bias REAL NOT NULL, threshold REAL NOT NULL, separation REAL,
    background INTEGER NOT NULL, model TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS concept_examples (
    key TEXT NOT NULL REFERENCES concepts(key), kind TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, vector BLOB NOT NULL, added TEXT NOT NULL, PRIMARY KEY (key, sha256)
);
"""


# --------------------------------------------------------------------------- names


def normalize(name: str) -> str:
    """The form names are compared in: case folded, runs of white space as one space, trimmed.
    ``normalize("  Our   Kitchen ") == "our kitchen"``."""
    return " ".join(unicodedata.normalize("NFC", str(name)).casefold().split())


def check_name(name) -> str:
    """A concept name as given, its white space tidied; one line for an empty one, one longer
    than :data:`MAX_NAME` characters, or one with control characters."""
    if not isinstance(name, str):
        raise ArgumentError(f"a concept `name` is text, got {type(name).__name__}", param="name")
    if any(unicodedata.category(ch)[0] == "C" and ch not in " \t" for ch in name):
        raise ArgumentError(f"a concept `name` cannot hold control characters, got {name!r}", param="name")
    tidy = " ".join(name.split())
    if not tidy:
        raise ArgumentError("a concept `name` cannot be empty; give one such as rex or \"our kitchen\"", param="name")
    if len(tidy) > MAX_NAME:
        raise ArgumentError(f"a concept `name` has at most {MAX_NAME} characters, got {len(tidy)}", param="name")
    return tidy


# --------------------------------------------------------------------------- the model


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
    three groups weighing alike (mean sample weight 1)."""
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
    # average ranks of ties
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
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


# --------------------------------------------------------------------------- scoring


def score_rows(embedding: np.ndarray, weights: np.ndarray, bias: float, *, chunk: int = CHUNK) -> np.ndarray:
    """``sigmoid(embedding @ weights + bias)`` for every row of a (N, D) float16 array (a memory
    map), a chunk of rows at a time in float16, as :func:`convscope.index.search.nearest` reads
    it: (N,) float64."""
    import torch

    n, d = embedding.shape
    out = np.empty(n, np.float64)
    w = torch.from_numpy(np.array(weights, np.float32)).half()  # (a copy: the stored blob is read-only)
    for a in range(0, n, chunk):
        with warnings.catch_warnings():  # the memory map is read-only, and is only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            block = torch.from_numpy(np.ascontiguousarray(embedding[a:a + chunk]))
        out[a:a + len(block)] = (block.view(-1, d) @ w).float().numpy()
    return _sigmoid(out + bias)


# --------------------------------------------------------------------------- concepts as stored


@dataclasses.dataclass
class Example:
    """One example (``kind`` "example") or counter-example ("counter") of a concept: the file it
    was taught from, its SHA-256, its embedding (D,) float32 and when it was added."""

    path: str
    sha256: str
    kind: str
    vector: np.ndarray
    added: str

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind, "added": self.added}


@dataclasses.dataclass
class Concept:
    """A taught concept: ``name`` as first given, its examples and counter-examples, when it was
    last taught, the calibrated linear model on the index's embedding (``weights`` (D,) float32,
    ``bias``: score = sigmoid(embedding @ weights + bias)), its ``threshold`` and ``separation``
    (the chance that a held-out example outranks a background photo; None with one example)."""

    name: str
    taught: str
    weights: np.ndarray
    bias: float
    threshold: float
    separation: float | None
    background: int
    examples: list[Example]

    @property
    def key(self) -> str:
        return normalize(self.name)

    def positives(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "example"]

    def counters(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "counter"]

    def scores(self, store: IndexStore) -> np.ndarray:
        """(N,) float64 in 0..1: every entry's calibrated score (:func:`score_rows`). An entry
        at or above :attr:`threshold` belongs.

        >>> (concept.scores(index) >= concept.threshold).sum()
        """
        if store.embedding.shape[1] != len(self.weights):
            raise ConvscopeError(f"concept {self.name!r} was taught on embeddings of {len(self.weights)} numbers; this "
                                 f"index has {store.embedding.shape[1]}: teach it again")
        return score_rows(store.embedding, self.weights, self.bias)

    def why(self, store: IndexStore, row: int) -> dict:
        """``{"concept": NAME, "score": 0..1, "nearest": [paths of the closest examples]}`` for
        entry ``row``: its score and the :data:`NEAREST` examples whose embeddings are closest."""
        if not 0 <= int(row) < store.entries:
            raise ArgumentError(f"entry {row} is not in this index of {store.entries} entries", param="row")
        v = np.asarray(store.embedding[int(row)], np.float32)
        score = float(_sigmoid(np.float64(v @ self.weights + self.bias)))
        pos = self.positives()
        sims = np.array([float(e.vector @ v) for e in pos])
        order = np.argsort(-sims, kind="stable")[:NEAREST]
        return {"concept": self.name, "score": round(score, 6), "nearest": [pos[i].path for i in order]}

    def to_json(self) -> dict:
        """The record ``convscope concepts --json`` writes."""
        return {"concept": self.name, "taught": self.taught, "threshold": self.threshold,
                "separation": None if self.separation is None else round(self.separation, 4),
                "background": self.background, "examples": [e.path for e in self.positives()],
                "counter_examples": [e.path for e in self.counters()]}


class Concepts:
    """The concepts an index holds, by name (compared after :func:`normalize`).

    >>> cs = concepts.load(index); cs.get("our kitchen"), list(cs)
    """

    def __init__(self, items: Sequence[Concept]):
        self._by_key = {c.key: c for c in items}

    def get(self, name: str) -> Concept | None:
        return self._by_key.get(normalize(name)) if isinstance(name, str) else None

    def __iter__(self) -> Iterator[Concept]:
        return iter(sorted(self._by_key.values(), key=lambda c: c.key))

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, name) -> bool:
        return self.get(name) is not None

    def names(self) -> list[str]:
        return [c.name for c in self]


def _create(conn: sqlite3.Connection) -> None:
    """Make the tables where they are missing, inside the caller's transaction (``executescript``
    would commit it)."""
    for statement in TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'concepts'").fetchone() is not None


def _read(conn: sqlite3.Connection) -> list[Concept]:
    if not _has_tables(conn):
        return []
    examples: dict[str, list[Example]] = {}
    for key, kind, path, sha, vector, added in conn.execute(
            "SELECT key, kind, path, sha256, vector, added FROM concept_examples ORDER BY key, added, rowid"):
        examples.setdefault(key, []).append(Example(read_path(path), sha, kind, np.frombuffer(vector, np.float32), added))
    out = []
    for key, name, taught, _features, weights, bias, threshold, separation, background, _model in conn.execute(
            "SELECT key, name, taught, features, weights, bias, threshold, separation, background, model FROM concepts"):
        out.append(Concept(name, taught, np.frombuffer(weights, np.float32), float(bias), float(threshold),
                           None if separation is None else float(separation), int(background), examples.get(key, [])))
    return out


def load(store: IndexStore) -> Concepts:
    """The concepts ``store`` holds (read once, small: a few KB each).

    >>> load(index).get("rex")
    """
    with store._lock:
        return Concepts(_read(store.db))


def copy(old: sqlite3.Connection, conn: sqlite3.Connection) -> None:
    """Copy the concepts of an old index's database ``old`` into a new one's ``conn`` (an
    update's), inside the caller's transaction."""
    if not _has_tables(old):
        return
    _create(conn)
    # (OR REPLACE: a resumed update whose first finish stopped before the commit copied them once)
    conn.executemany("INSERT OR REPLACE INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     old.execute("SELECT * FROM concepts").fetchall())
    conn.executemany("INSERT OR REPLACE INTO concept_examples VALUES (?, ?, ?, ?, ?, ?)",
                     old.execute("SELECT key, kind, path, sha256, vector, added FROM concept_examples").fetchall())


# --------------------------------------------------------------------------- teaching


def _seed(name: str) -> int:
    return zlib.crc32(normalize(name).encode())


def background_rows(n: int, count: int, exclude: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``count`` entry rows drawn without replacement from ``0..n-1``, less ``exclude``
    (rows of the examples' own files), sorted (the memory map is read in order)."""
    rng = np.random.default_rng(seed)
    take = min(n, count + len(exclude))
    rows = np.sort(rng.choice(n, take, replace=False)) if take < n else np.arange(n)
    return rows[~np.isin(rows, exclude)][:count] if len(exclude) else rows[:count]


def teach_vectors(embedding: np.ndarray, pos: np.ndarray, neg: np.ndarray, *, exclude: np.ndarray | None = None,
                  seed: int = 0) -> tuple[Fitted, int]:
    """Fit a concept from example vectors ``pos`` and counter-example vectors ``neg`` against
    background sampled from the (N, D) ``embedding``: :data:`BACKGROUND` rows to train on and
    :data:`HELD_OUT` others to calibrate on (``exclude``: rows never drawn). Returns the fitted
    model and the background count."""
    n = embedding.shape[0]
    rows = background_rows(n, BACKGROUND + HELD_OUT, np.asarray(exclude if exclude is not None else [], np.int64), seed)
    rng = np.random.default_rng(seed + 1)
    rng.shuffle(rows)
    held = max(1, len(rows) * HELD_OUT // (BACKGROUND + HELD_OUT)) if len(rows) >= 2 else 0
    train, calib = np.sort(rows[held:]), np.sort(rows[:held])
    bg = np.asarray(embedding[train], np.float32)
    held_out = np.asarray(embedding[calib], np.float32)
    return fit(pos, bg, neg, held_out), len(train)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _resolve(index, paths: Sequence, kind: str, model) -> list[Example]:
    """Examples from ``paths``: files of the index (their stored embedding) or any photo (run
    through the index's model); one line for a path that is missing or not a photo."""
    from .media import sha256_file

    param = "examples" if kind == "example" else "counter"
    out = []
    for path in paths:
        path = os.fspath(path)
        record = index.file_of(path)
        now = _now()
        if record is not None:
            rows = slice(record["first_row"], record["first_row"] + record["rows"])
            v = np.asarray(index.embedding[rows], np.float32).mean(0)
            v /= max(float(np.linalg.norm(v)), 1e-12)
            out.append(Example(record["path"], record["sha256"], kind, v, now))
            continue
        full = os.path.normpath(os.path.abspath(path))
        if not os.path.exists(full):
            raise ArgumentError(f"{kind.replace('counter', 'counter-example')} {path}: no such file in the index or on disk",
                                param=param)
        if not os.path.isfile(full):
            raise ArgumentError(f"{kind.replace('counter', 'counter-example')} {path}: not a photo file", param=param)
        try:
            v = np.asarray(index.embed(full, model=model), np.float32)
            sha = sha256_file(full)
        except ImageError as exc:
            raise ArgumentError(f"{kind.replace('counter', 'counter-example')} {path}: {exc.reason}", param=param) from None
        out.append(Example(full, sha, kind, v / max(float(np.linalg.norm(v)), 1e-12), now))
    return out


def teach(index, name: str, examples: Sequence = (), counter: Sequence = (), *, model=None) -> Concept:
    """Create or refine the concept ``name`` of ``index`` (an :class:`~convscope.index.Index`):
    ``examples`` and ``counter`` (counter-examples) are paths of files in the index or of any
    photos (run through the index's own model, ``model`` or the one it records). They join what
    the concept held (a photo given again moves to the side it is given on, by its SHA-256); the
    model is taught again from every stored vector against a background sampled from the index
    (seeded by the name) and written in one transaction under the folder's writer lock. A
    concept with no example yet needs at least one in ``examples``.

    >>> teach(index, "rex", ["photos/rex1.jpg", "photos/rex2.jpg"], counter=["photos/max.jpg"]).separation
    """
    name = check_name(name)
    examples, counter = list(examples), list(counter)
    if not examples and not counter:
        raise ArgumentError("give at least one example photo of the concept", param="examples")
    if index.entries == 0:
        raise ConvscopeError(f"the index in {index.root} is empty; a concept is taught against its photos: add some first")
    new = _resolve(index, examples, "example", model) + _resolve(index, counter, "counter", model)
    with writer_lock(index.root, kind="index"):
        conn = _writable(index)
        try:
            old = next((c for c in _read(conn) if c.key == normalize(name)), None)
            kept = {e.sha256: e for e in (old.examples if old is not None else [])}
            for e in new:
                kept[e.sha256] = e
            every = list(kept.values())
            pos = [e for e in every if e.kind == "example"]
            if not pos:
                raise ArgumentError(f"concept {name!r} would have no example; give at least one example photo",
                                    param="examples")
            if len(every) > MAX_EXAMPLES:
                raise ArgumentError(f"a concept keeps at most {MAX_EXAMPLES} examples and counter-examples; "
                                    f"{name!r} would have {len(every)}", param="examples")
            concept = _retrain(index, conn, name, every)
        finally:
            conn.close()
    return concept


def _retrain(index, conn: sqlite3.Connection, name: str, every: list[Example]) -> Concept:
    """Teach ``name`` again from ``every`` stored example and counter-example and write it
    (the caller holds the writer lock and ``conn``)."""
    pos = [e for e in every if e.kind == "example"]
    neg = [e for e in every if e.kind == "counter"]
    exclude = _rows_of(index, {e.sha256 for e in every})
    fitted, count = teach_vectors(index.embedding, np.stack([e.vector for e in pos]),
                                  np.stack([e.vector for e in neg]) if neg else np.zeros((0, len(pos[0].vector)), np.float32),
                                  exclude=exclude, seed=_seed(name))
    concept = Concept(name, _now(), (fitted.weights * fitted.scale).astype(np.float32),
                      float(fitted.bias * fitted.scale + fitted.shift), fitted.threshold, fitted.separation,
                      count, every)
    _write(conn, concept, index.meta["model"])
    return concept


def remove_example(index, name: str, example: str) -> Concept:
    """Take one example or counter-example out of the concept ``name`` (``example``: its path as
    stored, or its SHA-256) and teach the concept again from what is left, in one transaction
    under the writer lock; returns the concept as it now is. One line for an unknown concept or
    example, and for the last example (forget the concept instead).

    >>> remove_example(index, "rex", "photos/max.jpg").counters()
    """
    name = check_name(name)
    if not isinstance(example, str) or not example:
        raise ArgumentError("give the example to remove: its path or SHA-256", param="example")
    with writer_lock(index.root, kind="index"):
        conn = _writable(index)
        try:
            old = _held(conn, name)
            full = os.path.normpath(os.path.abspath(example))
            gone = {id(e) for e in old.examples if example in (e.sha256, e.path) or e.path == full}
            if not gone:
                raise ArgumentError(f"concept {old.name!r} holds no example {example[:200]!r}", param="example")
            every = [e for e in old.examples if id(e) not in gone]
            if not any(e.kind == "example" for e in every):
                raise ArgumentError(f"{example[:200]!r} is the last example of concept {old.name!r}; "
                                    "forget the concept instead", param="example")
            concept = _retrain(index, conn, old.name, every)
        finally:
            conn.close()
    return concept


def _held(conn: sqlite3.Connection, name: str) -> Concept:
    """The concept ``name`` the database holds; one line with the close matches if none."""
    held = _read(conn)
    found = next((c for c in held if c.key == normalize(name)), None)
    if found is None:
        raise unknown_name_error("concept", name, [c.name for c in held], hint="`convscope concepts INDEX` lists them.")
    return found


def forget(index, name: str) -> Concept:
    """Remove the concept ``name`` from ``index`` (one transaction under the writer lock);
    returns what it held. An unknown name raises one line with the close matches."""
    name = check_name(name)
    with writer_lock(index.root, kind="index"):
        conn = _writable(index)
        try:
            old = _held(conn, name)
            with conn:
                conn.execute("DELETE FROM concept_examples WHERE key = ?", (old.key,))
                conn.execute("DELETE FROM concepts WHERE key = ?", (old.key,))
        finally:
            conn.close()
    return old


def _rows_of(index, hashes: set[str]) -> np.ndarray:
    """Entry rows of the index's files with these SHA-256s (left out of the background)."""
    rows: list[int] = []
    hashes = sorted(hashes)
    for a in range(0, len(hashes), 900):
        part = hashes[a:a + 900]
        for first, count in index.query(f"SELECT first_row, rows FROM files WHERE sha256 IN ({','.join('?' * len(part))})",
                                        part):
            rows.extend(range(first, first + count))
    return np.array(sorted(rows), np.int64)


def _writable(index) -> sqlite3.Connection:
    """A writable connection to the index's committed database, once it is still the version
    ``index`` opened (an update may have replaced it since)."""
    if index.building is not None:  # a snapshot: no committed database to write (nor to make)
        raise ConvscopeError(f"the index in {index.root} is still being built; teach concepts once it is finished")
    conn = sqlite3.connect(os.fspath(index.root / DB_NAME), timeout=30)
    try:
        arrays = conn.execute("SELECT value FROM meta WHERE key = 'arrays'").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ConvscopeError(f"{index.root / DB_NAME} cannot be written ({exc})") from None
    if arrays is None or json.loads(arrays[0]) != index.meta["arrays"]:
        conn.close()
        raise ConvscopeError(f"the index in {index.root} was rebuilt while the concept was taught; open it again and retry")
    return conn


def _write(conn: sqlite3.Connection, concept: Concept, model: dict) -> None:
    """Replace the concept's rows, in one transaction (the tables made on first use)."""
    with conn:
        _create(conn)
        conn.execute("DELETE FROM concept_examples WHERE key = ?", (concept.key,))
        conn.execute("DELETE FROM concepts WHERE key = ?", (concept.key,))
        conn.execute("INSERT INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (concept.key, concept.name, concept.taught, FEATURES, concept.weights.astype(np.float32).tobytes(),
                      concept.bias, concept.threshold,
                      None if concept.separation is None or math.isnan(concept.separation) else concept.separation,
                      concept.background, json.dumps({"fingerprint": model.get("fingerprint"), "spec": model.get("spec")})))
        conn.executemany("INSERT INTO concept_examples VALUES (?, ?, ?, ?, ?, ?)",
                         [(concept.key, e.kind, db_path(e.path), e.sha256, np.asarray(e.vector, np.float32).tobytes(), e.added)
                          for e in concept.examples])
