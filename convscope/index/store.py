"""The index on disk: an SQLite database of records and memory-mapped NumPy arrays of vectors.

A folder (schema in ``docs/search.md``, "Index format")::

    index.sqlite          meta, files, entries, thumbs, skipped   (the commit point)
    arrays-<gen>/         top_class, top_prob, embedding (rows = entries);
                          units, unit_pos (rows = units); post_* (the class -> entry lists);
                          entry_file, entry_time, entry_date
    .partial/             a build in progress: its database (its arrays-<gen>/ beside the others),
                          and, with ``snapshots``, snapshot.sqlite: what it holds so far

An entry is one photo or one sampled video frame; its row in every entry array is its
``entries.row``. The folder follows :mod:`convscope.stores`: ``index.sqlite`` appears (or is
replaced) by one atomic rename only when a build is complete and every file is fsynced, and
names the arrays folder it goes with, so a reader sees the old index or the new one and never a
mix. Indexes built before the decoder was recorded (no ``decoder`` in meta) read alike.

A build with ``snapshots`` publishes what it holds so far as ``.partial/snapshot.sqlite``
(:data:`SNAPSHOT_NAME`): a copy of its database at a commit, cut to the files whose rows are all
there, ``complete`` false and ``building`` saying how far it is. ``IndexStore.open(DIR,
building=True)`` reads it: the growing row arrays up to its rows (:func:`.arrays.head_rows`), and
what a build writes only at its end computed as it opens (the entries' files and dates, the
inverted lists in memory, the units read through the transpose of their rows); the class-block
sums are left out, which gives the same scores (:mod:`.postings`).

>>> store = IndexStore.open("photos.index")
>>> store.entries, store.embedding.shape            # (1234, (1234, 1280))
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConvscopeError
from ..files import printable_path
from ..model_names import DEFAULT_MODEL
from ..stores import PARTIAL, open_committed, state
from . import postings
from .arrays import RowFile, head_rows, load_rows  # noqa: F401 (RowFile and load_rows: read from here too)

FORMAT = "convscope-index"
FORMAT_VERSION = 1
DB_NAME = "index.sqlite"
#: A build's latest published snapshot, in ``.partial/`` (see the module's docstring).
SNAPSHOT_NAME = "snapshot.sqlite"
#: Classes kept per entry, most probable first, and the smallest probability kept: measured on
#: the dev photos (BENCHMARKS.md), 32 classes above 0.001 give keyword search the mean average
#: precision of the full 1,000 probabilities (0.988 against 0.987) with a mean score error of
#: 0.0026, and keep 14 classes an entry on average.
TOP_CLASSES = 32
PROB_FLOOR = 1e-3
#: The signals of an index built before they were recorded (meta ``signals``).
BEFORE_RECORDED = ("classes", "embedding", "units", "thumbnail", "metadata")

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL{columns}, first_row INTEGER NOT NULL, rows INTEGER NOT NULL
);
CREATE TABLE entries (row INTEGER PRIMARY KEY, file INTEGER NOT NULL REFERENCES files(id), time REAL);
CREATE TABLE skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
{tables}
"""


def schema(columns: dict[str, str], tables: str) -> str:
    """The database of an index whose per-photo signals fill ``columns`` of ``files`` (name ->
    SQL type) and make ``tables`` (SQL)."""
    return SCHEMA.format(columns="".join(f", {name} {kind}" for name, kind in columns.items()), tables=tables)


class IncompleteIndexError(ConvscopeError):
    """A folder whose index build stopped before the end."""


