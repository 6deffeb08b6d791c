"""Per-entry sums of the stored class probabilities over blocks of consecutive classes, so that a
broad word is scored without reading all of its inverted lists.

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

#: Classes per block: 40 columns for 1,000 classes (160 bytes an entry, 6 percent of the
#: float16 embedding of the default model). Smaller blocks cover more of a query whole, but a
#: column costs a full pass over N numbers.
BLOCK = 25
FILE = "class_blocks.npy"


def write_class_blocks(arrays: Path, classes: int, n: int, rows: int = 65536) -> None:
    """Write ``class_blocks.npy`` (B, N) float32 into the arrays folder from its ``top_class`` and
    ``top_prob`` rows."""
    from .store import load_rows

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
