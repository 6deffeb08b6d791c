"""Queries over an index: a keyword, a photo like this one, a unit of the network; each result
says why it came.

* Keyword: the words map to ImageNet classes through WordNet (:mod:`convscope.vocab`); an
  entry's score is the sum of the classifier's probabilities of the matched classes, summed
  with one ``np.bincount`` over the inverted lists class -> (entry, probability) of those
  classes, so a query reads only the lists of its classes.
* Like: cosine of the embeddings, exact, in chunks over the memory map: a float16
  matrix-vector product per chunk finds the candidates, which are then ranked by the float32
  dot product (the float16 product is within 2e-3 of it, so the candidates within that margin
  of the k-th include the exact top k).
* Unit: the entries with the highest spatial maximum of one unit, the position of that
  maximum, and its receptive-field box on the model input (from the model's layer catalogue).

Frames of one video that match in a row merge into one segment: ``time`` its start, ``end``
its end, the score and the why of its best frame.

>>> store = IndexStore.open("photos.index")
>>> search(store, "dog", top=5)[0].to_json()
{'path': '/photos/rex.jpg', 'time': None, 'score': 0.97, 'why': [{'index': 207, 'label': 'golden retriever', ...}]}
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence, Tuple

import numpy as np

from ..choices import MIN_SCORE, SORTS
from ..errors import ArgumentError, ConvscopeError
from . import query as query_grammar
from . import terms
from .store import IndexStore
from .terms import Why, keyword_scores  # noqa: F401 (where they were first)

#: Float16 dot products are within this of the float32 ones for unit vectors (measured error
#: 4e-5 plus the float16 rounding of the result, 2.4e-4 near 1): candidates within it of the
#: k-th best are ranked again in float32.
_HALF_MARGIN = 2e-3
LIKE_CHUNK = 32768


@dataclasses.dataclass
class Result:
    """One hit. ``path``: the file; ``time``: seconds into a video (None for a photo), the start
    of a segment; ``end``: the segment's last matching frame time (None for a photo or a single
    frame); ``score``: keyword score (probability mass of the matched classes, 0..1), cosine
    (like) or the unit's activation (unit); ``why``: the matched classes (keyword only);
    ``entry``: the row of the best frame (for thumbnails and explanations); ``date``: its sort
    date (Unix seconds); for a unit result ``position``, the (y, x) of the maximum on the
    layer's map, and ``box``, its receptive field ``(top, left, bottom, right)`` on the model
    input."""

    path: str
    time: float | None
    score: float
    why: list[Why] = dataclasses.field(default_factory=list)
    end: float | None = None
    entry: int = -1
    date: float | None = None
    position: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    moment: dict | None = None

    def to_json(self) -> dict:
        """The JSON record: ``{"path", "time", "score", "why"}``, plus ``"end"`` for a video segment
        and ``"box"`` for a unit result."""
        out = {"path": self.path, "time": self.time, "score": round(float(self.score), 6), "why": [w.to_json() for w in self.why]}
        if self.end is not None:
            out["end"] = self.end
        if self.box is not None:
            out["box"] = list(self.box)
        if self.moment is not None:
            out["moment"] = self.moment
        return out


# --------------------------------------------------------------------------- shared steps


def _check_top(top: int) -> None:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ArgumentError(f"`top` must be a whole number of results, at least 1, got {top!r}", param="top")


def segments(store: IndexStore, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge consecutive matching frames of one video: ``rows`` (ascending) and their ``scores``
    -> (best row, best score, first row, last row) per segment; a photo is its own segment.

    Linear in ``len(rows)`` (no sort): a broad word matches most of a large index, and this runs
    on every match before the top ones are picked."""
    rows = np.asarray(rows)
    scores = np.asarray(scores, np.float64)
    if len(rows) == 0:
        empty = np.zeros(0, np.int64)
        return empty, np.zeros(0), empty, empty
    video = ~np.isnan(np.asarray(store.entry_time[rows]))
    if not video.any():  # photos only: every row is its own segment
        return rows, scores, rows, rows
    files = np.asarray(store.entry_file[rows])
    brk = np.ones(len(rows), bool)
    brk[1:] = (np.diff(rows) != 1) | (files[1:] != files[:-1]) | ~video[1:] | ~video[:-1]
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], len(rows)) - 1
    seg = np.cumsum(brk) - 1
    best_score = np.maximum.reduceat(scores, starts)
    # best frame of each segment: the highest score, the first on a tie
    at_best = np.flatnonzero(scores == best_score[seg])
    first_best = at_best[np.r_[True, seg[at_best][1:] != seg[at_best][:-1]]]
    return rows[first_best], best_score, rows[starts], rows[ends]


