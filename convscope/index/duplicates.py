"""Duplicates a person can trust: copies of one photo apart from different photos of one moment.

Two kinds of group, each with its own evidence, each by complete linkage (every pair of a
group passes, so look-alikes cannot chain a group together):

* ``copies``: the same picture resized, recompressed, cropped, mirrored or re-encoded. Every
  pair is at most :data:`COPY_BITS` of the 64 bits of the perceptual hash apart
  (:mod:`.signals.phash`: the nearest of as-is, mirrored and centre; it keeps the picture's
  layout)
  and has an embedding cosine of at least :data:`COPY_COSINE` (what it shows); files with the
  same bytes (SHA-256) always are. An index built before the hash (no ``phash`` signal) tells
  copies by the embedding alone, at cosine :data:`COPY_COSINE_ALONE`, and says so in one line.
* ``similar``: the same subject or moment (a burst, look-alikes): every pair has an embedding
  cosine of at least ``similar`` (:data:`SIMILAR_COSINE`), and is not a copy. A copies group
  takes part through its first file.

Candidate pairs come from :func:`.neighbours.near_pairs` (all pairs up to 20,000 files, an
approximate index past it), each checked exactly. Thresholds measured on the dev photos with
transformed copies (``bench/duplicates.py``, docs/search.md).

>>> [(g["kind"], g["paths"]) for g in duplicates(store)]
[('copies', ['/photos/cat.jpg', '/photos/cat-small.jpg']), ('similar', ['/photos/a.jpg', '/photos/b.jpg'])]
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import ArgumentError
from .neighbours import EXACT_LIMIT, near_pairs, unavailable
from .signals import phash as phash_signal

#: Copies: every pair at most this many bits of 64 apart in the perceptual hash ...
COPY_BITS = 8
#: ... and with an embedding cosine of at least this.
COPY_COSINE = 0.5
#: Copies in an index without the perceptual hash: an embedding cosine of at least this.
COPY_COSINE_ALONE = 0.90
#: Similar: every pair with an embedding cosine of at least this.
SIMILAR_COSINE = 0.80
#: How far below ``similar`` the approximate index's estimate of a pair's cosine (64 PCA
#: dimensions of the embedding) may be for the pair to get the exact check.
ESTIMATE_MARGIN = 0.15
#: The note said where an index has no perceptual hashes.
NO_HASH_NOTE = ("this index was built before perceptual hashes: copies are told by the embedding alone, less "
                "precisely; `convscope index --update` adds them without running the model")


def file_rows(store) -> tuple[list[dict], object, np.ndarray | None]:
    """The files of an index in index order, one unit vector each (an (F, D) array: the
    embedding's memory map itself where every file is one photo; a video's normalized mean
    frame embedding), and each file's perceptual hash row ((F, 4) uint64, a video's first
    frame's; None where the index lacks them)."""
    files = sorted(store.files().values(), key=lambda f: f["first_row"])
    first = np.array([f["first_row"] for f in files], np.int64)
    count = np.array([f["rows"] for f in files], np.int64)
    if len(files) == store.entries and (count == 1).all() and (first == np.arange(len(files))).all():
        vectors = store.embedding
    else:
        vectors = np.zeros((len(files), store.embedding.shape[1]), np.float32)
        for i, (a, n) in enumerate(zip(first.tolist(), count.tolist())):
            v = np.asarray(store.embedding[a:a + n], np.float32).mean(0)
            vectors[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    hashes = phash_signal.hashes(store)
    return files, vectors, None if hashes is None else np.asarray(hashes[first])


def duplicates(store, *, similar: float = SIMILAR_COSINE, bits: int = COPY_BITS, exact: bool | None = None,
               progress: bool | None = None, on_note: Callable[[str], None] | None = None) -> list[dict]:
    """Groups of duplicate files of an index (:func:`groups` on its files), each
    ``{"kind", "paths", "pairs", "threshold"}`` with ``paths`` in index order.
    ``on_note(line)``: called once where the index has no perceptual hashes, and once where a
    library past 20,000 files is compared pair by pair (faiss is not installed)."""
    files, vectors, hashes = file_rows(store)
    if hashes is None and on_note is not None:
        on_note(NO_HASH_NOTE)
    if exact is None and len(files) > EXACT_LIMIT and unavailable() is not None:
        exact = True
        if on_note is not None:
            on_note(f"comparing all pairs of {len(files):,} files, which takes long: {unavailable()}")
    found = groups(vectors, hashes, [f["sha256"] for f in files], similar=similar, bits=bits, exact=exact,
                   progress=progress)
    return [{"kind": g["kind"], "paths": [files[i]["path"] for i in g["members"]], "threshold": g["threshold"],
             "pairs": g["pairs"]} for g in found]


def groups(vectors, hashes: np.ndarray | None, sha256: Sequence[str] | None = None, *,
           similar: float = SIMILAR_COSINE, bits: int = COPY_BITS, exact: bool | None = None,
           progress: bool | None = None) -> list[dict]:
    """Copies and similar groups among ``F`` files: ``vectors`` (F, D) unit embeddings,
    ``hashes`` (F, 4) perceptual hash rows or None (then copies by cosine alone), ``sha256``
    the files' digests (same bytes: copies). Returns the ``copies`` groups then the
    ``similar`` ones, each by its first member::

        {"kind": "copies", "members": [0, 7], "threshold": {"bits": 8, "cosine": 0.5},
         "pairs": [{"a": 0, "b": 7, "bits": 3, "cosine": 0.97, "same_bytes": False}]}

    (``a``, ``b`` index ``members``; ``bits`` absent without hashes.) ``exact``: as
    :func:`.neighbours.near_pairs`."""
    if not -1 <= similar <= 1:
        raise ArgumentError(f"`similar` is a cosine between -1 and 1, got {similar!r}", param="similar")
    if not (isinstance(bits, int) and 0 <= bits <= 64):
        raise ArgumentError(f"`bits` is a number of hash bits between 0 and 64, got {bits!r}", param="bits")
    copy_cosine = COPY_COSINE if hashes is not None else COPY_COSINE_ALONE

    def worth(i, j, approx):  # a copy's hash is near; a similar pair's estimate not far below
        near = approx >= similar - ESTIMATE_MARGIN
        return near if hashes is None else near | (phash_signal.copy_distance(hashes[i], hashes[j]) <= bits)

    i, j, cos = near_pairs(vectors, min(copy_cosine, similar), exact=exact, progress=progress, worth=worth)
    same = _same_bytes(sha256 or [])
    d = phash_signal.copy_distance(hashes[i], hashes[j]) if hashes is not None else None
    is_copy = (cos >= copy_cosine) & (d <= bits if d is not None else True)
    keep = is_copy | (cos >= similar)  # (the pairs above the copy gate alone are many in a library of pets)
    i, j, cos, is_copy = i[keep], j[keep], cos[keep], is_copy[keep]
    d = None if d is None else d[keep]
    pair_bits = {} if d is None else dict(zip(zip(i.tolist(), j.tolist()), d.tolist()))
    pair_cos = dict(zip(zip(i.tolist(), j.tolist()), cos.tolist()))
    copy_edges = {(a, b) for a, b in zip(i[is_copy].tolist(), j[is_copy].tolist())} | same
    # strongest first: fewest bits apart (then highest cosine); same bytes before all
    order = sorted(copy_edges, key=lambda e: (e not in same, pair_bits.get(e, 0), -pair_cos.get(e, 1.0)))
    copies = _complete_linkage(order, copy_edges)
    threshold = {"bits": bits, "cosine": copy_cosine} if hashes is not None else {"cosine": copy_cosine}
    out = [_group("copies", m, threshold, pair_bits, pair_cos, same) for m in copies]
    # similar: between files not copies of one another, a copies group through its first file
    hidden = {x for m in copies for x in m[1:]}
    sim = [(a, b) for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist())
           if c >= similar and (a, b) not in copy_edges and a not in hidden and b not in hidden]
    sim_edges = set(sim)
    similar_groups = _complete_linkage(sorted(sim, key=lambda e: -pair_cos[e]), sim_edges)
    out += [_group("similar", m, {"cosine": similar}, {}, pair_cos, set()) for m in similar_groups]
    return out


