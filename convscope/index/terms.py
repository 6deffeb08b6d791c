"""The kinds of evidence a search word can be, each scored over a whole index at once and
explained for one entry: ImageNet classes through WordNet (:class:`ClassTerm`), everyday words
(:class:`WordTerm`), places and times from the photo's metadata (:class:`PlaceTerm`,
:class:`TimeTerm`), recognized text (:class:`TextTerm`), and either of several
(:class:`AnyOf`). :mod:`.query` reads a query into these terms; :func:`.search.search` combines
their scores.

A term's :meth:`~Term.scores` is one number per entry, 0 where the entry does not match:
probabilities for the network's evidence (cut at ``min_score``), 1 for a place or a time, the
similarity of the recognized word for text. Its :meth:`~Term.why` lists the evidence of one
entry, each piece a record whose JSON says its ``kind`` (``docs/search.md``).

>>> ClassTerm("dog", Vocabulary.load().classes_for("dog").paths).why(store, 12)[0].to_json()
{'kind': 'class', 'index': 207, 'label': 'golden retriever', 'probability': 0.93, 'path': [...]}
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ..vocab import times
from . import postings
from .store import IndexStore

# --------------------------------------------------------------------------- evidence


@dataclasses.dataclass
class Why:
    """A matched class: its ``index``, ``label``, the ``probability`` the classifier gave it, and
    the WordNet ``path`` from the class up to the query word."""

    index: int
    label: str
    probability: float
    path: list[str]
    kind = "class"

    def to_json(self) -> dict:
        return {"kind": self.kind, "index": self.index, "label": self.label, "probability": round(self.probability, 6),
                "path": list(self.path)}

    def line(self) -> str:
        return f"{self.label} {self.probability:.2f}: {' > '.join(self.path)}"


@dataclasses.dataclass
class WordWhy:
    """A class that is evidence for an everyday ``word``: the class ``index``, ``label``, its
    ``probability``, and why it is evidence (``reason``, ``source`` of the mapping)."""

    word: str
    index: int
    label: str
    probability: float
    reason: str
    source: str
    kind = "word"

    def to_json(self) -> dict:
        return {"kind": self.kind, "word": self.word, "index": self.index, "label": self.label,
                "probability": round(self.probability, 6), "reason": self.reason, "source": self.source}

    def line(self) -> str:
        return f"{self.word}: {self.label} {self.probability:.2f} ({self.reason})"


@dataclasses.dataclass
class PlaceWhy:
    """Where the photo was taken (its GPS position, named offline), matching the query's ``words``."""

    words: str
    city: str | None
    district: str | None
    region: str | None
    country: str | None
    lat: float | None
    lon: float | None
    km: float | None = None  # how far the position is from the town named ``city``
    kind = "place"

    @property
    def place(self) -> str:
        return ", ".join(p for p in (self.city, self.district, self.region, self.country) if p)

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "place": self.place, "city": self.city, "district": self.district,
                "region": self.region, "country": self.country, "lat": self.lat, "lon": self.lon, "km": self.km}

    def line(self) -> str:
        where = f" ({self.lat:.4f}, {self.lon:.4f})" if self.lat is not None and self.lon is not None else ""
        far = f", {self.km:.1f} km from {self.city}'s point" if self.city and self.km is not None and self.km >= 1 else ""
        return f"'{self.words}': taken in {self.place}{where}{far}"


@dataclasses.dataclass
class TimeWhy:
    """When the photo was taken, matching the query's ``words``: ``taken`` (local time, ISO),
    ``source`` (exif, container or file) and the one-line ``reason``."""

    words: str
    taken: str
    source: str
    reason: str
    kind = "time"

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "taken": self.taken, "source": self.source, "reason": self.reason}

    def line(self) -> str:
        return self.reason


@dataclasses.dataclass
class TextWhy:
    """A word recognized in the photo (``text``) that matches the query's ``words``, with its
    ``similarity``, the recognizer's ``confidence`` and its ``box`` (left, top, right, bottom,
    fractions of the picture's width and height)."""

    words: str
    text: str
    similarity: float
    confidence: float
    box: tuple[float, float, float, float]
    kind = "text"

    def to_json(self) -> dict:
        return {"kind": self.kind, "words": self.words, "text": self.text, "similarity": round(self.similarity, 4),
                "confidence": round(self.confidence, 4), "box": [round(v, 4) for v in self.box]}

    def line(self) -> str:
        return f"'{self.words}': the photo reads {self.text!r}"


@dataclasses.dataclass
class ConceptWhy:
    """A concept taught from examples (``convscope teach``): its calibrated ``score`` of the
    photo, the ``nearest`` examples (paths), and a ``note`` where the name hides a word."""

    concept: str
    score: float
    nearest: list[str]
    note: str | None = None
    kind = "concept"

    def to_json(self) -> dict:
        out = {"kind": self.kind, "concept": self.concept, "score": round(self.score, 6), "nearest": list(self.nearest)}
        if self.note:
            out["note"] = self.note
        return out

    def line(self) -> str:
        near = f", nearest example {self.nearest[0]}" if self.nearest else ""
        return f"your concept '{self.concept}' {self.score:.2f}{near}" + (f" ({self.note})" if self.note else "")


