"""Albums of an index: every file in one album, each album with the covers that show it best.

A file goes, in this order, to
1. a **category** (:func:`convscope.vocab.album_for`, "animals > dogs") whose classes hold at
   least ``confidence`` of its probability;
2. a **concept** album (``"concept: NAME"``, :mod:`.concepts`) when a taught concept holds it;
3. a **look-alike** group: leftovers clustered by embedding (average linkage, cosine distance
   under ``cluster_distance``), at least ``min_size`` files, named ``"similar: <most common top
   class>"``;
4. a category again, on weaker evidence: its best category holds at least
   :data:`LOOSE_CONFIDENCE` and :data:`LOOSE_MARGIN` times the next one;
5. a **place** (``"places > France > Lyon"``, else ``"places > France"``), from the places
   signal's columns, at least ``min_size`` files;
6. a **time** (``"times > 2015 > May"``, else ``"times > 2015"``) by the date the photo was
   taken (EXIF or the video's container; never the file's time, which says when it was copied),
   at least ``min_size`` files;
7. ``"other"``.

Concept albums also list the files of other albums that their concept holds. Each album has a
``kind`` (the step that made it), ``covers`` (up to :data:`COVERS` paths, the most typical
first) and ``why`` (how they were chosen): a category's covers are the members with the most
probability on its classes, a concept's the highest concept scores, the others' the members
nearest their mean embedding.

Cost: linear in the entries for the categories (chunked reads of the memory maps); the
leftovers are clustered exactly (agglomerative) up to :data:`AGGLOMERATIVE_LIMIT` files, and
beyond in a tree of k-means splits (16 ways, on a 64-dimension PCA of a sample) down to leaves
of at most :data:`LEAF` files, each clustered exactly: O(n log n) work, memory of one leaf's
distances plus a few numbers per file. Look-alikes split across two leaves stay apart.

>>> [(a["album"], a["kind"], a["covers"][0]) for a in albums(store)]
[('animals > cats', 'category', '/photos/chelsea.png'), ('places > France > Lyon', 'place', ...)]
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import numpy as np

from ..errors import ArgumentError
from ..progress import Bar
from ..vocab.albums import ALBUMS, album_for
from . import concepts
from .browse import MONTHS, _TAKEN_OK
from .store import IndexStore, read_path

#: Probability mass of a category's classes above which a file goes to that category's album.
ALBUM_CONFIDENCE = 0.5
#: A leftover joins its best category at this mass, when that is LOOSE_MARGIN times the next.
LOOSE_CONFIDENCE = 0.3
LOOSE_MARGIN = 1.5
#: Covers per album.
COVERS = 4
#: Up to this many leftovers are clustered in one agglomerative run; beyond, in leaves of LEAF.
AGGLOMERATIVE_LIMIT = 5000
LEAF = 1000
_CHUNK = 65536  # entries (or files) read at once
_VECTORS = 8192  # embeddings read at once (float32: 40 MB at 1,280 dimensions)
_NAMES = tuple(name for name, _words in ALBUMS)


def albums(store: IndexStore, *, confidence: float = ALBUM_CONFIDENCE, cluster_distance: float = 0.5,
           min_size: int = 2, loose: float | None = LOOSE_CONFIDENCE, progress: bool | None = None) -> list[dict]:
    """Albums ``[{"album", "kind", "paths", "covers", "why"}, ...]``, sorted by name, concept
    albums last (module docstring: which file goes where). ``paths`` in index order; ``kind``
    one of "category", "concept", "look-alike", "place", "time", "other". ``loose``: the mass
    of step 4 (None: no step 4); ``min_size``: the fewest files of a look-alike, place or time
    album.

    >>> albums(store)[0]
    {'album': 'animals > cats', 'kind': 'category', 'paths': [...], 'covers': [...], 'why': '...'}
    """
    if not 0 <= confidence <= 1:
        raise ArgumentError(f"`confidence` is a probability between 0 and 1, got {confidence!r}", param="confidence")
    if not 0 <= cluster_distance <= 2:
        raise ArgumentError(f"`cluster_distance` is a cosine distance between 0 and 2, got {cluster_distance!r}",
                            param="cluster_distance")
    if loose is not None and not 0 <= loose <= 1:
        raise ArgumentError(f"`loose` is a probability between 0 and 1, got {loose!r}", param="loose")
    if min_size < 2:
        raise ArgumentError(f"`min_size` is at least 2 files, got {min_size!r}", param="min_size")
    rows = store.query("SELECT id, first_row, rows FROM files ORDER BY id")
    ids = np.array([r[0] for r in rows], np.int64)
    first = np.array([r[1] for r in rows], np.int64)
    count = np.array([r[2] for r in rows], np.int64)
    del rows
    with Bar(len(ids), "albums: classes", disable=None if progress is None else not progress) as bar:
        mass, top = _masses(store, ids, count, bar)
    albums_: dict[str, _Album] = {}

    def put(name: str, kind: str, i: int, score: float | None = None) -> None:
        albums_.setdefault(name, _Album(kind)).add(i, score)

    best = mass.argmax(1) if len(ids) else np.zeros(0, np.int64)
    best_mass = mass[np.arange(len(ids)), best] if len(ids) else np.zeros(0)
    named = best_mass >= confidence if len(store.labels) == 1000 else np.zeros(len(ids), bool)
    for i in np.flatnonzero(named).tolist():
        put(_NAMES[best[i]], "category", i, float(best_mass[i]))
    left = ~named
    concept_albums, held = _concepts(store, ids)
    left &= ~held
    # look-alike groups among the leftovers
    rest = np.flatnonzero(left)
    with Bar(len(rest), "albums: look-alikes", disable=None if progress is None else not progress) as bar:
        groups = _look_alikes(store, first[rest], count[rest], cluster_distance, bar)
    for members in groups.values():
        if len(members) < min_size:
            continue
        members = rest[members]
        common = Counter(top[members].tolist()).most_common(1)[0][0]
        label = store.labels[common] if common >= 0 else "unknown"
        name, n = f"similar: {label}", 1
        while name in albums_:
            n += 1
            name = f"similar: {label} ({n})"
        for i in members.tolist():
            put(name, "look-alike", i)
        left[members] = False
    # a category on weaker evidence
    if loose is not None and len(store.labels) == 1000:
        second = np.sort(mass, axis=1)[:, -2]
        leaning = left & (best_mass >= loose) & (best_mass >= LOOSE_MARGIN * second)
        for i in np.flatnonzero(leaning).tolist():
            put(_NAMES[best[i]], "category", i, float(best_mass[i]))
        left &= ~leaning
    # places, then times
    for kind, keys in (("place", _places), ("time", _times)):
        for name, members in keys(store, ids, np.flatnonzero(left), min_size).items():
            for i in members:
                put(name, kind, i)
            left[members] = False
    for i in np.flatnonzero(left).tolist():
        put("other", "other", i)
    return _finish(store, ids, first, count, albums_, concept_albums)


class _Album:
    """Members (positions in the file list) and the heap of the best cover scores."""

    def __init__(self, kind: str):
        self.kind = kind
        self.members: list[int] = []
        self.best: list[tuple[float, int]] = []  # (score, -position): a min-heap of the top COVERS

    def add(self, i: int, score: float | None) -> None:
        self.members.append(i)
        if score is not None:
            item = (score, -i)
            if len(self.best) < COVERS:
                heapq.heappush(self.best, item)
            elif item > self.best[0]:
                heapq.heapreplace(self.best, item)


def _masses(store: IndexStore, ids: np.ndarray, count: np.ndarray, bar: Bar) -> tuple[np.ndarray, np.ndarray]:
    """Per file: the probability of each category of :data:`ALBUMS` (mean over its entries;
    float32 (F, len(ALBUMS))) and the top class of its first entry (a photo has one). Entries
    are read a chunk at a time."""
    lookup = np.full(1001, len(_NAMES), np.int64)  # class -> category (the last column: none)
    if len(store.labels) == 1000:
        index_of = {name: k for k, name in enumerate(_NAMES)}
        for c in range(1000):
            album = album_for(c)
            if album is not None:
                lookup[c] = index_of[album]
    mass = np.zeros((len(ids), len(_NAMES) + 1), np.float32)
    top = np.full(len(ids), -1, np.int64)
    width = len(_NAMES) + 1
    for a in range(0, store.entries, _CHUNK):
        b = min(a + _CHUNK, store.entries)
        fid = np.asarray(store.entry_file[a:b], np.int64)
        pos = np.searchsorted(ids, fid)
        ok = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == fid)
        classes = np.asarray(store.top_class[a:b], np.int64)[ok]
        probs = np.asarray(store.top_prob[a:b], np.float32)[ok]
        pos = pos[ok]
        cat = lookup[np.where(classes >= 0, classes, 1000)]
        flat = np.repeat(np.arange(len(pos)), classes.shape[1]) * width + cat.ravel()
        per_entry = np.bincount(flat, probs.ravel(), len(pos) * width).reshape(len(pos), width)
        np.add.at(mass, pos, per_entry / count[pos, None])
        firsts = np.r_[True, pos[1:] != pos[:-1]] & (top[pos] < 0)
        top[pos[firsts]] = classes[firsts, 0]
        bar.advance(int(np.count_nonzero(np.diff(pos, prepend=-1))) if len(pos) else 0)
    return mass[:, :-1], top


def _concepts(store: IndexStore, ids: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """The concept albums (positions of their files, cover scores) and which files any holds."""
    held = np.zeros(len(ids), bool)
    out = []
    for concept in concepts.load(store):
        scores = concept.scores(store)
        rows = np.flatnonzero(scores >= concept.threshold)
        pos = np.searchsorted(ids, np.asarray(store.entry_file[rows], np.int64))
        best: dict[int, float] = {}
        for p, s in zip(pos.tolist(), scores[rows].tolist()):
            best[p] = max(best.get(p, -1.0), s)
        album = _Album("concept")
        for p in sorted(best):
            album.add(p, best[p])
        held[list(best)] = True
        out.append((f"concept: {concept.name}", album))
    return out, held


def _vectors(store: IndexStore, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Unit vectors (float32) of these files: a photo's embedding, a video's mean frame embedding."""
    single = count == 1
    out = np.empty((len(first), store.embedding.shape[1]), np.float32)
    if single.any():  # photos: one read of their rows
        out[single] = store.embedding[first[single]]
    for k in np.flatnonzero(~single).tolist():
        out[k] = np.asarray(store.embedding[first[k]:first[k] + count[k]], np.float32).mean(0)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def _look_alikes(store: IndexStore, first: np.ndarray, count: np.ndarray, distance: float, bar: Bar) -> dict:
    """Cluster label -> positions (into ``first``) of the files clustered together."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    if len(first) < 2:
        return groups
    if len(first) <= AGGLOMERATIVE_LIMIT:
        leaves = [np.arange(len(first))]
    else:
        leaves = _leaves(store, first, count)
    for n, leaf in enumerate(leaves):
        if len(leaf) >= 2:
            labels = _agglomerate(_vectors(store, first[leaf], count[leaf]), distance)
            for i, lab in zip(leaf.tolist(), labels.tolist()):
                groups[(n, lab)].append(i)
        bar.advance(len(leaf))
    return groups


def _agglomerate(vectors: np.ndarray, distance: float) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                   distance_threshold=distance).fit_predict(vectors)


def _leaves(store: IndexStore, first: np.ndarray, count: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Positions split into leaves of at most :data:`LEAF` files by recursive 16-way k-means on
    a 64-dimension PCA (fitted on a sample), the reduced vectors made a chunk at a time."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(first), min(len(first), 8192), replace=False))
    pca = PCA(n_components=min(64, store.embedding.shape[1]), svd_solver="randomized", random_state=seed).fit(_vectors(store, first[sample], count[sample]))
    reduced = np.empty((len(first), pca.n_components_), np.float32)
    for a in range(0, len(first), _VECTORS):
        reduced[a:a + _VECTORS] = pca.transform(_vectors(store, first[a:a + _VECTORS], count[a:a + _VECTORS]))
    leaves, todo = [], [np.arange(len(first))]
    while todo:
        part = todo.pop()
        if len(part) <= LEAF:
            leaves.append(part)
            continue
        fit = part[rng.choice(len(part), min(len(part), 4096), replace=False)]
        km = KMeans(n_clusters=16, n_init=1, max_iter=20, random_state=seed).fit(reduced[fit])
        labels = np.concatenate([km.predict(reduced[part[a:a + _CHUNK]]) for a in range(0, len(part), _CHUNK)])
        split = [part[labels == k] for k in range(16)]
        if max(len(s) for s in split) == len(part):  # all alike: cut it in index order
            split = np.array_split(part, -(-len(part) // LEAF))
            leaves.extend(split)
            continue
        todo.extend(s for s in split if len(s))
    return leaves


def _places(store: IndexStore, ids: np.ndarray, left: np.ndarray, min_size: int) -> dict[str, list[int]]:
    """Place albums of the ``left`` files: by city where one holds ``min_size``, else by country."""
    if not {"city", "country"} <= store.file_columns or not len(left):
        return {}
    found = _column_values(store, ids, left, "country, city", "country IS NOT NULL")
    return _two_levels({i: (v[0], v[1]) for i, v in found.items()}, min_size,
                       lambda a, b: f"places > {a} > {b}" if b else None, lambda a: f"places > {a}")


def _times(store: IndexStore, ids: np.ndarray, left: np.ndarray, min_size: int) -> dict[str, list[int]]:
    """Time albums of the ``left`` files, by the date taken: a month with ``min_size``, else a year."""
    if not len(left):
        return {}
    found = _column_values(store, ids, left, "substr(taken, 1, 4), substr(taken, 6, 2)", _TAKEN_OK)
    return _two_levels({i: (v[0], MONTHS[int(v[1]) - 1]) for i, v in found.items()}, min_size,
                       lambda a, b: f"times > {a} > {b}", lambda a: f"times > {a}")


def _column_values(store: IndexStore, ids: np.ndarray, left: np.ndarray, select: str, where: str) -> dict[int, tuple]:
    """Position -> selected values, for the ``left`` positions whose row meets ``where``."""
    want = set(left.tolist())
    out = {}
    last = -1
    while True:
        rows = store.query(f"SELECT id, {select} FROM files WHERE id > ? AND {where} ORDER BY id LIMIT {_CHUNK}", [last])
        if not rows:
            return out
        for r in rows:
            p = int(np.searchsorted(ids, r[0]))
            if p in want:
                out[p] = tuple(r)[1:]
        last = rows[-1][0]


def _two_levels(values: dict[int, tuple], min_size: int, fine, coarse) -> dict[str, list[int]]:
    """Albums of the finer key (``fine(a, b)``) where one holds ``min_size``, else of the coarser."""
    by_fine: dict[tuple, list[int]] = defaultdict(list)
    for i, key in values.items():
        by_fine[key].append(i)
    out: dict[str, list[int]] = defaultdict(list)
    by_coarse: dict[str, list[int]] = defaultdict(list)
    for (a, b), members in by_fine.items():
        name = fine(a, b)
        if name is not None and len(members) >= min_size:
            out[name] = sorted(members)
        else:
            by_coarse[a].extend(members)
    for a, members in by_coarse.items():
        if len(members) >= min_size:
            out[coarse(a)] = sorted(members)
    return out


def _finish(store, ids, first, count, albums_: dict, concept_albums: list) -> list[dict]:
    """The album records: paths, covers and why."""
    paths: list[str] = []  # by position: the files in id order, as ``ids``
    last = -1
    while True:
        rows = store.query(f"SELECT id, path FROM files WHERE id > ? ORDER BY id LIMIT {_CHUNK}", [last])
        if not rows:
            break
        paths.extend(read_path(r[1]) for r in rows)
        last = rows[-1][0]
    out = []
    for name, album in [*sorted(albums_.items()), *concept_albums]:
        members = sorted(album.members)
        if album.best:
            ranked = sorted(album.best, reverse=True)
            covers = [-i for _s, i in ranked]
            scores = ", ".join(f"{s:.2f}" for s, _i in ranked)
            why = (f"the highest concept scores ({scores})" if album.kind == "concept" else
                   f"the most probability on the album's classes ({scores})")
        else:
            covers, why = _typical(store, first, count, members)
        out.append({"album": name, "kind": album.kind, "paths": [paths[i] for i in members],
                    "covers": [paths[i] for i in covers], "why": why})
    return out


def _typical(store, first, count, members: list[int]) -> tuple[list[int], str]:
    """The members nearest the album's mean embedding, read a chunk at a time, and why."""
    sel = np.asarray(members, np.int64)
    mean = np.zeros(store.embedding.shape[1], np.float64)
    for a in range(0, len(sel), _VECTORS):
        mean += _vectors(store, first[sel[a:a + _VECTORS]], count[sel[a:a + _VECTORS]]).sum(0)
    mean /= max(float(np.linalg.norm(mean)), 1e-12)
    best: list[tuple[float, int]] = []
    for a in range(0, len(sel), _VECTORS):
        cos = _vectors(store, first[sel[a:a + _VECTORS]], count[sel[a:a + _VECTORS]]) @ mean.astype(np.float32)
        for s, i in zip(cos.tolist(), sel[a:a + _VECTORS].tolist()):
            item = (s, -i)
            if len(best) < COVERS:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
    ranked = sorted(best, reverse=True)
    cosines = ", ".join(f"{s:.2f}" for s, _i in ranked)
    return [-i for _s, i in ranked], f"the nearest to the album's mean embedding (cosine {cosines})"
