"""Pairs of near vectors among many, in sub-quadratic time: what duplicates compare.

:func:`near_pairs` gives every pair of unit vectors with a cosine of at least ``cosine``:

- up to :data:`EXACT_LIMIT` vectors, all pairs, in blocks of matrix products (the exact answer;
  memory of one block);
- past it, candidates from an approximate index (faiss's inverted lists over the vectors
  projected on the :data:`REDUCED` principal axes of a sample, :data:`NEIGHBOURS` nearest per vector), each
  checked exactly on the full vectors: the pairs returned are exact, a pair is missed only
  where the approximate index did not propose it (recall against all pairs: ``bench/duplicates.py``).
  Work grows as ``N log N``-ish, memory as ``N`` (the reduced vectors and ``NEIGHBOURS`` ids each).

>>> i, j, cos = near_pairs(vectors, 0.8)     # i < j, float32 cosines
"""
from __future__ import annotations

import numpy as np

from ..errors import ConvscopeError
from ..progress import Bar

#: Up to this many vectors, all pairs are compared exactly (blocked); past it, faiss proposes.
EXACT_LIMIT = 20_000
#: Dimensions the approximate index keeps (PCA of a sample); the exact check uses all of them.
REDUCED = 64
#: Nearest neighbours proposed per vector (a group larger than this may lose pairs).
NEIGHBOURS = 16
#: Inverted lists searched per query, of about ``4 * sqrt(N)``.
PROBES = 24
#: Rows per block of products and of exact checks (bounded memory).
BLOCK = 2048


def unavailable() -> str | None:
    """Why the approximate index cannot run here (faiss missing), in one line; None if it can."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "the approximate index needs faiss (pip install faiss-cpu)"
    return None


def near_pairs(vectors, cosine: float, *, exact: bool | None = None, progress: bool | None = None,
               neighbours: int = NEIGHBOURS, worth=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, cos)`` (``i < j``; int64, int64, float32) of the rows of ``vectors`` (an
    (N, D) array of unit vectors, float16 or float32, memory-mapped is fine) whose cosine is at
    least ``cosine``. ``exact``: all pairs (True), the approximate index (False), or all pairs
    up to :data:`EXACT_LIMIT` rows (None). ``progress``: a progress bar (None: on a terminal).
    ``worth(i, j, approx)``: of the approximate index's candidates (``approx``: their cosine in
    the reduced space, an estimate), a mask of those worth the exact check (None: all); the
    exact check reads two full rows per candidate, the cost that grows with N."""
    n = len(vectors)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if exact is None:
        exact = n <= EXACT_LIMIT
    if not exact:
        reason = unavailable()
        if reason is not None:
            raise ConvscopeError(f"cannot compare {n:,} files in sub-quadratic time: {reason}")
    found = _all_pairs(vectors, cosine, progress) if exact else _approximate(vectors, cosine, neighbours, progress, worth)
    i = np.concatenate([f[0] for f in found]).astype(np.int64)
    j = np.concatenate([f[1] for f in found]).astype(np.int64)
    c = np.concatenate([f[2] for f in found]).astype(np.float32)
    if not exact:  # a pair proposed from both ends: once
        _, first = np.unique(i * n + j, return_index=True)
        i, j, c = i[first], j[first], c[first]
    return i, j, c


def _block(vectors, a: int, b: int) -> np.ndarray:
    return np.asarray(vectors[a:b], np.float32)


def _rows(vectors, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of ``vectors`` as float32, read in increasing order."""
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids), vectors.shape[1]), np.float32)
    out[order] = vectors[ids[order]]
    return out


def _all_pairs(vectors, cosine: float, progress) -> list:
    n, found = len(vectors), []
    with Bar(n, "comparing all pairs", disable=None if progress is None else not progress) as bar:
        for a in range(0, n, BLOCK):
            rows = _block(vectors, a, a + BLOCK)
            for b in range(a, n, BLOCK):
                sims = rows @ (rows if b == a else _block(vectors, b, b + BLOCK)).T
                ii, jj = np.nonzero(sims >= cosine)
                keep = (jj + b) > (ii + a)
                found.append((ii[keep] + a, jj[keep] + b, sims[ii[keep], jj[keep]]))
            bar.advance(len(rows))
    return found


def _approximate(vectors, cosine: float, k: int, progress, worth) -> list:
    import faiss

    n, dim = len(vectors), vectors.shape[1]
    rng = np.random.default_rng(0)
    lists = max(1, int(4 * np.sqrt(n)))
    # the principal axes of a sample (uncentred: inner products are kept, not distances to a mean)
    train = _rows(vectors, np.sort(rng.choice(n, min(n, 20_000), replace=False)))
    _, axes = np.linalg.eigh(train.T @ train)
    del train
    axes = np.ascontiguousarray(axes[:, ::-1][:, :min(REDUCED, dim)])
    out = axes.shape[1]
    reduced = np.zeros((n, out), np.float32)  # N x 64 float32: 256 MB at a million
    for a in range(0, n, BLOCK):
        reduced[a:a + BLOCK] = _block(vectors, a, a + BLOCK) @ axes
    # unit length again: the estimate is the cosine within the kept axes, which the part left
    # out (for near vectors, mostly what they share) does not pull down
    reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(out), out, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # (a sample of fewer than 39 per list: no warning, it is enough)
    index.cp.niter = 10  # (centres that split the space evenly enough: the exact check follows)
    index.train(reduced[np.sort(rng.choice(n, min(n, 16 * lists), replace=False))])  # 16 per list
    index.nprobe = min(PROBES, lists)
    index.add(reduced)
    found = []
    with Bar(n, "finding near pairs", disable=None if progress is None else not progress) as bar:
        for a in range(0, n, BLOCK * 8):
            q = reduced[a:a + BLOCK * 8]
            approx, ids = index.search(q, min(k + 1, n))
            rows = np.repeat(np.arange(a, a + len(q)), ids.shape[1])
            cols, approx = ids.ravel(), approx.ravel()
            keep = (cols >= 0) & (cols != rows)  # (-1: no more neighbours)
            rows, cols, approx = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep]), approx[keep]
            if worth is not None:
                keep = worth(rows, cols, approx)
                rows, cols = rows[keep], cols[keep]
            # the exact check: the cosine of the full vectors of each candidate pair
            sims = np.empty(len(cols), np.float32)
            for s in range(0, len(cols), BLOCK):  # rows read in order: a memory map pages in once
                r, c = rows[s:s + BLOCK], cols[s:s + BLOCK]
                sims[s:s + len(r)] = np.einsum("ij,ij->i", _rows(vectors, r), _rows(vectors, c))
            hit = sims >= cosine
            found.append((rows[hit], cols[hit], sims[hit]))
            bar.advance(len(q))
    return found


__all__ = ["EXACT_LIMIT", "NEIGHBOURS", "near_pairs", "unavailable"]