# --------------------------------------------------------------------------- scores


def keyword_scores(store: IndexStore, classes: Sequence[int]) -> np.ndarray:
    """(N,) float64: per entry, the sum of its stored probabilities of ``classes``: the columns
    of the class blocks the classes cover whole (:mod:`.postings`), plus the inverted lists of
    the others, gathered in runs of consecutive lists."""
    offsets = store.post_offsets
    count = len(offsets) - 1
    whole, rest = [], sorted({int(c) for c in classes if 0 <= int(c) < count})
    if store.class_blocks is not None and len(rest) >= 2 * postings.BLOCK:
        whole, rest = postings.split(rest, count)
    scores = np.zeros(store.entries)
    entries, probs, _ = postings.gather(offsets, store.post_entry, store.post_prob, rest)
    if len(entries):  # one pass of bincount over the gathered lists: twice as fast as adding list by list
        scores = np.bincount(entries, weights=probs, minlength=store.entries)
    for b in whole:
        scores += store.class_blocks[b]
    return scores


def class_why(store: IndexStore, row: int, paths: Mapping[int, Sequence[str]]) -> list[Why]:
    """The matched classes among entry ``row``'s stored ones, most probable first."""
    out = []
    for c, p in zip(store.top_class[row].tolist(), store.top_prob[row].tolist()):
        if c >= 0 and c in paths:
            out.append(Why(int(c), store.labels[c], float(p), list(paths[c])))
    return out


