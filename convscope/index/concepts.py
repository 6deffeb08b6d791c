"""Concepts a person teaches an index from a few example photos ("rex", "our kitchen", "receipts").

A concept is a calibrated linear model on what the index stores of each entry: its pooled
embedding beside the square roots of its probabilities of the classes the examples name
(:mod:`.concept_model`: the features, the fit, the calibration and the scores; ``bench/teach.py``
chose them by measurement, docs/search.md "Concepts").

Storage: tables ``concepts`` and ``concept_examples`` of the index's database, written in one
SQLite transaction under the folder's writer lock (:func:`convscope.stores.writer_lock`), so a
reader sees the old set or the new one and a build never runs beside a teach. An example is kept
as its path, its SHA-256, its embedding and the square roots of its class probabilities (as the
index keeps them), so a concept survives the file moving or going; an
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
import zlib
from typing import Iterator, Sequence

import numpy as np

from ..errors import ArgumentError, ConvscopeError, ImageError, unknown_name_error
from ..stores import writer_lock
from . import concept_model as cm
from .store import DB_NAME, IndexStore, db_path, read_path

#: The longest concept name, in characters.
MAX_NAME = 64
#: Examples (and counter-examples) a concept keeps at most.
MAX_EXAMPLES = 1000
#: The closest examples a why names.
NEAREST = 3

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


# --------------------------------------------------------------------------- concepts as stored


@dataclasses.dataclass
class Example:
    """One example (``kind`` "example") or counter-example ("counter") of a concept: the file it
    was taught from, its SHA-256, its embedding (D,) float32, the square roots of its class
    probabilities as the index keeps them (C,) float32 (None for an example kept before they
    were), and when it was added."""

    path: str
    sha256: str
    kind: str
    vector: np.ndarray
    added: str
    roots: np.ndarray | None = None

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "kind": self.kind, "added": self.added}


@dataclasses.dataclass
class Concept:
    """A taught concept: ``name`` as first given, its examples and counter-examples, when it was
    last taught, the calibrated linear model (``weights`` over ``layout``'s features, ``bias``:
    score = sigmoid(features @ weights + bias), :mod:`.concept_model`), its ``threshold`` and
    ``separation`` (the chance that a held-out example outranks a background photo; None with
    one example)."""

    name: str
    taught: str
    weights: np.ndarray
    bias: float
    threshold: float
    separation: float | None
    background: int
    examples: list[Example]
    layout: cm.Layout | None = None

    def __post_init__(self):
        if self.layout is None:
            self.layout = cm.Layout(len(self.weights))

    @property
    def key(self) -> str:
        return normalize(self.name)

    def positives(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "example"]

    def counters(self) -> list[Example]:
        return [e for e in self.examples if e.kind == "counter"]

    def scores(self, store: IndexStore) -> np.ndarray:
        """(N,) float64 in 0..1: every entry's calibrated score (:func:`.concept_model.decisions`).
        An entry at or above :attr:`threshold` belongs.

        >>> (concept.scores(index) >= concept.threshold).sum()
        """
        try:
            return cm._sigmoid(cm.decisions(store, self.weights, self.bias, self.layout))
        except ConvscopeError as exc:
            raise ConvscopeError(f"concept {self.name!r}: {exc}") from None

    def why(self, store: IndexStore, row: int) -> dict:
        """``{"concept": NAME, "score": 0..1, "nearest": [paths of the closest examples]}`` for
        entry ``row``: its score and the :data:`NEAREST` examples whose embeddings are closest."""
        if not 0 <= int(row) < store.entries:
            raise ArgumentError(f"entry {row} is not in this index of {store.entries} entries", param="row")
        score = float(cm._sigmoid(np.float64(cm.row_decision(store, int(row), self.weights, self.bias, self.layout))))
        v = np.asarray(store.embedding[int(row)], np.float32)
        pos = self.positives()
        sims = np.array([float(e.vector @ v) for e in pos])
        order = np.argsort(-sims, kind="stable")[:NEAREST]
        return {"concept": self.name, "score": round(score, 6), "nearest": [pos[i].path for i in order]}

    def to_json(self) -> dict:
        """The record ``convscope concepts --json`` writes."""
        return {"concept": self.name, "taught": self.taught, "threshold": self.threshold,
                "separation": None if self.separation is None else round(self.separation, 4),
                "background": self.background, "examples": [e.path for e in self.positives()],
                "counter_examples": [e.path for e in self.counters()],
                "classes": [int(c) for c in self.layout.classes]}


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
    rows = conn.execute("SELECT key, name, taught, features, weights, bias, threshold, separation, background, model "
                        "FROM concepts").fetchall()
    layouts = {key: cm.Layout.from_text(features, len(weights) // 4) for key, _n, _t, features, weights, *_ in rows}
    examples: dict[str, list[Example]] = {}
    for key, kind, path, sha, vector, added in conn.execute(
            "SELECT key, kind, path, sha256, vector, added FROM concept_examples ORDER BY key, added, rowid"):
        v = np.frombuffer(vector, np.float32)
        d = layouts[key].embedding if key in layouts else len(v)
        # stored as the embedding, then (from when classes counted) the square-rooted probabilities
        examples.setdefault(key, []).append(Example(read_path(path), sha, kind, v[:d], added, v[d:] if len(v) > d else None))
    return [Concept(name, taught, np.frombuffer(weights, np.float32), float(bias), float(threshold),
                    None if separation is None else float(separation), int(background), examples.get(key, []),
                    layouts[key])
            for key, name, taught, _f, weights, bias, threshold, separation, background, _m in rows]


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _resolve(index, paths: Sequence, kind: str, model) -> list[Example]:
    """Examples from ``paths``: files of the index (their stored embedding and classes) or any
    photo (run through the index's model, its classes kept as the index keeps them); one line
    for a path that is missing or not a photo."""
    from .media import sha256_file
    from .signals.classes import top_classes

    param = "examples" if kind == "example" else "counter"
    what = kind.replace("counter", "counter-example")
    out = []
    for path in paths:
        path = os.fspath(path)
        record = index.file_of(path)
        now = _now()
        if record is not None:
            rows = np.arange(record["first_row"], record["first_row"] + record["rows"])
            v = np.asarray(index.embedding[rows], np.float32).mean(0)
            roots = cm.sqrt_probs(np.asarray(index.top_class[rows]), np.asarray(index.top_prob[rows]), len(index.labels))
            out.append(Example(record["path"], record["sha256"], kind, v / max(float(np.linalg.norm(v)), 1e-12), now,
                               roots.mean(0)))
            continue
        full = os.path.normpath(os.path.abspath(path))
        if not os.path.exists(full):
            raise ArgumentError(f"{what} {path}: no such file in the index or on disk", param=param)
        if not os.path.isfile(full):
            raise ArgumentError(f"{what} {path}: not a photo file", param=param)
        try:
            f = index.features(full, model=model)
            sha = sha256_file(full)
        except ImageError as exc:
            raise ArgumentError(f"{what} {path}: {exc.reason}", param=param) from None
        v = np.asarray(f.embedding[0], np.float32)
        roots = cm.sqrt_probs(*top_classes(f.probs[:1]), len(index.labels))[0]
        out.append(Example(full, sha, kind, v / max(float(np.linalg.norm(v)), 1e-12), now, roots))
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
    (the caller holds the writer lock and ``conn``). Its features: the embedding, and the
    examples' classes where every example keeps its class probabilities (an example kept
    before they were, whose file the index no longer holds, leaves the embedding alone)."""
    every = [_with_roots(index, e) for e in every]
    pos = [e for e in every if e.kind == "example"]
    neg = [e for e in every if e.kind == "counter"]
    d = index.embedding.shape[1]
    dense = all(e.roots is not None for e in every)
    layout = cm.Layout(d, cm.choose_classes(np.stack([e.roots for e in pos]),
                                            np.stack([e.roots for e in neg]) if neg else np.zeros((0, 1)))
                       if dense else ())

    def vectors(group: list[Example]) -> np.ndarray:
        if not group:
            return np.zeros((0, layout.width), np.float32)
        return cm.features(np.stack([e.vector for e in group]), np.stack([e.roots for e in group]) if dense else None,
                           layout)

    exclude = _rows_of(index, {e.sha256 for e in every})
    fitted, count = cm.teach_vectors(lambda rows: cm.store_features(index, rows, layout), index.entries,
                                     vectors(pos), vectors(neg), exclude=exclude, seed=_seed(name))
    concept = Concept(name, _now(), (fitted.weights * fitted.scale).astype(np.float32),
                      float(fitted.bias * fitted.scale + fitted.shift), fitted.threshold, fitted.separation,
                      count, every, layout)
    _write(conn, concept, index.meta["model"])
    return concept


def _with_roots(index, e: Example) -> Example:
    """``e`` with its class probabilities: as kept, else from the index's entry of the same
    file (an example kept before they were), else as it is (None)."""
    if e.roots is not None:
        return e
    rows = _rows_of(index, {e.sha256})
    if not len(rows):
        return e
    roots = cm.sqrt_probs(np.asarray(index.top_class[rows]), np.asarray(index.top_prob[rows]), len(index.labels))
    return dataclasses.replace(e, roots=roots.mean(0))


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
                     (concept.key, concept.name, concept.taught, concept.layout.to_text(), concept.weights.astype(np.float32).tobytes(),
                      concept.bias, concept.threshold,
                      None if concept.separation is None or math.isnan(concept.separation) else concept.separation,
                      concept.background, json.dumps({"fingerprint": model.get("fingerprint"), "spec": model.get("spec")})))
        conn.executemany("INSERT INTO concept_examples VALUES (?, ?, ?, ?, ?, ?)",
                         [(concept.key, e.kind, db_path(e.path), e.sha256, _vector_blob(e), e.added)
                          for e in concept.examples])


def _vector_blob(e: Example) -> bytes:
    """An example as stored: its embedding, then the square roots of its class probabilities."""
    parts = [np.asarray(e.vector, np.float32)] + ([np.asarray(e.roots, np.float32)] if e.roots is not None else [])
    return np.concatenate(parts).tobytes()
