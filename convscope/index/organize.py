"""Organize an index: groups of near-duplicate files, and albums.

* Duplicates: :mod:`.duplicates` (copies by perceptual hash and embedding, similar by
  embedding; complete linkage; candidate pairs from an approximate index past 20,000 files).
* Albums: by WordNet category, at a readable depth (:func:`convscope.vocab.album_for`, the
  one taxonomy), for files whose probability mass in one category is at least :data:`ALBUM_CONFIDENCE`; the rest
  are clustered by embedding (agglomerative, average linkage on cosine distance; k-means past
  :data:`AGGLOMERATIVE_LIMIT` files) and named after their most common top class.
* Concept albums: one per taught concept (:mod:`.concepts`), ``"concept: NAME"``, the files
  with an entry at or above the concept's threshold; these come on top of the album each file
  is in.

>>> [(g["kind"], g["paths"]) for g in duplicates(store)]
[('copies', ['/photos/cat.png', '/photos/cat-small.jpg', '/photos/cat-flipped.png'])]
>>> albums(store)[0]
{'album': 'animals > cats', 'paths': ['/photos/cat.png', ...]}
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..errors import ArgumentError
from ..vocab.albums import album_for
from . import concepts
from .duplicates import SIMILAR_COSINE, duplicates as find_duplicates
from .store import IndexStore

#: Cosine of the embeddings of every pair of a ``similar`` group (:mod:`.duplicates`).
DUPLICATE_COSINE = SIMILAR_COSINE
#: Probability mass of a category's classes above which a file goes to that category's album.
ALBUM_CONFIDENCE = 0.5


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


def albums(store: IndexStore, *, confidence: float = ALBUM_CONFIDENCE, cluster_distance: float = 0.5) -> list[dict]:
    """Albums ``[{"album": str, "paths": [...]}, ...]``: a file goes to the WordNet category
    (:func:`album_for`) whose classes hold at least ``confidence`` of its probability (summed
    as a keyword query sums them; a video's averaged over its frames); the rest are
    clustered by embedding (average linkage, cosine distance under ``cluster_distance``) into
    albums named ``"similar: <most common top class>"``, and single leftovers into "other".
    Albums are sorted by name. Each taught concept adds an album ``"concept: NAME"`` of the
    files it holds (an entry's score at or above its threshold), beside the one album of each file.

    >>> albums(store)
    [{'album': 'animals > cats', 'paths': [...]}, {'album': 'food', 'paths': [...]}, ...]
    """
    if not 0 <= confidence <= 1:
        raise ArgumentError(f"`confidence` is a probability between 0 and 1, got {confidence!r}", param="confidence")
    if not 0 <= cluster_distance <= 2:
        raise ArgumentError(f"`cluster_distance` is a cosine distance between 0 and 2, got {cluster_distance!r}",
                            param="cluster_distance")
    files = store.files()
    ids, vectors = file_vectors(store)
    named: dict[str, list[int]] = defaultdict(list)
    rest: list[int] = []
    top_of: dict[int, int] = {}
    keyword = len(store.labels) == 1000
    for i, fid in enumerate(ids):
        f = files[fid]
        rows = slice(f["first_row"], f["first_row"] + f["rows"])
        classes = np.asarray(store.top_class[rows])
        probs = np.asarray(store.top_prob[rows], np.float32)
        top_of[i] = int(Counter(classes[:, 0].tolist()).most_common(1)[0][0])
        # an album's mass: the probability of its classes, as a keyword query scores it
        mass: Counter = Counter()
        for c, p in zip(classes.ravel().tolist(), probs.ravel().tolist()):
            album = album_for(c) if keyword and c >= 0 else None
            if album is not None:
                mass[album] += p / len(classes)
        best = mass.most_common(1)
        if best and best[0][1] >= confidence:
            named[best[0][0]].append(i)
        else:
            rest.append(i)
    if len(rest) >= 2:
        labels = _clusters(vectors[rest], cluster_distance)
        clusters: dict[int, list[int]] = defaultdict(list)
        for i, lab in zip(rest, labels.tolist()):
            clusters[lab].append(i)
        for members in clusters.values():
            if len(members) == 1:
                named["other"].append(members[0])
                continue
            common = Counter(top_of[i] for i in members).most_common(1)[0][0]
            label = store.labels[common] if common >= 0 else "unknown"
            name, n = f"similar: {label}", 1
            while name in named:
                n += 1
                name = f"similar: {label} ({n})"
            named[name].extend(members)
    elif rest:
        named["other"].extend(rest)
    out = [{"album": name, "paths": [files[ids[i]]["path"] for i in sorted(members)]} for name, members in sorted(named.items())]
    return out + concept_albums(store)


def concept_albums(store: IndexStore) -> list[dict]:
    """One album per taught concept, ``{"album": "concept: NAME", "paths": [...]}`` (index
    order): the files with an entry whose score reaches the concept's threshold."""
    out = []
    for concept in concepts.load(store):
        rows = np.flatnonzero(concept.scores(store) >= concept.threshold)
        ids = sorted(set(np.asarray(store.entry_file[rows]).tolist()))
        files = store.files(ids)
        out.append({"album": f"concept: {concept.name}", "paths": [files[i]["path"] for i in ids]})
    return out


#: Above this many files to cluster, k-means replaces agglomerative clustering (whose memory
#: grows with the square of the count).
AGGLOMERATIVE_LIMIT = 5000


def _clusters(vectors: np.ndarray, distance: float) -> np.ndarray:
    """Cluster labels of unit ``vectors``: average-linkage agglomerative clustering cut at cosine
    ``distance``; past :data:`AGGLOMERATIVE_LIMIT` files, mini-batch k-means with one cluster per
    20 files (spherical: on unit vectors, Euclidean k-means follows the cosine)."""
    if len(vectors) <= AGGLOMERATIVE_LIMIT:
        from sklearn.cluster import AgglomerativeClustering

        return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                       distance_threshold=distance).fit_predict(vectors)
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=len(vectors) // 20, random_state=0, n_init=1).fit_predict(vectors)
