"""Build, resume and update an index: one pass over photos and videos, one forward pass each.

Files decode in DataLoader worker processes (a photo, or up to :data:`SEGMENT_FRAMES` sampled
frames of a video, per work item); the main process (or Ray's actors: :mod:`.shards`) runs the
model in batches fixed by the plan, and each per-photo signal (:mod:`.signals`) turns a photo
and its model outputs into rows: the database in ``.partial/`` and the arrays of the new
generation (``arrays-<gen>/``, which no committed database names yet), committed together where
a batch ends. A build that stops (a crash, Ctrl-C, SIGKILL) resumes from the last commit: the
arrays are cut back to the committed rows, and files already committed are not read again. The
finished index appears by the store-folder protocol of :mod:`convscope.stores`: every file
fsynced, the derived arrays included, then one atomic rename of its database.

``update=True`` compares the files with the index there: unchanged files (same size and mtime,
or same size and SHA-256) have their rows copied, new and changed files are computed, files
that are gone are dropped.

>>> build(load_model(), ["photos/", "clips/*.mp4"], "photos.index", fps=1.0)
>>> build(load_model(), ["photos/"], "photos.index", update=True)   # after adding files
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..data import default_workers
from ..errors import ConvscopeError, ImageError
from ..models import as_loaded
from ..progress import Bar
from ..files import disk_full_as_error
from ..stores import (State, check_folder, commit, fsync_file, fsync_tree, partial_dir, remove_partial, state,
                      writer_lock)
from . import media
from .compute import Source, Task, decode, forward, write_rows
from .features import Extractor, model_fingerprint
from . import concepts, signals
from .store import (DB_NAME, FORMAT, FORMAT_VERSION, PROB_FLOOR, SNAPSHOT_NAME, TOP_CLASSES, IndexStore, RowFile,
                    db_path, entry_columns, read_meta, read_path)

#: Sampled video frames decoded per work item: long videos are read in pieces of this many
#: frames (a worker seeks to the piece), so memory does not grow with a video's length.
SEGMENT_FRAMES = 16
#: Entries between commits of the partial build.
CHUNK = 256
#: How photos are decoded (a setting of the build: a build stopped under another decoder is not
#: resumed with this one, whose pixels differ). Indexes built before it was recorded read alike.
DECODER = "data.load_photo"


# --------------------------------------------------------------------------- work items


# --------------------------------------------------------------------------- the plan


def _plan(inputs: Iterable, old: IndexStore | None, skip: Callable[[str, str], None],
          settled: Callable[[str, os.stat_result], bool] | None = None) -> list[Source]:
    paths, missing = media.expand_media(inputs)
    for err in missing:
        skip(err.path, err.reason)
    old_files = {f["path"]: f for f in old.files().values()} if old is not None else {}
    sources = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as exc:
            skip(str(p), f"cannot read ({exc.strerror or type(exc).__name__})")
            continue
        was = old_files.get(str(p))
        if settled is not None and not settled(str(p), st):  # still being written: not read now
            if was is not None:  # kept as it was, its old size and time too: the next update computes it
                sources.append(Source(str(p), was["size"], was["mtime_ns"], media.is_video(p), keep=was))
            continue
        src = Source(str(p), st.st_size, st.st_mtime_ns, media.is_video(p))
        if was is not None and was["size"] == src.size:
            if was["mtime_ns"] == src.mtime_ns:
                src.keep = was
            else:  # touched, maybe not changed: the content decides
                with contextlib.suppress(OSError):
                    if media.sha256_file(p) == was["sha256"]:
                        src.keep = was
        sources.append(src)
    return sources


def _tasks(sources: Sequence[Source], todo: Sequence[int], fps: float, skip) -> list[Task]:
    tasks = []
    for i in todo:
        src = sources[i]
        if not src.video:
            tasks.append(Task(i, src.path, False))
            continue
        try:
            info = media.probe_video(src.path)
        except ImageError as exc:
            skip(src.path, exc.reason)
            continue
        # planned from the packets there (a frame serves at most one sample), never from what a
        # header claims: the work and the plan's memory follow the frames that exist
        samples = min(int(info.duration * fps) + 1 if info.duration else 1, max(1, info.frames))
        pieces = max(1, -(-samples // SEGMENT_FRAMES))
        for j in range(pieces):
            last = j == pieces - 1
            # the last piece reads to the end, whatever the header said about the duration
            tasks.append(Task(i, src.path, True, j * SEGMENT_FRAMES, None if last else (j + 1) * SEGMENT_FRAMES, last))
    return tasks


# --------------------------------------------------------------------------- the partial build


class _Partial:
    """The database in ``.partial/`` and the growing arrays of the signals (in the new
    ``arrays-<gen>/``); ``rows`` entries committed or pending."""

    def __init__(self, root: Path, settings: dict, extractor: Extractor, resume: bool):
        self.dir = partial_dir(root)
        db = self.dir / DB_NAME
        fresh = not (resume and _begun(db))
        if fresh:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir(parents=True)
        self.conn = sqlite3.connect(db)
        self.conn.execute("PRAGMA synchronous = FULL")
        self.names = tuple(settings["signals"])
        if fresh:
            self.conn.executescript(signals.schema(self.names))
            settings = {**settings, "arrays": f"arrays-{uuid.uuid4().hex[:12]}", "complete": False}
            self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()])
            self.conn.commit()
        self.meta = read_meta(self.conn)
        if not fresh:
            for key, value in settings.items():
                if key in ("inputs", "built"):
                    continue
                if self.meta.get(key) != value:
                    raise ConvscopeError(f"the unfinished build in {root} was started with a different {key} "
                                         f"({self.meta.get(key)!r}, now {value!r}); resume it with the same settings, or remove {self.dir}")
        self.arrays = root / self.meta["arrays"]
        if fresh:
            shutil.rmtree(self.arrays, ignore_errors=True)
        self.arrays.mkdir(exist_ok=True)
        shapes = {name: shape for signal in signals.chosen(self.names) for name, shape in signal.arrays(extractor).items()}
        self.files = {name: RowFile(self.arrays / f"{name}.npy", dtype, row) for name, (dtype, row) in shapes.items()}
        # videos under way at the last commit: their records so far and the next piece to read
        self.open: dict[str, dict] = self.meta.get("open") or {}
        # committed rows: those of the committed files and of the videos under way
        self.rows = int(self.conn.execute("SELECT COALESCE(SUM(rows), 0) FROM files").fetchone()[0]) \
            + sum(v["record"]["rows"] for v in self.open.values())
        self.conn.execute("DELETE FROM entries WHERE row >= ?", (self.rows,))
        for table in self._tables():
            self.conn.execute(f"DELETE FROM {table} WHERE row >= ?", (self.rows,))
        self.conn.commit()
        for f in self.files.values():
            if f.rows < self.rows:
                raise ConvscopeError(f"the unfinished build in {root} lost array rows ({f.path.name} holds {f.rows}, "
                                     f"the database {self.rows}); remove {self.dir} and build again")
            f.truncate(self.rows)
        self.done = {read_path(r[0]) for r in self.conn.execute("SELECT path FROM files")}
        self.publisher: _Snapshots | None = None  # with ``snapshots``: publishes after a commit when due
        self.next_id = max([int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM files").fetchone()[0])]
                           + [v["record"]["id"] for v in self.open.values()]) + 1
        self.pending = 0

    def _tables(self) -> list[str]:
        """The signals' own tables (each keyed by the entry ``row``)."""
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
                                                "('meta', 'files', 'entries', 'skipped', 'concepts', 'concept_examples') "
                                                "AND name NOT LIKE 'sqlite_%'")]

    def add_rows(self, file_id: int, times: Sequence[float | None], entries: Sequence[dict],
                 arrays: dict[str, np.ndarray], copied: tuple[IndexStore, int] | None = None,
                 names: Sequence[str] | None = None) -> None:
        """Append entries: their video ``times``, the signals' per-entry values and row arrays.
        ``names``: the signals whose per-entry values ``entries`` hold (None: all); ``copied``:
        (the old index, the first of its rows) these entries are, whose tables the other
        signals copy (where the old index has them)."""
        n = len(times)
        for name, f in self.files.items():
            f.append(arrays[name])
        rows = range(self.rows, self.rows + n)
        self.conn.executemany("INSERT INTO entries VALUES (?, ?, ?)", [(r, file_id, t) for r, t in zip(rows, times)])
        for signal in signals.chosen(self.names):
            if names is None or signal.name in names:
                signal.insert(self.conn, rows, list(entries))
            elif copied is not None and signal.name in copied[0].signals:
                old, a = copied
                signal.copy(old.db, self.conn, a, a + n, self.rows)
        self.rows += n
        self.pending += n

    def add_file(self, record: dict) -> None:
        cols = ", ".join(record)
        values = [db_path(v) if k == "path" else v for k, v in record.items()]
        self.conn.execute(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(record))})", values)
        self.done.add(record["path"])

    def skip(self, path: str, reason: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?)", (db_path(path), reason))

    def commit(self, force: bool = False) -> None:
        """Commit the rows so far where ``CHUNK`` entries wait (or ``force``), or where a snapshot
        is due (then publish it): called where a batch ends, so that a resumed build starts on a
        batch of the uninterrupted one."""
        publish = self.publisher is not None and self.publisher.due(self)
        if not (force or publish) and self.pending < CHUNK:
            return
        for f in self.files.values():  # arrays first: the database never counts rows not on disk
            f.commit()
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('open', ?)", (json.dumps(self.open),))
        self.conn.commit()
        self.pending = 0
        if publish:
            self.publisher.publish(self)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.conn.close()