def db_path(path: str) -> str | bytes:
    """A file name as the database holds it: text, or, for a name that is not valid UTF-8 (its
    bytes ``os.fsdecode`` kept as surrogate escapes, which SQLite's text cannot hold), its bytes
    as a blob; :func:`read_path` gives the same ``str`` back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def read_path(value: str | bytes) -> str:
    """A file name the database holds (:func:`db_path`) as the ``str`` Python's file functions
    take (undecodable bytes as surrogate escapes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _record(row) -> dict:
    record = dict(row)
    record["path"] = read_path(record["path"])
    return record


# --------------------------------------------------------------------------- reading


def read_meta(conn: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}


def _date_seconds(taken: str | None, mtime_ns: int) -> float:
    """Sort key of a file: its EXIF (or container) date read as UTC, else its mtime."""
    if taken:
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(taken).replace(tzinfo=datetime.timezone.utc).timestamp()
    return mtime_ns / 1e9


def entry_columns(conn: sqlite3.Connection, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entry arrays a build derives from its database's first ``n`` entries: ``entry_file``
    (n,) int32, ``entry_time`` (n,) float32 (NaN for a photo) and ``entry_date`` (n,) float64 (the
    file's EXIF date, else its mtime, plus the frame's time)."""
    files = {r[0]: r[1:] for r in conn.execute("SELECT id, taken, mtime_ns FROM files")}
    file_col = np.zeros(n, np.int32)
    time_col = np.full(n, np.nan, np.float32)
    for row, fid, t in conn.execute("SELECT row, file, time FROM entries WHERE row < ? ORDER BY row", (n,)):
        file_col[row] = fid
        if t is not None:
            time_col[row] = t
    dates = {fid: _date_seconds(taken, mtime) for fid, (taken, mtime) in files.items()}
    date_col = np.array([dates[f] for f in file_col], np.float64) + np.nan_to_num(time_col)
    return file_col, time_col, date_col


#: What to do with a folder whose database convscope cannot read as its index: an update would
#: have to read it, so the index is built again, in another folder.
_REBUILD = "build the index again in a new folder (`convscope index PATHS --out NEW`)"


def resume_hint(root: Path) -> str:
    return f"finish it with Index.build(..., {str(root)!r}, resume=True) and the same inputs (`{resume_command(root)}`)"


def resume_command(root: Path) -> str:
    """The command line that finishes the build stopped in ``root``: the inputs, model, layers
    and fps its partial database records (``PATHS`` where it records none), quoted for a shell."""
    meta: dict = {}
    try:
        db = (root / PARTIAL / DB_NAME).resolve()
        if db.is_file():
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                meta = read_meta(conn)
    except (sqlite3.Error, ValueError, OSError):  # a database cut short: the hint without its settings
        meta = {}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    spec, weights = str(model.get("spec") or ""), str(model.get("weights") or "")
    inputs = [str(i) for i in meta.get("inputs") or [] if isinstance(meta.get("inputs"), list)]
    words = ["convscope", "index", *(inputs or ["PATHS"]), "--out", str(root), "--resume"]
    if spec and spec != DEFAULT_MODEL:
        words += ["--model", spec]
    if weights.startswith("random"):
        words.append("--no-pretrained")
    elif os.path.isfile(weights):
        words += ["--weights", weights]
    layers = meta.get("layers")
    if isinstance(layers, list) and all(isinstance(layer, dict) and "name" in layer for layer in layers) and layers:
        words += ["--layers", ",".join(str(layer["name"]) for layer in layers)]
    fps = meta.get("fps", 1.0)
    if isinstance(fps, (int, float)) and fps != 1.0:
        words += ["--fps", f"{fps:g}"]
    return " ".join(w if w == "PATHS" else shlex.quote(printable_path(w)) for w in words)


def _shell(root: Path) -> str:
    """``root`` as a hint's command line writes it: one line, quoted for a shell."""
    return shlex.quote(printable_path(root))


class IndexStore:
    """A finished index, read-only: metadata and records through SQLite, vectors memory-mapped.

    Entry arrays (``N`` entries): ``top_class`` (N, 32) int16 and ``top_prob`` (N, 32) float16,
    the most probable classes (-1 / 0 past the last above 0.001); ``embedding`` (N, D) float16,
    L2-normalized; ``entry_file`` (N,) int32 file ids; ``entry_time`` (N,) float32 seconds
    into a video (NaN for a photo); ``entry_date`` (N,) float64 Unix seconds (EXIF date, else
    the file's mtime; plus the frame time). Unit arrays (``U`` units of all indexed layers side
    by side): ``units`` (U, N) float16 spatial maxima and ``unit_pos`` (U, N) int16 positions.
Inverted lists: ``post_offsets`` (C + 1,), ``post_entry`` and ``post_prob``; ``class_blocks``
(B, N) float32, per entry the sums over blocks of consecutive classes (:mod:`.postings`), or None.

    >>> store = IndexStore.open("photos.index")
    >>> store.info()["entries"]
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, meta: dict):
        self.root = root
        self._conn = conn
        self._lock = threading.Lock()
        self.meta = meta
        arrays = root / meta["arrays"]
        self.arrays_dir = arrays
        self.entries = int(meta["entries"])
        self.labels: list[str] = meta["labels"]
        self.layers: list[dict] = meta["layers"]
        self._paths: dict[int, dict] = {}
        self._memo: dict[str, object] = {}
        load = self.array
        self.top_class = load("top_class")
        self.top_prob = load("top_prob")
        self.embedding = load("embedding")
        if self.building is None:
            self.units = load("units")
            self.unit_pos = load("unit_pos")
            self.post_offsets = np.asarray(load("post_offsets"))
            self.post_entry = load("post_entry")
            self.post_prob = load("post_prob")
            blocks = arrays / "class_blocks.npy"  # absent in indexes built before it (format 1 still)
            self.class_blocks = load_rows(blocks) if blocks.is_file() else None
            self.entry_file = load("entry_file")
            self.entry_time = load("entry_time")
            self.entry_date = load("entry_date")
        else:  # a snapshot: what the build derives at its end, computed here (module docstring)
            self.units, self.unit_pos = load("unit_rows").T, load("unit_pos_rows").T
            self.post_offsets, self.post_entry, self.post_prob = postings.inverted_lists(
                self.top_class, self.top_prob, int(meta["classes"]))
            self.class_blocks = None
            with self._lock:
                self.entry_file, self.entry_time, self.entry_date = entry_columns(conn, self.entries)

    def array(self, name: str) -> np.ndarray:
        """The row array ``name`` (``"embedding"``, ``"phash"``...) of the index's entries,
        memory-mapped read-only: of a snapshot, its first :attr:`entries` rows."""
        path = self.arrays_dir / f"{name}.npy"
        return load_rows(path) if self.building is None else head_rows(path, self.entries)

    @property
    def building(self) -> dict | None:
        """For a snapshot of a build in progress (:meth:`open` with ``building=True``):
        ``files_done`` (indexed or skipped) of ``files`` planned (``videos`` of them videos),
        ``entries`` so far and ``updated`` (ISO time); None for a finished index."""
        return self.meta.get("building")

    @classmethod
    def open(cls, directory: str | os.PathLike, building: bool = False) -> "IndexStore":
        """Open the index in ``directory``; an unfinished build raises :class:`IncompleteIndexError`
        (one line that says to resume it). ``building=True`` opens, where the build is unfinished
        and nothing is committed, its latest snapshot instead (a build with ``snapshots=True``
        publishes them): the entries indexed so far, an index whose :attr:`building` says how
        far it is and whose ``info()["complete"]`` is False.

        >>> IndexStore.open("photos.index", building=True).building
        {'files_done': 120, 'files': 370, 'videos': 0, 'entries': 120, 'updated': '...'}"""
        root = Path(directory)
        snapshot = root / PARTIAL / SNAPSHOT_NAME
        if building and not state(root, DB_NAME).committed and snapshot.is_file():
            return cls._snapshot(root, snapshot)
        build = f"build one with Index.build(model, inputs, {str(root)!r}) (`convscope index PATHS --out {_shell(root)}`)"
        conn = open_committed(root, DB_NAME, kind="index", format=FORMAT, incomplete=IncompleteIndexError,
                              resume_hint=resume_hint(root), build_hint=build, rebuild_hint=_REBUILD)
        meta = read_meta(conn)
        if meta.get("version") != FORMAT_VERSION:
            conn.close()
            raise ConvscopeError(f"{root / DB_NAME} is an index of format version {meta.get('version')}; "
                                 f"this convscope reads version {FORMAT_VERSION}: {_REBUILD}")
        return cls(root, conn, meta)

    @classmethod
    def _snapshot(cls, root: Path, snapshot: Path) -> "IndexStore":
        """The snapshot ``snapshot`` of the build in ``root``; one line when it cannot be read
        (replaced or removed as it opened: the build went on or is finishing)."""
        conn = None
        try:
            conn = sqlite3.connect(f"file:{snapshot.resolve()}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            meta = read_meta(conn)
            if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION or "building" not in meta:
                raise ValueError("not a snapshot of this convscope's index")
            return cls(root, conn, meta)
        except (sqlite3.Error, OSError, ValueError, KeyError) as exc:
            if conn is not None:
                conn.close()
            raise IncompleteIndexError(f"the snapshot of the index build in {root} cannot be read now ({exc}); "
                                       "open it again in a moment") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # ----------------------------------------------------------------- records

    def files(self, ids: Sequence[int] | None = None) -> dict[int, dict]:
        """File records by id (all of them, or those of ``ids``): path, kind ("photo"/"video"),
        size, mtime_ns, sha256, taken, width, height, duration, first_row, rows."""
        if ids is None:
            return {r["id"]: _record(r) for r in self.query("SELECT * FROM files ORDER BY id")}
        want = sorted({int(i) for i in ids} - set(self._paths))
        for start in range(0, len(want), 900):  # SQLite's limit on bound parameters
            part = want[start:start + 900]
            rows = self.query(f"SELECT * FROM files WHERE id IN ({','.join('?' * len(part))})", part)
            for r in rows:
                self._paths[r["id"]] = _record(r)
        return {int(i): self._paths[int(i)] for i in ids}

    def file_of(self, path: str | os.PathLike) -> dict | None:
        """The file record of an indexed ``path`` (absolute or as given), or None."""
        key = os.path.normpath(os.path.abspath(os.fspath(path)))
        rows = self.query("SELECT * FROM files WHERE path = ?", [db_path(key)])
        return _record(rows[0]) if rows else None

    def memo(self, key: str, make):
        """What ``make()`` gives, made once per open index (an index never changes once open):
        the vocabularies that searches read from the database, such as its place names."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def file_columns(self) -> frozenset[str]:
        """The columns of the ``files`` table (an index built before a signal lacks its columns)."""
        return self.memo("file columns", lambda: frozenset(r["name"] for r in self.query("PRAGMA table_info(files)")))

    @property
    def db(self) -> sqlite3.Connection:
        """The index's database, read-only (a build copies an old index's rows from it)."""
        return self._conn

    @property
    def signals(self) -> tuple[str, ...]:
        """The names of the per-photo signals this index holds (:mod:`.signals`)."""
        return tuple(self.meta.get("signals") or BEFORE_RECORDED)

    def thumbnail(self, row: int) -> bytes:
        """The JPEG thumbnail of entry ``row`` (at most 160 x 160 pixels)."""
        rows = self.query("SELECT jpeg FROM thumbs WHERE row = ?", [int(row)])
        if not rows:
            raise IndexError(f"entry {row} is not in this index of {self.entries} entries")
        return bytes(rows[0]["jpeg"])

    def skipped(self) -> list[tuple[str, str]]:
        """The files the build skipped, with their one-line reasons."""
        return [(read_path(r["path"]), r["reason"]) for r in self.query("SELECT path, reason FROM skipped ORDER BY path")]

    def layer(self, name: str) -> dict:
        """An indexed layer: name, offset (its first column in the unit arrays), shape (C, H, W)."""
        for layer in self.layers:
            if layer["name"] == name:
                return layer
        from ..errors import unknown_name_error

        raise unknown_name_error("layer", name, [l["name"] for l in self.layers],
                                 hint="The index keeps the units of these layers only.")

    def info(self) -> dict:
        """A summary: entries, files (photos, videos), skipped, model, layers, fps, built, seconds,
        the signals it holds, its build's ``notes`` (metadata ignored as untrue, work capped:
        how many of each kind, ``{"date": 2, "gps": 1}``), ``complete`` and ``building`` (a
        snapshot's: how far its build is; None for a finished index)."""
        kinds = dict(self.query("SELECT kind, COUNT(*) FROM files GROUP BY kind"))
        m = self.meta
        return {
            "path": str(self.root), "entries": self.entries, "photos": kinds.get("photo", 0), "videos": kinds.get("video", 0),
            "skipped": m.get("skipped", 0), "model": m["model"]["spec"], "layers": [l["name"] for l in self.layers],
            "units": int(self.units.shape[0]), "embedding_dim": int(self.embedding.shape[1]), "fps": m["fps"],
            "top_classes": m["top_classes"], "prob_floor": m["prob_floor"], "built": m.get("built"), "seconds": m.get("seconds"),
            "signals": list(self.signals), "notes": m.get("notes", {}),
            "complete": m.get("complete") is True, "building": self.building,
        }

    def __repr__(self) -> str:
        return f"IndexStore({str(self.root)!r}, entries={self.entries}{', building' if self.building else ''})"
