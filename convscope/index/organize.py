"""Organize an index: groups of near-duplicate files, and albums.

* Duplicates: :mod:`.duplicates` (copies by perceptual hash and embedding, similar by
  embedding; complete linkage; candidate pairs from an approximate index past 20,000 files).
* Albums: :func:`.albums.albums` (categories, taught concepts, look-alikes, places, times;
  covers), re-exported here.

>>> [(g["kind"], g["paths"]) for g in duplicates(store)]
[('copies', ['/photos/cat.png', '/photos/cat-small.jpg', '/photos/cat-flipped.png'])]
>>> albums(store)[0]
{'album': 'animals > cats', 'paths': ['/photos/cat.png', ...]}
"""
from __future__ import annotations


import numpy as np

from ..errors import ArgumentError
from ..vocab.albums import album_for  # noqa: F401 (re-exported)
from .albums import ALBUM_CONFIDENCE, albums  # noqa: F401 (re-exported)
from .duplicates import SIMILAR_COSINE, duplicates as find_duplicates
from .store import IndexStore

#: Cosine of the embeddings of every pair of a ``similar`` group (:mod:`.duplicates`).
DUPLICATE_COSINE = SIMILAR_COSINE


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


def duplicates(store: IndexStore, *, threshold: float = DUPLICATE_COSINE, exact: bool | None = None,
               progress: bool | None = None, on_note=None) -> list[dict]:
    """Groups of duplicate files (:func:`convscope.index.duplicates.duplicates`): ``copies``
    (the same picture: perceptual hash and embedding) and ``similar`` (every pair's embedding
    cosine at least ``threshold``), each ``{"kind", "paths", "pairs", "threshold"}``.

    >>> [(g["kind"], g["paths"]) for g in duplicates(store)]
    [('copies', ['/photos/cat.png', '/photos/copy/cat.jpg'])]
    """
    if not -1 <= threshold <= 1:
        raise ArgumentError(f"`threshold` is a cosine between -1 and 1, got {threshold!r}", param="threshold")
    return find_duplicates(store, similar=threshold, exact=exact, progress=progress, on_note=on_note)