def _top_order(key: np.ndarray, tie: np.ndarray, top: int) -> np.ndarray:
    """Indices of the ``top`` largest ``key``, largest first, ties by smaller ``tie``: a
    partition picks the candidates, so only they are sorted."""
    if len(key) > top:
        kth = np.partition(key, len(key) - top)[len(key) - top]
        candidates = np.flatnonzero(key >= kth)
    else:
        candidates = np.arange(len(key))
    order = candidates[np.lexsort((tie[candidates], -key[candidates]))]
    return order[:top]


def _results(store: IndexStore, best, score, first, last, sort: str, top: int) -> list[Result]:
    if sort == "date":
        order = _top_order(np.asarray(store.entry_date[first], np.float64), first, top)  # newest first
    else:
        order = _top_order(np.asarray(score, np.float64), first, top)
    rows = [int(best[i]) for i in order]
    files = store.files([int(store.entry_file[r]) for r in rows])
    out = []
    for i in order:
        b, f, l = int(best[i]), int(first[i]), int(last[i])
        record = files[int(store.entry_file[b])]
        t0 = store.entry_time[f]
        time = None if math.isnan(t0) else float(t0)
        end = float(store.entry_time[l]) if time is not None and l != f else None
        out.append(Result(record["path"], time, float(score[i]), end=end, entry=b, date=float(store.entry_date[f])))
    return out


# --------------------------------------------------------------------------- keyword


def search(store: IndexStore, query: str, *, top: int = 20, min_score: float = MIN_SCORE, sort: str = "score",
           paths: Mapping[int, Sequence[str]] | None = None, words=None) -> list[Result]:
    """The entries that ``query`` (words as people type them, see ``docs/search.md`` and
    :mod:`.query`) matches, best first, each with every piece of evidence in its ``why``.

    Score: per alternative of the query, the product of its terms' scores (the probability
    mass of the classes a word names; 1 for a place or a time; the similarity of a recognized
    word), the best alternative's; a word of the network's evidence counts only at
    ``min_score`` or more. ``sort``: "score" (highest first) or "date" (newest first: EXIF
    date, else the file's mtime). ``paths``: the classes to match with their WordNet paths,
    instead of reading ``query``. ``words``: the everyday words
    (:class:`convscope.vocab.EverydayWords`; default: the shipped table). A word no vocabulary
    reads raises :class:`~convscope.errors.UnknownWordError` with close matches (on an index
    with text, only when its text holds nothing like it); a bad argument (a query with no
    word or too long, see :func:`.query.tokens`) :class:`~convscope.errors.ArgumentError` naming it.

    >>> [r.path for r in search(store, "cat", top=3)]
    ['/photos/chelsea.png', ...]
    >>> search(store, "beach 2015")[0].why[-1].to_json()["kind"]
    'time'
    """
    _check_top(top)
    if sort not in SORTS:
        raise ArgumentError(f"`sort` must be one of {', '.join(SORTS)}, got {sort!r}", param="sort")
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
        raise ArgumentError(f"`min_score` must be a probability between 0 and 1, got {min_score!r}", param="min_score")
    if paths is not None:
        plan = query_grammar.Plan(query, [[terms.ClassTerm(query, paths)]])
    else:
        plan = query_grammar.read(store, query, words=words)
    if any(t.network for alt in plan.alternatives for t in alt) and len(store.labels) != 1000:
        raise ConvscopeError(f"searching for what is in the photos needs a model of the 1,000 ImageNet classes; "
                             f"this index's model has {len(store.labels)} classes (places, times and text still work)")
    best = np.zeros(store.entries)
    chosen = np.full(store.entries, -1, np.int32)
    for k, alternative in enumerate(plan.alternatives):
        scores = np.ones(store.entries)
        for term in alternative:
            scores *= term.scores(store, min_score)
        better = scores > best
        best[better] = scores[better]
        chosen[better] = k
    rows = np.flatnonzero(best > 0)
    found, score, first, last = segments(store, rows, best[rows])
    results = _results(store, found, score, first, last, sort, top)
    for r in results:
        r.why = [w for term in plan.alternatives[chosen[r.entry]] for w in term.why(store, r.entry)]
    if not results:
        error = plan.nothing_found(store)
        if error is not None:
            raise error
    return one_per_moment(results)