class _Snapshots:
    """The snapshots of a build with ``snapshots=True``: after a commit, a copy of the partial
    database (SQLite's backup of the committed state) cut to the files whose rows are all there,
    marked ``complete`` false with how far the build is (``building``), written beside it and
    renamed over the last one (:data:`~convscope.index.store.SNAPSHOT_NAME`), so a reader sees
    one whole snapshot or the next. Its rows' arrays are the build's own growing files, read up
    to its rows. The first commit with files is published at once, then at most one per
    ``every`` seconds or four times the time the last one took, whichever is longer."""

    def __init__(self, files: int, videos: int, classes: int, every: float = 3.0):
        self.files, self.videos, self.classes, self.every = files, videos, classes, every
        self._next = 0.0
        self._seen = -1  # files indexed at the last snapshot
        self.published = 0

    def due(self, partial: _Partial) -> bool:
        return time.monotonic() >= self._next and len(partial.done) not in (self._seen, 0)

    def publish(self, partial: _Partial) -> None:
        begun = time.monotonic()
        final = partial.dir / SNAPSHOT_NAME
        tmp = final.with_name(SNAPSHOT_NAME + ".writing")
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):  # of a killed run: never replayed into this one
            leftover.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(tmp)) as conn:
            partial.conn.backup(conn)
            files, rows = conn.execute("SELECT COUNT(*), COALESCE(SUM(rows), 0) FROM files").fetchone()
            skipped = int(conn.execute("SELECT COUNT(*) FROM skipped").fetchone()[0])
            for table in ("entries", *partial._tables()):  # the frames of a video under way
                conn.execute(f"DELETE FROM {table} WHERE row >= ?", (rows,))
            building = {"files_done": min(self.files, files + skipped), "files": self.files, "videos": self.videos,
                        "entries": rows, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            conn.execute("DELETE FROM meta WHERE key = 'open'")
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in {
                "complete": False, "entries": rows, "files": files, "skipped": skipped, "classes": self.classes,
                "building": building}.items()])
            conn.commit()
        fsync_file(tmp)
        os.replace(tmp, final)
        self._seen = len(partial.done)
        self.published += 1
        self._next = time.monotonic() + max(self.every, 4 * (time.monotonic() - begun))


