"""The one interface of a per-photo signal: what the index keeps of each photo, in up to three
stages, each optional (the base class's are empty).

- :meth:`Signal.file` runs in the decoding worker, once per file, on what reading it told
  (:class:`convscope.data.Photo`, or :class:`~convscope.index.media.VideoInfo`): columns of
  the file's record.
- :meth:`Signal.entry` runs in the decoding worker on each decoded picture (a photo, or a
  sampled video frame) while its pixels are there: per-entry values (a thumbnail).
- :attr:`Signal.columns` are the columns of the ``files`` table that :meth:`Signal.file` fills,
  :attr:`Signal.tables` the SQL of its own per-entry tables, which :meth:`Signal.insert` fills
  from the per-entry values and :meth:`Signal.copy` copies from an old index on an update.
- :meth:`Signal.rows` runs after the batch's forward pass on its
  :class:`~convscope.index.features.Features` and its entries' values: per-entry row arrays, declared by
  :meth:`Signal.arrays`; :meth:`Signal.stored` reads them back from an index (an update copies
  the rows of unchanged files), :meth:`Signal.finish` writes the arrays derived from them once
  the build has every row.

>>> class Brightness(Signal):
...     name = "brightness"
...     def entry(self, image): return {"brightness": np.asarray(image.convert("L")).mean()}
...     def arrays(self, extractor): return {"brightness": (np.float32, ())}
...     def rows(self, features, entries): return {"brightness": np.array([e["brightness"] for e in entries])}
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np


class Signal:
    """A per-photo signal; subclasses set :attr:`name` and override the stages they fill."""

    name: str = ""
    #: Pixels of the shorter side this signal needs of a decoded picture: a build decodes at
    #: reduced scale, but never smaller than the model's resize or any signal's ``min_size``.
    min_size: int = 0
    #: Columns of the index's ``files`` table that :meth:`file` fills: name -> SQL type. An index
    #: built before the signal existed lacks them (read as None) until an update fills them.
    columns: dict[str, str] = {}
    #: SQL of the signal's own tables (``CREATE TABLE ...``), keyed by the entry ``row``.
    tables: str = ""
    #: Whether a build may leave the signal out (``index --no-text``): then it is off where
    #: :meth:`available` gives a reason, and a build asks for it by name.
    optional: bool = False
    #: Whether its row arrays come from the model's outputs (:meth:`rows` reads ``features``): an
    #: update that adds such a signal to an old index runs the model again; one that needs only
    #: the decoded picture (``False``: a perceptual hash) gets its rows from :meth:`entry` alone.
    needs_model: bool = True

    def available(self) -> str | None:
        """Why this signal cannot run here (a package missing), in one line; None if it can."""
        return None

    def file(self, read) -> dict:
        """Columns of the file's record, from ``read`` (a decoded Photo, or a VideoInfo)."""
        return {}

    def entry(self, image) -> dict:
        """Per-entry values of one decoded picture (RGB PIL image, upright)."""
        return {}

    def notes(self, conn: sqlite3.Connection) -> dict[str, int]:
        """How many notes of each kind its values hold (metadata ignored as untrue, work
        capped), from the finished build's database: what the index's ``info()`` counts."""
        return {}

    def warning(self) -> str | None:
        """A line a build says once before it starts, where the signal runs with less here (a
        package missing), or None."""
        return None

    def insert(self, conn: sqlite3.Connection, rows: Sequence[int], entries: list[dict]) -> None:
        """Write the per-entry values of :meth:`entry` of the entries ``rows`` into its tables."""

    def copy(self, old: sqlite3.Connection, conn: sqlite3.Connection, a: int, b: int, first: int) -> None:
        """Copy its tables' rows of the old index's entries ``a <= row < b`` to rows from ``first``."""

    def arrays(self, extractor) -> dict[str, tuple[type, tuple[int, ...]]]:
        """The row arrays this signal adds: name -> (dtype, shape of one row)."""
        return {}

    def rows(self, features, entries: list[dict]) -> dict[str, np.ndarray]:
        """The rows of a batch's entries, one array per name of :meth:`arrays`, from the batch's
        forward pass (``features``) and the entries' values (what every :meth:`entry` gave)."""
        return {}

    def stored(self, store, first: int, stop: int) -> dict[str, np.ndarray]:
        """The rows of entries ``first <= row < stop`` of an existing index, as :meth:`rows` gives them."""
        return {}

    def finish(self, arrays: Path, rows: int, extractor) -> None:
        """Write the arrays derived from this signal's rows into the folder ``arrays``."""
