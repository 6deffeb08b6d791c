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



from ..errors import ArgumentError
from ..vocab.albums import album_for  # noqa: F401 (re-exported)
from .albums import ALBUM_CONFIDENCE, albums  # noqa: F401 (re-exported)
from .duplicates import SIMILAR_COSINE, duplicates as find_duplicates
from .store import IndexStore

#: Cosine of the embeddings of every pair of a ``similar`` group (:mod:`.duplicates`).
DUPLICATE_COSINE = SIMILAR_COSINE


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