def _begun(db: Path) -> bool:
    """Whether a partial database holds its settings: a build whose disk filled up before they
    were committed has nothing to resume, and starts again."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT 1 FROM meta WHERE key = 'format'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False


# --------------------------------------------------------------------------- the build


def check_out(out: str | os.PathLike, *, update: bool, resume: bool) -> None:
    """Refuse (:class:`~convscope.errors.FolderInUseError`) a folder ``out`` that a build with
    these ``update`` and ``resume`` may not use; :func:`build` asks first, and so may a caller
    before it loads a model."""
    held = state(out, DB_NAME)
    check_folder(out, DB_NAME, kind="index", resume=resume, reuse=update,
                 reuse_hint="give `update=True` to add new and changed files",
                 resume_hint=("give `update=True` with " if held.committed else "give ")
                 + f"`resume=True` (and the same `inputs`) to continue it, or remove {partial_dir(out)}")


def _prepare(out: Path, update: bool, resume: bool) -> State:
    """Check what ``out`` holds against what was asked; returns its state."""
    check_out(out, update=update, resume=resume)
    held = state(out, DB_NAME)
    if held is State.COMPLETE:
        remove_partial(out)  # what a build stopped after its commit, before cleaning up, left
    return held


def build(model, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *, fps: float = 1.0, update: bool = False,
          resume: bool = False, batch_size: int = 32, workers: int | None = None,
          on_skip: Callable[[str, str], None] | None = None, progress: bool | None = None, draft: bool = True,
          layers: Sequence[str] | None = None, ray=None, ray_workers: int | None = None, text: bool | None = None,
          on_note: Callable[[str], None] | None = None,
          settled: Callable[[str, os.stat_result], bool] | None = None, snapshots: bool = False) -> Path:
    """Index ``inputs`` (files, folders, globs, ``@LIST``; photos and videos) into the folder ``out``.

    ``fps``: video frames sampled per second of video. ``update``: refresh an existing index
    (new and changed files computed, unchanged ones copied, missing ones dropped); ``inputs``
    None then means the inputs it was built from. ``resume``: continue a build that stopped.
    ``batch_size``: model inputs per forward pass; ``workers``: decoding processes (default:
    none for under 16 files, else up to 4). ``on_skip(path, reason)`` is called once per file
    that cannot be read (it is skipped and counted). ``draft``: photos decode at reduced scale
    (:func:`convscope.data.load_photo`'s ``target_size``) where the result still covers the
    model's resize and every signal's need (:func:`.signals.decode_size`). ``layers``: the layers kept for
    unit search (default: the catalogue's default selection). ``ray``: compute on a Ray cluster
    (True: a local Ray, or the one this process joined; ``"auto"`` or ``"HOST:PORT"``: that
    cluster; or a running :class:`convscope.distributed.Pool`) with ``ray_workers`` actors
    (default: one per GPU, else one per node): the same records, vectors and thumbnails as one
    process (:mod:`.shards`), ``workers`` then counting decoding processes per actor. ``text``:
    recognize text in photos (True; False: not; None: where the OCR engine is installed).
    ``on_note(line)`` is called once for each signal that runs with less here (place names
    without the gazetteer package). ``settled(path, stat)``: False for a file still being written
    (:mod:`.watch`): it is not read now; an indexed one keeps its rows and its old record, so
    that the next update computes it. ``snapshots``: while a new build (not an update) runs,
    publish what it holds so far, which :meth:`IndexStore.open(out, building=True)
    <convscope.index.store.IndexStore.open>` reads (after the first batch, then every few
    seconds; a crash leaves the last one readable). Returns ``out``.

    >>> build(load_model(), ["photos/"], "photos.index")
    PosixPath('photos.index')
    """
    started = time.time()
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number of video frames per second, got {fps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    out = Path(out)
    model = as_loaded(model)
    names = signals.choose({} if text is None else {"text": text})
    for signal in signals.chosen(names):
        line = signal.warning()
        if line and on_note is not None:
            on_note(line)
    check_out(out, update=update, resume=resume)  # (a file as `out` is refused before the lock makes a folder)
    # One writer at a time; a full disk stops the build with one line, every commit so far whole.
    # (SQLite's "database or disk is full" names no file: the partial database is the one written)
    with writer_lock(out, kind="index"), disk_full_as_error(partial_dir(out) / DB_NAME, _disk_full_hint(update)):
        return _build(model, inputs, out, fps, update, resume, batch_size, workers, on_skip, progress, draft, layers,
                      ray, ray_workers, names, started, settled, snapshots)


def _disk_full_hint(update: bool) -> str:
    return "free some space and run again with " + ("`update=True` and `resume=True`" if update else "`resume=True`")


def _build(model, inputs, out: Path, fps, update, resume, batch_size, workers, on_skip, progress, draft, layers, ray,
           ray_workers, names, started, settled=None, snapshots=False) -> Path:
    """:func:`build`'s steps, its arguments checked, holding the folder's writer lock."""
    held = _prepare(out, update, resume)
    if resume and not update and held is State.COMPLETE:
        return out  # finished already
    old = IndexStore.open(out) if update and held.committed else None
    if inputs is None:
        if old is None:
            raise ValueError("give the photos and videos to index (inputs is None, and there is no index to update)")
        inputs = old.meta["inputs"]
    inputs = [os.fspath(i) for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    extractor = Extractor(model, layers)
    settings = json.loads(json.dumps(_settings(model, extractor, fps, draft, inputs, names)))  # as the database holds them
    if old is not None:
        _check_compatible(old, settings, out)
    out.mkdir(parents=True, exist_ok=True)
    partial = _Partial(out, settings, extractor, resume)
    skipped: list[tuple[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append((str(path), reason))
        partial.skip(str(path), reason)
        if on_skip is not None:
            on_skip(str(path), reason)

    try:
        sources = _plan(inputs, old, skip, settled)
        if snapshots and old is None:  # (an update serves its committed index meanwhile)
            classes = len(model.labels) if model.labels else extractor.classes  # as the class signal counts them
            partial.publisher = _Snapshots(len(sources) + len(skipped), sum(s.video for s in sources), classes)
        if old is not None and any(signal.arrays(extractor) and signal.needs_model for signal in signals.chosen(names)
                                   if signal.name not in old.signals):
            for src in sources:  # a signal of the model's outputs that the old index lacks: run the model again
                src.keep = None
        copy = [i for i, s in enumerate(sources) if s.keep is not None and s.path not in partial.done]
        todo = [i for i, s in enumerate(sources) if s.keep is None and s.path not in partial.done]
        target_size = signals.decode_size(model.preprocessing.resize, names) if draft else None
        with Bar(len(copy) + len(todo), "indexing", disable=None if progress is None else not progress) as bar:
            _copy_files(partial, old, sources, copy, fps, target_size, workers, bar)
            partial.commit(force=True)
            # the batches of the whole plan, less the files a resumed build has: the same batches
            # as an uninterrupted build (it committed only where a batch ended)
            computed = [i for i, s in enumerate(sources) if s.keep is None]
            unplayable = lambda path, reason: (skip(path, reason), bar.advance())  # noqa: E731 (a video)
            tasks, ends = _without(*_tasks_and_ends(sources, computed, fps, batch_size, unplayable), partial.done,
                                   partial.open)
            if ray and tasks:
                from ..distributed import ray_index

                rows = ray_index.forward(ray, ray_workers, extractor, tasks, ends, fps, target_size, workers, signals=names)
                write_rows(partial, sources, rows, ends, skip, bar)
            elif tasks:
                decoded = decode(tasks, model.transform, fps, target_size,
                                 default_workers(len(tasks)) if workers is None else max(0, workers), names)
                write_rows(partial, sources, forward(extractor, decoded, ends, names), ends, skip, bar)
        partial.publisher = None  # the last commit: finished next, no snapshot
        partial.commit(force=True)
        _finalize(out, partial, extractor, time.time() - started, old)
    finally:
        partial.close()
        if old is not None:
            old.close()
    _cleanup(out)
    return out


def _settings(model, extractor: Extractor, fps: float, draft: bool, inputs: list[str], names: Sequence[str]) -> dict:
    layers = [{"name": name, "offset": extractor.unit_offsets[name], "shape": list(extractor.layer_shapes[name])}
              for name in extractor.layers]
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "model": {"spec": model.spec, "weights": model.weights, "fingerprint": model_fingerprint(model)},
        "preprocessing": model.preprocessing.to_dict(), "labels": list(model.labels), "layers": layers,
        "head": extractor.head, "embedding_dim": extractor.dim, "fps": float(fps), "draft": bool(draft), "decoder": DECODER,
        "top_classes": TOP_CLASSES, "prob_floor": PROB_FLOOR, "inputs": [os.path.abspath(i) if not i.startswith("@") else i for i in inputs],
        "signals": list(names),
    }


def _check_compatible(old: IndexStore, settings: dict, out: Path) -> None:
    for key in ("model", "layers", "fps", "draft", "top_classes", "prob_floor"):
        if old.meta.get(key) != settings[key]:
            what = "model weights" if key == "model" else key
            raise ConvscopeError(f"the index in {out} was built with a different {what} ({old.meta.get(key)!r:.80}); "
                                 "an update must use the same settings: build a new index instead")


def _copy_files(partial: _Partial, old: IndexStore | None, sources: Sequence[Source], copy: Sequence[int], fps: float,
                target_size: int | None, workers: int | None, bar) -> None:
    """Copy the unchanged files' rows from the old index; the signals it lacks (an index built
    before them) run on those files, decoded again but not run through the model."""
    if not copy:
        return
    missing = tuple(name for name in partial.names if name not in old.signals)
    if not missing:
        for i in copy:
            _copy_file(partial, old, sources[i])
            bar.advance()
        return
    tasks = _tasks(sources, copy, fps, lambda path, reason: None)  # (an unplayable video: copied without them)
    decoded = decode(tasks, None, fps, target_size, default_workers(len(tasks)) if workers is None else max(0, workers),
                     missing)
    found: dict[int, dict] = {}
    for item in decoded:
        got = found.setdefault(item.task.file, {"columns": {}, "entries": [], "ended": False})
        if got["ended"]:
            continue
        got["columns"].update(item.file or {})
        got["entries"] += item.entries
        got["ended"] = item.task.last or item.error is not None
    for i in copy:
        got = found.get(i)
        if got is None or not got["entries"]:  # unreadable now: copied as it was, without the new signals
            _copy_file(partial, old, sources[i])
        else:
            _copy_file(partial, old, sources[i], got["columns"], got["entries"], missing)
        bar.advance()


def _copy_file(partial: _Partial, old: IndexStore, src: Source, columns: dict | None = None,
               entries: list[dict] | None = None, names: Sequence[str] = ()) -> None:
    """Copy an unchanged file's rows from the old index (the model is not run); ``names``: the
    signals that ran on it again, their file ``columns`` and per-entry values ``entries``."""
    was = src.keep
    a, b = was["first_row"], was["first_row"] + was["rows"]
    file_id = partial.next_id
    partial.next_id += 1
    times = [r["time"] for r in old.query("SELECT time FROM entries WHERE row >= ? AND row < ? ORDER BY row", [a, b])]
    kept = [signal for signal in signals.chosen(partial.names) if signal.name in old.signals]
    arrays = {k: v for signal in kept for k, v in signal.stored(old, a, b).items()}
    entries = ((entries or []) + [{}] * (b - a))[:b - a]  # (a video whose frames read differently now)
    # the row arrays of a signal the old index lacks that needs no model output: from the entries
    # decoded again (a signal's ``rows`` fills what a file unreadable now left empty)
    added = [s for s in signals.chosen(partial.names) if s.name not in old.signals and not s.needs_model]
    arrays.update({k: v for signal in added for k, v in signal.rows(None, entries).items()})
    first = partial.rows
    partial.add_rows(file_id, times, entries, arrays, copied=(old, a), names=names)
    record = {"kind": was["kind"], **{k: was[k] for signal in kept for k in signal.columns}, **(columns or {})}
    partial.add_file({"id": file_id, "path": src.path, "size": src.size, "mtime_ns": src.mtime_ns, **record,
                      "first_row": first, "rows": b - a})
    partial.commit()


def _tasks_and_ends(sources: Sequence[Source], todo: Sequence[int], fps: float, batch_size: int,
                    skip) -> tuple[list[Task], list[int]]:
    """The work items of ``todo`` and where the batches end (task positions, exclusive): each
    batch holds the entries of a run of whole tasks, about ``batch_size`` entries (a photo counts
    one, a video piece its frames). Fixed by the plan before anything is decoded, so that a
    shard of whole batches forwards, wherever it runs, the very batches one process does (the
    numbers of a kernel can depend on the batch): the same bytes."""
    tasks = _tasks(sources, todo, fps, skip)
    ends, size = [], 0
    for k, task in enumerate(tasks):
        size += 1 if not task.video else (task.stop - task.first if task.stop is not None else SEGMENT_FRAMES)
        if size >= batch_size or k + 1 == len(tasks):
            ends.append(k + 1)
            size = 0
    return tasks, ends


def _without(tasks: Sequence[Task], ends: Sequence[int], done: set[str],
             opened: dict[str, dict]) -> tuple[list[Task], list[int]]:
    """The tasks of files not in ``done``, less the pieces of the videos under way (``opened``)
    that were read already; each batch keeps its place (an empty one goes)."""
    kept, kept_ends, start = [], [], 0
    for end in ends:
        kept.extend(t for t in tasks[start:end] if t.path not in done and t.first >= opened.get(t.path, {}).get("next", 0))
        if kept and (not kept_ends or kept_ends[-1] != len(kept)):
            kept_ends.append(len(kept))
        start = end
    return kept, kept_ends


# --------------------------------------------------------------------------- finishing


def _finalize(out: Path, partial: _Partial, extractor: Extractor, seconds: float, old: IndexStore | None) -> None:
    """Write the derived arrays (the entries' and the signals'), carry the ``old`` index's taught
    concepts over, mark the database complete, fsync every file, and commit: one rename of the
    database into place."""
    conn, arrays, n = partial.conn, partial.arrays, partial.rows
    # no snapshot from here on: the row arrays a snapshot reads are turned into the final ones
    (partial.dir / SNAPSHOT_NAME).unlink(missing_ok=True)
    for f in partial.files.values():
        f.close()
    files = int(conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])
    file_col, time_col, date_col = entry_columns(conn, n)
    np.save(arrays / "entry_file.npy", file_col)
    np.save(arrays / "entry_time.npy", time_col)
    np.save(arrays / "entry_date.npy", date_col)
    for signal in signals.chosen(partial.names):
        signal.finish(arrays, n, extractor)
    conn.execute("DELETE FROM meta WHERE key = 'open'")  # (a partial build's record of videos under way)
    if old is not None:  # the same model (an update requires it): the concepts' weights hold as they are
        concepts.copy(old.db, conn)
    skipped = int(conn.execute("SELECT COUNT(*) FROM skipped").fetchone()[0])
    notes = {}
    for signal in signals.chosen(partial.names):
        notes.update(signal.notes(conn))
    done = {"entries": n, "files": files, "skipped": skipped, "complete": True, "notes": notes,
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seconds": round(seconds, 3)}
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in done.items()])
    conn.commit()
    conn.close()
    fsync_tree(arrays)
    fsync_file(partial.dir / DB_NAME)
    commit(partial.dir / DB_NAME, out / DB_NAME)  # the commit point: the index is complete from here on


def _cleanup(out: Path) -> None:
    """Remove ``.partial`` and the arrays of earlier versions of the index."""
    with sqlite3.connect(f"file:{(out / DB_NAME).resolve()}?mode=ro", uri=True) as conn:
        current = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'arrays'").fetchone()[0])
    conn.close()
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith("arrays-") and p.name != current:
            shutil.rmtree(p, ignore_errors=True)
    remove_partial(out)
