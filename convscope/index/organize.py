"""Organize an index: groups of near-duplicate files, and albums.

* Duplicates: files with the same SHA-256 first; then files whose embeddings have a cosine of
  at least :data:`DUPLICATE_COSINE` (a photo's embedding; a video's mean frame embedding),
  joined transitively (union-find). All pairs are compared, in blocks of float16 products:
  O(files^2) work, seconds for ten thousand files.
* Albums: :func:`.albums.albums` (categories, taught concepts, look-alikes, places, times;
  covers), re-exported here.

>>> [g["paths"] for g in duplicates(store)]
[['/photos/cat.png', '/photos/cat-small.jpg', '/photos/cat-flipped.png']]
>>> albums(store)[0]
{'album': 'animals > cats', 'paths': ['/photos/cat.png', ...]}
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import ArgumentError
from ..vocab.albums import album_for  # noqa: F401 (re-exported)
from .albums import ALBUM_CONFIDENCE, albums  # noqa: F401 (re-exported)
from .store import IndexStore

#: Cosine of the embeddings above which two files are near-duplicates. Measured on resized,
#: recompressed, cropped and flipped copies of the 500 dev photos (BENCHMARKS.md).
DUPLICATE_COSINE = 0.80


def file_vectors(store: IndexStore) -> tuple[list[int], np.ndarray]:
    """File ids and one unit vector per file (float32, (F, D)): a photo's embedding, a video's
    normalized mean frame embedding."""
    files = store.files()
    ids = list(files)
    vectors = np.zeros((len(ids), store.embedding.shape[1]), np.float32)
    for i, fid in enumerate(ids):
        f = files[fid]
        v = np.asarray(store.embedding[f["first_row"]:f["first_row"] + f["rows"]], np.float32).mean(0)
        vectors[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return ids, vectors


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicates(store: IndexStore, *, threshold: float = DUPLICATE_COSINE, block: int = 4096) -> list[dict]:
    """Groups of near-duplicate files, ``[{"paths": [...]}, ...]``: exact copies (same SHA-256)
    and files whose embeddings have a cosine of at least ``threshold`` (resized, recompressed,
    cropped, flipped or re-encoded copies). Paths in index order; groups by their first file.

    >>> duplicates(store)
    [{'paths': ['/photos/cat.png', '/photos/copy/cat.jpg']}]
    """
    import torch

    if not -1 <= threshold <= 1:
        raise ArgumentError(f"`threshold` is a cosine between -1 and 1, got {threshold!r}", param="threshold")
    files = store.files()
    ids, vectors = file_vectors(store)
    union = _Union(len(ids))
    by_hash: dict[str, int] = {}
    for i, fid in enumerate(ids):
        h = files[fid]["sha256"]
        if h in by_hash:
            union.join(by_hash[h], i)
        else:
            by_hash[h] = i
    half = torch.from_numpy(vectors).half()
    for a in range(0, len(ids), block):
        sims = (half[a:a + block] @ half[a:].T).float().numpy()
        ii, jj = np.nonzero(sims >= threshold)
        for i, j in zip((ii + a).tolist(), (jj + a).tolist()):
            if j > i:
                union.join(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)):
        groups[union.find(i)].append(i)
    return [{"paths": [files[ids[i]]["path"] for i in members]} for _, members in sorted(groups.items()) if len(members) > 1]
