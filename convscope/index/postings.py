"""The keyword side of an index: the inverted lists class -> (entry, probability), and per-entry
sums of the stored probabilities over blocks of consecutive classes, so that a broad word is
scored without reading all of its inverted lists.

A keyword's score sums, per entry, the stored probabilities of its classes (:mod:`.search`). A
word like "animal" names 398 classes, whose inverted lists hold some 5.6 million postings in an
index of a million photos, and gathering them costs about 75 ms on 2 cores. ImageNet's classes
are numbered in the order of their WordNet ids, so the classes of a broad word come in long runs
of consecutive numbers (the 398 animals are classes 0-397, the 118 dogs 151-268). This module
stores, for every block of :data:`BLOCK` consecutive classes, the sum of each entry's stored
probabilities of those classes: one float32 column (N,) per block, ``class_blocks.npy`` (B, N).
A query uses the column of every block it covers whole and the inverted lists of its other
classes; "animal" then reads 15 columns and 23 lists.

The sums are exact: every stored probability is a float16 of at least 0.001 (``PROB_FLOOR``),
a multiple of 2**-20, and a sum of such numbers below 2 is exact in float32 and float64, in any
order. So scores with and without the blocks are the same numbers, bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import load_rows

#: Classes per block: 40 columns for 1,000 classes (160 bytes an entry, 6 percent of the
#: float16 embedding of the default model). Smaller blocks cover more of a query whole, but a
#: column costs a full pass over N numbers.
BLOCK = 25
FILE = "class_blocks.npy"


def write_class_blocks(arrays: Path, classes: int, n: int, rows: int = 65536) -> None:
    """Write ``class_blocks.npy`` (B, N) float32 into the arrays folder from its ``top_class`` and
    ``top_prob`` rows."""
    blocks = -(-classes // BLOCK)
    top_class, top_prob = load_rows(arrays / "top_class.npy"), load_rows(arrays / "top_prob.npy")
    out = np.lib.format.open_memmap(arrays / FILE, mode="w+", dtype=np.float32, shape=(blocks, n)) if n else None
    for a in range(0, n, rows):
        c = np.asarray(top_class[a:a + rows]).astype(np.int64)
        p = np.asarray(top_prob[a:a + rows]).astype(np.float64)
        m = len(c)
        keep = c >= 0
        key = (np.arange(m)[:, None] * blocks + c // BLOCK)[keep]  # entry-major: (entry, block)
        sums = np.bincount(key, weights=p[keep], minlength=m * blocks).reshape(m, blocks)
        out[:, a:a + m] = sums.T.astype(np.float32)
    if out is None:
        np.save(arrays / FILE, np.zeros((blocks, 0), np.float32))
    else:
        out.flush()


def gather(offsets: np.ndarray, entry: np.ndarray, prob: np.ndarray, classes, *,
           positions: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The postings of ``classes`` (class ids, each once): their entries (int32), probabilities
    (float64) and, with ``positions``, for each the position of its class in ``classes`` (else
    None); read in runs of consecutive inverted lists (one slice for lists that follow each other)."""
    count = len(offsets) - 1
    wanted = [(int(c), i) for i, c in enumerate(classes) if 0 <= int(c) < count]
    wanted.sort()
    runs: list[list[int]] = []
    which: list[np.ndarray] = []
    for c, i in wanted:
        a, b = int(offsets[c]), int(offsets[c + 1])
        if b == a:
            continue
        if positions:
            which.append(np.full(b - a, i, np.int64))
        if runs and runs[-1][1] == a:  # the next class's list follows: one slice
            runs[-1][1] = b
        else:
            runs.append([a, b])
    if not runs:
        return np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int64) if positions else None
    return (np.concatenate([entry[a:b] for a, b in runs]), np.concatenate([prob[a:b] for a, b in runs]).astype(np.float64),
            np.concatenate(which) if positions else None)