def file_rows(store: IndexStore, firsts: Sequence[int], counts: Sequence[int]) -> np.ndarray:
    """The entry rows of files (their ``first_row`` and ``rows``), ascending within each file."""
    firsts, counts = np.asarray(firsts, np.int64), np.asarray(counts, np.int64)
    if not len(firsts):
        return np.zeros(0, np.int64)
    starts = np.repeat(firsts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return starts + np.arange(int(counts.sum()))


# --------------------------------------------------------------------------- terms


class Term:
    """One word (or phrase) of a query read as one kind of evidence: ``words``, as the query said them."""

    words: str
    #: Whether the term is the network's evidence, cut at ``min_score``.
    network = False

    def scores(self, store: IndexStore, min_score: float) -> np.ndarray:
        """(N,) float64: the term's score of every entry, 0 where it does not match."""
        raise NotImplementedError

    def why(self, store: IndexStore, row: int) -> list:
        """The evidence of entry ``row`` (which the term matched)."""
        raise NotImplementedError


def _cut(scores: np.ndarray, min_score: float) -> np.ndarray:
    return np.where(scores >= min_score, scores, 0.0) if min_score > 0 else scores


@dataclasses.dataclass
class ClassTerm(Term):
    """ImageNet classes named through WordNet: ``paths[i]`` is the path from class ``i`` up to the words."""

    words: str
    paths: Mapping[int, Sequence[str]]
    network = True

    def scores(self, store, min_score):
        return _cut(keyword_scores(store, list(self.paths)), min_score)

    def why(self, store, row):
        return class_why(store, row, self.paths)


@dataclasses.dataclass
class WordTerm(Term):
    """An everyday word (:class:`convscope.vocab.everyday.Evidence`): the classes that are
    evidence for it, each with why."""

    words: str
    evidence: object
    network = True

    def scores(self, store, min_score):
        return _cut(keyword_scores(store, sorted(self.evidence.reasons)), min_score)

    def why(self, store, row):
        reasons, sources = self.evidence.reasons, self.evidence.sources
        return [WordWhy(self.evidence.word, int(c), store.labels[c], float(p), reasons[c], sources.get(c, ""))
                for c, p in zip(store.top_class[row].tolist(), store.top_prob[row].tolist()) if c >= 0 and c in reasons]


@dataclasses.dataclass
class PlaceTerm(Term):
    """Places of this index that the words name: ``places`` is a list of (column, value), the
    column one of city, region, country, as the index holds the value."""

    words: str
    places: Sequence[tuple[str, str]]

    def _files(self, store):
        where = " OR ".join(f"{column} = ?" for column, _ in self.places)
        return store.query(f"SELECT id, first_row, rows FROM files WHERE {where}", [v for _, v in self.places])

    def scores(self, store, min_score):
        out = np.zeros(store.entries)
        found = self._files(store)
        out[file_rows(store, [f["first_row"] for f in found], [f["rows"] for f in found])] = 1.0
        return out

    def why(self, store, row):
        record = store.query("SELECT * FROM files WHERE id = ?", [int(store.entry_file[row])])
        if not record:
            return []
        r = dict(record[0])
        return [PlaceWhy(self.words, r.get("city"), r.get("district"), r.get("region"), r.get("country"), r.get("lat"),
                         r.get("lon"), r.get("place_km"))]


@dataclasses.dataclass
class TimeTerm(Term):
    """A time word (:class:`convscope.vocab.times.TimeTerm`): when the photo was taken, from
    its EXIF (or a video's container), else its file's modification time, said so in the why."""

    words: str
    term: times.TimeTerm

    def _when(self, store, record) -> times.When:
        columns = store.file_columns
        source = record["taken_from"] if "taken_from" in columns and record["taken_from"] else None
        if record["taken"] and times.year_month(record["taken"]) is not None:
            taken, source = record["taken"], source or ("container" if record["kind"] == "video" else "exif")
        else:
            taken, source = times.file_time(record["mtime_ns"]), "file"
        offset = record["utc_offset"] if "utc_offset" in columns else None
        lat = record["lat"] if "lat" in columns else None
        return times.When(taken, source, offset, lat)

    def _records(self, store, ids=None):
        columns = store.file_columns
        wanted = ["id", "kind", "taken", "mtime_ns", "first_row", "rows"] + [
            c for c in ("taken_from", "utc_offset", "lat") if c in columns]
        sql, args = f"SELECT {', '.join(wanted)} FROM files", []
        span = self.term.span()
        if ids is not None:
            sql += f" WHERE id IN ({','.join('?' * len(ids))})"
            args = list(ids)
        elif span is not None:  # a range on the taken date; the files without one go by their file's time
            start, end = span
            sql += " WHERE (taken >= ? AND taken < ?) OR taken IS NULL"
            args = [start, end]
        return store.query(sql, args)

    def scores(self, store, min_score):
        out = np.zeros(store.entries)
        found = [r for r in self._records(store) if self.term.match(self._when(store, r)) is not None]
        out[file_rows(store, [f["first_row"] for f in found], [f["rows"] for f in found])] = 1.0
        return out

    def why(self, store, row):
        records = self._records(store, [int(store.entry_file[row])])
        if not records:
            return []
        when = self._when(store, records[0])
        reason = self.term.match(when)
        return [TimeWhy(self.words, when.taken, when.source, reason)] if reason else []


@dataclasses.dataclass
class TextTerm(Term):
    """Words recognized in the photos (the ``text`` signal) that match the query's word,
    tolerant of recognition errors (:func:`convscope.ocr.close_norms`)."""

    words: str

    def _matches(self, store) -> dict[str, float]:
        """The index's recognized words within tolerance of the query's, with their similarity:
        found once per query and index (its scores and each result's why read them)."""
        from ..ocr import close_norms

        found = getattr(self, "_found", None)
        if found is None or found[0] is not store:
            norms = store.memo("text words", lambda: [r[0] for r in store.query("SELECT DISTINCT norm FROM texts")])
            found = self._found = (store, dict(close_norms(self.words, norms)))
        return found[1]

    def scores(self, store, min_score):
        out = np.zeros(store.entries)
        matches = self._matches(store)
        if matches:
            norms = list(matches)
            for start in range(0, len(norms), 900):
                part = norms[start:start + 900]
                for r in store.query(f"SELECT row, norm FROM texts WHERE norm IN ({','.join('?' * len(part))})", part):
                    out[r["row"]] = max(out[r["row"]], matches[r["norm"]])
        return out

    def why(self, store, row):
        matches = self._matches(store)
        found = [TextWhy(self.words, r["word"], matches[r["norm"]], r["confidence"] or 0.0,
                         (r["left"], r["top"], r["right"], r["bottom"]))
                 for r in store.query("SELECT word, norm, confidence, left, top, right, bottom FROM texts WHERE row = ?", [int(row)])
                 if r["norm"] in matches]
        return sorted(found, key=lambda w: (-w.similarity, -w.confidence))


@dataclasses.dataclass
class ConceptTerm(Term):
    """A concept a person taught this index (:mod:`.concepts`): its calibrated score, cut at
    the concept's own threshold. ``note``: said in its why (a name that hides a word)."""

    words: str
    concept: object
    note: str | None = None

    def scores(self, store, min_score):
        scores = self.concept.scores(store)
        return np.where(scores >= self.concept.threshold, scores, 0.0)

    def why(self, store, row):
        told = self.concept.why(store, row)
        return [ConceptWhy(told["concept"], float(told["score"]), list(told["nearest"]), self.note)]


@dataclasses.dataclass
class AnyOf(Term):
    """Either of several readings of the same words (an everyday word that is also a WordNet
    noun; a word the network knows that the photo may also show written): the best score."""

    words: str
    terms: Sequence[Term]

    @property
    def network(self) -> bool:
        return any(t.network for t in self.terms)

    def scores(self, store, min_score):
        self._scores = [t.scores(store, min_score) for t in self.terms]
        return np.maximum.reduce(self._scores)

    def why(self, store, row):
        scored = getattr(self, "_scores", None) or [t.scores(store, 0.0) for t in self.terms]
        return [w for t, s in zip(self.terms, scored) if s[row] > 0 for w in t.why(store, row)]


__all__ = ["AnyOf", "ClassTerm", "ConceptTerm", "ConceptWhy", "PlaceTerm", "PlaceWhy", "Term", "TextTerm", "TextWhy", "TimeTerm", "TimeWhy", "Why",
           "WordTerm", "WordWhy", "class_why", "file_rows", "keyword_scores"]