def one_per_moment(results: list[Result]) -> list[Result]:
    """The results with the files of one moment (a Live Photo's still and its video, a RAW
    file and its JPEG: same folder, same name; :func:`.moments.moments`) as one: the best
    ranked, with ``moment`` ``{"kind", "files"}`` naming the others."""
    from .moments import moments

    grouped = [m for m in moments([r.path for r in results], read=None) if len(m.files) > 1]
    if not grouped:
        return results
    of = {str(f): m for m in grouped for f in m.files}
    out, seen = [], set()
    for r in results:
        m = of.get(str(Path(r.path)))
        if m is None:
            out.append(r)
        elif id(m) not in seen:
            seen.add(id(m))
            r.moment = {"kind": m.kind, "files": [str(f) for f in m.files]}
            out.append(r)
    return out


# --------------------------------------------------------------------------- like


def nearest(store: IndexStore, vector: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
            chunk: int = LIKE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` entries of highest cosine with ``vector`` (D,), exact: (rows, cosines), best
    first (ties: lower row first). ``exclude``: a boolean mask (N,) of rows left out. Memory: one
    chunk of ``chunk`` rows at a time."""
    import torch

    q = np.asarray(vector, np.float32).ravel()
    norm = float(np.linalg.norm(q))
    if q.shape[0] != store.embedding.shape[1] or not 0 < norm < math.inf:
        raise ArgumentError(f"a like query needs a non-zero, finite `vector` of {store.embedding.shape[1]} numbers, "
                            f"got shape {q.shape}", param="vector")
    q = q / norm
    q_half = torch.from_numpy(q).half()
    n, d = store.embedding.shape
    cand_rows, cand_sims = [], []
    kth = -np.inf
    for a in range(0, n, chunk):
        with warnings.catch_warnings():  # the memory map is read-only, and is only read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            block = torch.from_numpy(np.ascontiguousarray(store.embedding[a:a + chunk]))
        sims = (block.view(-1, d) @ q_half).float().numpy()
        if exclude is not None:
            sims[exclude[a:a + len(block)]] = -np.inf
        keep = np.flatnonzero(sims >= kth - _HALF_MARGIN)
        cand_rows.append(keep + a)
        cand_sims.append(sims[keep])
        merged = np.concatenate(cand_sims)
        if len(merged) > k:
            kth = max(kth, float(np.partition(merged, len(merged) - k)[len(merged) - k]))
            good = merged >= kth - _HALF_MARGIN
            cand_rows, cand_sims = [np.concatenate(cand_rows)[good]], [merged[good]]
    rows = np.concatenate(cand_rows) if cand_rows else np.zeros(0, np.int64)
    rows = rows[np.isfinite(np.concatenate(cand_sims))] if cand_rows else rows
    rows = np.sort(rows)
    exact = np.asarray(store.embedding[rows], np.float32) @ q  # the float32 ranking of the candidates
    order = np.lexsort((rows, -exact))[:k]
    return rows[order], exact[order]


def like(store: IndexStore, vector: np.ndarray, *, top: int = 20, min_score: float = -1.0,
         exclude_file: int | None = None) -> list[Result]:
    """The entries most like ``vector`` (an embedding, (D,)) by cosine, best first; consecutive
    frames of a video merge into a segment. ``exclude_file``: a file id left out (the query
    photo itself). ``why`` is empty.

    >>> like(store, store.embedding[0], top=5, exclude_file=int(store.entry_file[0]))
    """
    _check_top(top)
    exclude = None
    if exclude_file is not None:
        exclude = np.asarray(store.entry_file) == exclude_file
    rows, sims = nearest(store, vector, top * 4, exclude=exclude)  # room for frames that merge
    keep = sims >= min_score
    rows, sims = rows[keep], sims[keep].astype(np.float64)
    order = np.argsort(rows, kind="stable")
    best, score, first, last = segments(store, rows[order], sims[order])
    return _results(store, best, score, first, last, "score", top)


# --------------------------------------------------------------------------- unit


BoxFn = Callable[[int, int], Tuple[int, int, int, int]]


def unit(store: IndexStore, layer: str, index: int, *, top: int = 20, box: BoxFn | None = None) -> list[Result]:
    """The entries whose unit ``index`` of ``layer`` reaches the highest spatial maximum, best
    first; ``score``: the activation, ``position``: (y, x) of the maximum on the layer's map.
    ``box(y, x)``: the receptive field ``(top, left, bottom, right)`` of a position on the
    model input (``model.layers.get(layer).box``), stored in each result's ``box``. Frames
    are not merged (each has its own box).

    >>> unit(store, "blocks.4", 17, top=9, box=model.layers.get("blocks.4").box)[0].box
    (48, 80, 144, 176)
    """
    _check_top(top)
    column, width = unit_column(store, layer, index)
    values = np.asarray(store.units[column], np.float32)
    k = min(top, len(values))
    if k == 0:
        return []
    part = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    rows = part[np.lexsort((part, -values[part]))]
    results = _results(store, rows, values[rows].astype(np.float64), rows, rows, "score", top)
    for r in results:
        r.position, r.box = _place(store, column, width, r.entry, box)
    return results


def unit_at(store: IndexStore, layer: str, index: int, row: int, box: BoxFn | None = None
            ) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """Where unit ``index`` of ``layer`` reached its maximum on entry ``row``: (y, x) on the
    layer's map, and with ``box`` (as for :func:`unit`) its receptive field on the model input.

    >>> unit_at(store, "blocks.4", 17, 3, box=model.layers.get("blocks.4").box)
    ((2, 5), (48, 80, 144, 176))
    """
    column, width = unit_column(store, layer, index)
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)) or not 0 <= row < store.entries:
        raise ArgumentError(f"entry {row!r} is not in this index of {store.entries} entries; give a `row` "
                            f"from 0 to {store.entries - 1}", param="row")
    return _place(store, column, width, row, box)


def unit_column(store: IndexStore, layer: str, index) -> tuple[int, int]:
    """The column of unit ``index`` of ``layer`` in the unit arrays, and the layer's map width; an
    unknown layer (:class:`~convscope.errors.UnknownNameError`, close matches) or a unit out of
    the layer's range (:class:`~convscope.errors.ArgumentError`) raise one line."""
    info = store.layer(layer)
    channels, _, width = info["shape"]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < channels:
        raise ArgumentError(f"layer {layer!r} has units 0..{channels - 1}, got {index!r}", param="unit")
    return info["offset"] + int(index), width


def _place(store: IndexStore, column: int, width: int, row: int, box: BoxFn | None):
    position = divmod(int(store.unit_pos[column, row]), width)
    return position, (tuple(int(v) for v in box(*position)) if box is not None else None)