def split(classes, count: int) -> tuple[list[int], list[int]]:
    """``classes`` (of ``count`` in all) -> (the blocks they cover whole, their classes outside
    those blocks), both ascending. The last block may be short: it is whole when all of its
    classes are there."""
    blocks = -(-count // BLOCK)
    chosen = np.zeros(blocks * BLOCK, bool)
    chosen[count:] = True
    wanted = sorted({int(c) for c in classes if 0 <= int(c) < count})
    chosen[wanted] = True
    whole = np.flatnonzero(chosen.reshape(blocks, BLOCK).all(axis=1)).tolist()
    inside = set()
    for b in whole:
        inside.update(range(b * BLOCK, (b + 1) * BLOCK))
    return whole, [c for c in wanted if c not in inside]


def _offsets(top_class, classes: int, n: int, block: int) -> np.ndarray:
    """Where each class's list starts in the inverted lists, and their end: (classes + 1,)."""
    counts = np.zeros(classes, np.int64)
    for a in range(0, n, block):
        c = np.asarray(top_class[a:a + block]).ravel()
        counts += np.bincount(c[c >= 0], minlength=classes)[:classes]
    offsets = np.zeros(classes + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def _fill(top_class, top_prob, offsets: np.ndarray, entry, prob, n: int, block: int) -> None:
    """Write each entry's classes into the inverted lists ``entry``, ``prob`` (by class, entries
    ascending within it), ``block`` entries at a time."""
    classes = len(offsets) - 1
    cursor = offsets[:-1].copy()
    for a in range(0, n, block):
        c = np.asarray(top_class[a:a + block])
        rows = np.broadcast_to(np.arange(a, a + len(c), dtype=np.int32)[:, None], c.shape).ravel()
        p, c = np.asarray(top_prob[a:a + block]).ravel(), c.ravel()
        keep = c >= 0
        c, rows, p = c[keep], rows[keep], p[keep]
        order = np.argsort(c, kind="stable")  # by class, rows ascending within it
        c, rows, p = c[order], rows[order], p[order]
        first = np.searchsorted(c, np.arange(classes))
        place = cursor[c] + (np.arange(len(c)) - first[c])
        entry[place] = rows
        prob[place] = p
        cursor += np.bincount(c, minlength=classes)[:classes]


def inverted_lists(top_class, top_prob, classes: int, block: int = 65536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverted lists of the rows ``top_class`` (N, K) and ``top_prob`` (N, K), in memory:
    (``post_offsets``, ``post_entry``, ``post_prob``) as :func:`write_postings` writes them. A
    snapshot of a build in progress reads its lists so (:class:`~convscope.index.store.IndexStore`)."""
    n = len(top_class)
    offsets = _offsets(top_class, classes, n, block)
    entry, prob = np.zeros(int(offsets[-1]), np.int32), np.zeros(int(offsets[-1]), np.float16)
    _fill(top_class, top_prob, offsets, entry, prob, n, block)
    return offsets, entry, prob


def write_postings(arrays: Path, classes: int, n: int, block: int = 65536) -> None:
    """Write the inverted lists class -> (entry, probability), entries ascending within a class
    (``post_offsets``, ``post_entry``, ``post_prob``), and the class blocks, from the arrays
    folder's ``top_class`` and ``top_prob`` rows."""
    top_class, top_prob = load_rows(arrays / "top_class.npy"), load_rows(arrays / "top_prob.npy")
    offsets = _offsets(top_class, classes, n, block)
    total = int(offsets[-1])
    entry = np.lib.format.open_memmap(arrays / "post_entry.npy", mode="w+", dtype=np.int32, shape=(total,)) if total else np.zeros(0, np.int32)
    prob = np.lib.format.open_memmap(arrays / "post_prob.npy", mode="w+", dtype=np.float16, shape=(total,)) if total else np.zeros(0, np.float16)
    _fill(top_class, top_prob, offsets, entry, prob, n, block)
    if total:
        entry.flush()
        prob.flush()
    else:
        np.save(arrays / "post_entry.npy", entry)
        np.save(arrays / "post_prob.npy", prob)
    np.save(arrays / "post_offsets.npy", offsets)
    write_class_blocks(arrays, classes, n)
