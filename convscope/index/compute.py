"""The work of an index build, wherever it runs (this process, or a Ray actor: :mod:`.shards`):
decode the work items, forward them in the batches the plan fixed, append their rows in order.

A work item (:class:`Task`) is a photo, or a piece of a video's sampled frames. A decoding worker
reads each photo once (:func:`convscope.data.load_photo`: pixels at reduced scale, size, EXIF
date and sha256 from the same bytes) and hands every picture to the per-photo signals
(:data:`.signals.SIGNALS`); the forward pass (:class:`.features.Extractor`) then gives the
signals their model outputs, a batch at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..data import decode_in_workers, failure_reason, load_photo
from . import media
from .features import Extractor
from . import signals


@dataclasses.dataclass(frozen=True)
class Task:
    """One work item: a photo (``first`` = 0, ``stop`` = None) or the sampled frames
    ``first <= k < stop`` of a video (``stop`` None: to the end). ``last``: the file's final item."""

    file: int  # position in the plan
    path: str
    video: bool
    first: int = 0
    stop: int | None = None
    last: bool = True


@dataclasses.dataclass
class Source:
    """A file of the plan: its stat, and (for an update) the old index's record when unchanged."""

    path: str
    size: int
    mtime_ns: int
    video: bool
    keep: dict | None = None


@dataclasses.dataclass
class Decoded:
    """What a worker hands back for a task: model inputs and per-entry values (times, and the
    signals' :meth:`~.signals.Signal.entry`), the file's record columns (the signals'
    :meth:`~.signals.Signal.file`, with the first item of a file), or why it failed."""

    task: Task
    tensors: list[torch.Tensor]
    times: list[float | None]
    entries: list[dict]
    file: dict | None = None
    error: str | None = None


class Reader(torch.utils.data.Dataset):
    """Tasks -> :class:`Decoded`; never raises on a bad file (its one-line reason instead).
    ``names``: the signals that see each picture (None: all); ``transform`` None: no model
    inputs (an update running a new signal on files whose model outputs it keeps)."""

    def __init__(self, tasks: Sequence[Task], transform: Callable | None, fps: float, target_size: int | None,
                 names: Sequence[str] | None = None):
        self.tasks = list(tasks)
        self.transform = transform
        self.fps = fps
        self.target_size = target_size
        self.names = None if names is None else tuple(names)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Decoded:
        task = self.tasks[i]
        out = Decoded(task, [], [], [])
        try:
            if task.video:
                if task.first == 0:
                    info = dataclasses.replace(media.probe_video(task.path), sha256=media.sha256_file(task.path))
                    out.file = self._file_columns(info)
                for t, image in media.video_frames(task.path, self.fps, task.first, task.stop, target_size=self.target_size):
                    self._add(out, image, t)
            else:
                photo = load_photo(task.path, target_size=self.target_size)
                out.file = self._file_columns(photo)
                self._add(out, photo.image, None)
        except Exception as exc:  # noqa: BLE001 (failure_reason: one line for every failure)
            out.error = failure_reason(exc)
        return out

    def _add(self, out: Decoded, image, t: float | None) -> None:
        if self.transform is not None:
            out.tensors.append(self.transform(image))
        out.times.append(t)
        out.entries.append({k: v for signal in signals.chosen(self.names) for k, v in signal.entry(image).items()})

    def _file_columns(self, read) -> dict:
        return {k: v for signal in signals.chosen(self.names) for k, v in signal.file(read).items()}


def decode(tasks: Sequence[Task], transform, fps: float, target_size: int | None, workers: int,
           names: Sequence[str] | None = None) -> Iterator[Decoded]:
    """The tasks decoded in order by ``workers`` processes (0: here), for the signals ``names``."""
    return decode_in_workers(Reader(tasks, transform, fps, target_size, names), workers)


def signal_rows(features, entries: list[dict], names: Sequence[str] | None = None) -> dict:
    """The row arrays of a batch's entries, from every chosen signal."""
    return {k: v for signal in signals.chosen(names) for k, v in signal.rows(features, entries).items()}


def forward(extractor: Extractor, decoded: Iterable[Decoded], ends: Sequence[int],
            names: Sequence[str] | None = None) -> Iterator[tuple[Decoded, dict]]:
    """Each decoded item (its tensors dropped) with the rows of its entries
    (:func:`signal_rows` of the signals ``names``), the items between two ``ends`` forwarded as one batch."""
    group: list[Decoded] = []
    stops = iter(ends)
    stop = next(stops, None)
    for k, item in enumerate(decoded, 1):
        group.append(item)
        if k == stop:
            stop = next(stops, None)
            tensors = [t for it in group for t in it.tensors]
            entries = [e for it in group for e in it.entries]
            rows = signal_rows(extractor(torch.stack(tensors)), entries, names) if tensors else {}
            start = 0
            for it in group:
                n = len(it.tensors)
                yield dataclasses.replace(it, tensors=[]), {name: v[start:start + n] for name, v in rows.items()}
                start += n
            group = []


def write_rows(partial, sources: Sequence[Source], computed: Iterable[tuple[Decoded, dict]],
               ends: Sequence[int], skip, bar) -> None:
    """Append the computed items' rows to ``partial`` (the build's partial index) in order; a
    file's record is written once all its rows are. Commits come where a batch ends, so that a
    resumed build starts on a batch of the uninterrupted one; a video under way then (a long
    one) is committed with its rows so far and the next piece to read (``partial.open``), and
    a resumed build goes on from that piece."""
    open_files: dict[int, dict] = {}  # plan position -> record being filled
    ended: set[int] = set()  # files done with (finished, failed): their later pieces are ignored
    boundaries = set(ends)
    for k, (item, rows) in enumerate(computed, 1):
        if k - 1 in boundaries:
            partial.commit()
        task, src = item.task, sources[item.task.file]
        if task.file in ended:
            continue
        record = open_files.get(task.file)
        if record is None and src.path in partial.open:  # a video a resumed build goes on with
            record = open_files[task.file] = partial.open[src.path]["record"]
        if item.error is not None and record is None:  # the file could not be read at all: skip it
            skip(src.path, item.error)
            ended.add(task.file)
            bar.advance()
            continue
        # (a later piece of a video that failed: the frames read so far are kept)
        if record is None:
            record = {"id": partial.next_id, "path": src.path, "kind": "video" if src.video else "photo", "size": src.size,
                      "mtime_ns": src.mtime_ns, **(item.file or {}), "first_row": None, "rows": 0}
            partial.next_id += 1
            open_files[task.file] = record
        if item.times:
            if record["first_row"] is None:
                record["first_row"] = partial.rows
            partial.add_rows(record["id"], item.times, item.entries, rows)
            record["rows"] += len(item.times)
        if task.last or item.error is not None:
            ended.add(task.file)
            open_files.pop(task.file)
            partial.open.pop(src.path, None)
            if record["rows"] == 0:
                skip(src.path, item.error or "no frame could be decoded")
            else:
                partial.add_file(record)
            bar.advance()
        else:  # a piece of a video: what a commit now keeps of it
            partial.open[src.path] = {"record": dict(record), "next": task.stop}