def rule(group: dict) -> str:
    """A group's threshold in words, as it is applied to every pair of it.

    >>> rule({"kind": "copies", "threshold": {"bits": 8, "cosine": 0.5}})
    'at most 8 of 64 hash bits apart and an embedding cosine of at least 0.50, or the same bytes'
    """
    t = group["threshold"]
    cosine = f"an embedding cosine of at least {t['cosine']:.2f}"
    if group["kind"] == "similar":
        return cosine
    return (f"at most {t['bits']} of 64 hash bits apart and {cosine}" if "bits" in t else cosine) + ", or the same bytes"


def _same_bytes(sha256: Sequence[str]) -> set[tuple[int, int]]:
    """Pairs (i < j) of files with the same digest."""
    by: dict[str, list[int]] = {}
    for k, h in enumerate(sha256):
        if h:
            by.setdefault(h, []).append(k)
    return {(a, b) for members in by.values() for x, a in enumerate(members) for b in members[x + 1:]}


def _complete_linkage(order: Sequence[tuple[int, int]], edges: set[tuple[int, int]]) -> list[list[int]]:
    """Groups (sorted members, by first member) from ``edges`` (pairs i < j that pass),
    taken in ``order``: two groups merge only where every pair across them is an edge (complete
    linkage cut at the threshold: no group holds a pair that does not pass)."""
    group_of: dict[int, list[int]] = {}
    for a, b in order:
        ga, gb = group_of.get(a, [a]), group_of.get(b, [b])
        if ga is gb:
            continue
        if all((min(x, y), max(x, y)) in edges for x in ga for y in gb):
            merged = sorted(ga + gb)
            for x in merged:
                group_of[x] = merged
    seen, out = set(), []
    for g in group_of.values():
        if id(g) not in seen:
            seen.add(id(g))
            out.append(g)
    return sorted(out)


def _group(kind: str, members: list[int], threshold: dict, pair_bits: dict, pair_cos: dict, same: set) -> dict:
    pairs = []
    for x, a in enumerate(members):
        for y in range(x + 1, len(members)):
            b = members[y]
            pair = {"a": x, "b": y}
            if pair_bits and (a, b) in pair_bits:
                pair["bits"] = int(pair_bits[a, b])
            pair["cosine"] = round(float(pair_cos.get((a, b), 1.0)), 4)
            if kind == "copies":
                pair["same_bytes"] = (a, b) in same
            pairs.append(pair)
    return {"kind": kind, "members": members, "threshold": threshold, "pairs": pairs}


__all__ = ["COPY_BITS", "COPY_COSINE", "COPY_COSINE_ALONE", "SIMILAR_COSINE", "duplicates", "file_rows", "groups", "rule"]
