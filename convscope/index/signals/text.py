"""Text in photos: the words :mod:`convscope.ocr` reads in each entry's picture (in the decoding
worker, while its pixels are there), kept in the ``texts`` table with their boxes, found again by
a query word tolerant of OCR errors (:func:`find`).

Optional (``index --no-text``): the engine is an optional package, and :meth:`Text.available`
says in one line where it is missing.
"""
from __future__ import annotations

import dataclasses
import sqlite3
from typing import Sequence

from ... import ocr
from .base import Signal

TABLES = """
CREATE TABLE IF NOT EXISTS texts (
    row INTEGER NOT NULL, word TEXT NOT NULL, norm TEXT NOT NULL, confidence REAL,
    left REAL, top REAL, right REAL, bottom REAL);
CREATE INDEX IF NOT EXISTS texts_norm ON texts (norm);
CREATE INDEX IF NOT EXISTS texts_row ON texts (row);
CREATE TABLE IF NOT EXISTS text_capped (row INTEGER PRIMARY KEY, dropped INTEGER NOT NULL, downscaled INTEGER NOT NULL);
"""
_COLUMNS = "row, word, norm, confidence, left, top, right, bottom"


class Text(Signal):
    """The words written in each entry's picture (``entry``: {"text": [Word, ...], "text_dropped":
    words over :data:`convscope.ocr.MAX_WORDS`}), in the ``texts`` table."""

    name = "text"
    optional = True
    #: Small print needs pixels: at the model's 256 a screenshot's words are half lost (BENCHMARKS.md ("Text in photos")).
    min_size = 512
    columns: dict[str, str] = {}
    tables = TABLES

    def available(self) -> str | None:
        return ocr.available()

    def entry(self, image) -> dict:
        reading = ocr.read(image)
        return {"text": reading.words, "text_dropped": reading.dropped, "text_downscaled": reading.downscaled}

    def insert(self, conn: sqlite3.Connection, rows: Sequence[int], entries: list[dict]) -> None:
        conn.executemany(
            f"INSERT INTO texts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(row, w.text, w.norm, w.confidence, *w.box)
             for row, entry in zip(rows, entries) for w in entry.get("text", ())])
        conn.executemany("INSERT INTO text_capped VALUES (?, ?, ?)",
                         [(row, e.get("text_dropped", 0), int(bool(e.get("text_downscaled")))) for row, e in zip(rows, entries)
                          if e.get("text_dropped") or e.get("text_downscaled")])

    def notes(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Pictures whose reading was capped: shrunk to the engine's budget (a huge scan), or
        with more words than are kept."""
        count = conn.execute("SELECT COUNT(*) FROM text_capped").fetchone()[0]
        return {"text": int(count)} if count else {}

    def copy(self, old_conn: sqlite3.Connection, conn: sqlite3.Connection, a: int, b: int, first: int) -> None:
        if not _has_texts(old_conn):   # an index built without text: nothing to keep
            return
        found = old_conn.execute(f"SELECT {_COLUMNS} FROM texts WHERE row >= ? AND row < ? ORDER BY rowid", (a, b))
        conn.executemany(f"INSERT INTO texts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         ((row - a + first, *rest) for row, *rest in found))
        if old_conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'text_capped'").fetchone():
            conn.executemany("INSERT INTO text_capped VALUES (?, ?, ?)",
                             [(row - a + first, d, s) for row, d, s in old_conn.execute(
                                 "SELECT row, dropped, downscaled FROM text_capped WHERE row >= ? AND row < ?", (a, b))])


def _has_texts(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'texts'").fetchone() is not None


@dataclasses.dataclass(frozen=True)
class TextHit:
    """A recognized word that a query word matched: the entry ``row``, the ``word`` as read, its
    ``norm``, the ``similarity`` (1.0 exact), the ``box`` (left, top, right, bottom, 0..1 of the
    picture) and the engine's ``confidence``."""

    row: int
    word: str
    norm: str
    similarity: float
    box: tuple[float, float, float, float]
    confidence: float


def find(conn: sqlite3.Connection, query: str, *, tolerant: bool = True) -> list[TextHit]:
    """The recognized words of an index (``conn``, its ``texts`` table) that the query word
    matches (:func:`convscope.ocr.close_norms`): best similarity first, then the most confident.
    Only the distinct words of a length within the query's tolerance are compared, then looked up
    by the ``norm`` index.

    >>> [(h.row, h.word) for h in find(conn, "pharmacy")]   # [(12, 'PHARMACY'), (40, 'PHARMACV')]
    """
    q = ocr.normalize(query)
    if not q or not _has_texts(conn):
        return []
    slack = ocr.tolerance(q) if tolerant else 0
    norms = [n for (n,) in conn.execute("SELECT DISTINCT norm FROM texts WHERE length(norm) BETWEEN ? AND ?",
                                        (len(q) - slack, len(q) + slack))]
    close = dict(ocr.close_norms(q, norms, tolerant=tolerant))
    if not close:
        return []
    marks = ",".join("?" * len(close))
    hits = [TextHit(row, word, norm, close[norm], (left, top, right, bottom), confidence)
            for row, word, norm, confidence, left, top, right, bottom in conn.execute(
                f"SELECT {_COLUMNS} FROM texts WHERE norm IN ({marks})", list(close))]
    return sorted(hits, key=lambda h: (-h.similarity, -(h.confidence or 0), h.row))
