"""The fast paths of keyword search give the numbers of the plain definitions.

- Class blocks (:mod:`convscope.index.postings`): scores with the block columns equal, bit for
  bit, the scores from the inverted lists alone and a dense sum over each entry's stored classes.
- Segments and the top-k selection (:func:`convscope.index.search.segments`, ``_top_order``):
  the same segments, best frames and order as a plain loop and a full sort.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from convscope.index import postings, search
from convscope.index.store import load_rows


def fake_store(tmp_path, n=3000, classes=1000, stored=32, seed=0):
    """Top-class rows as the index stores them (float16 probabilities of at least 0.001, -1 /
    0 past the last), their inverted lists, and the class blocks written from them."""
    rng = np.random.default_rng(seed)
    top_class = np.full((n, stored), -1, np.int16)
    top_prob = np.zeros((n, stored), np.float16)
    for i in range(n):
        k = int(rng.integers(1, stored + 1))
        cls = rng.choice(classes, k, replace=False)
        p = rng.dirichlet(np.full(k, 0.3))
        p = np.maximum(p, 0.001)
        top_class[i, :k], top_prob[i, :k] = cls, p.astype(np.float16)
    np.save(tmp_path / "top_class.npy", top_class)
    np.save(tmp_path / "top_prob.npy", top_prob)
    postings.write_class_blocks(tmp_path, classes, n, rows=700)  # several chunks
    keep = top_class.ravel() >= 0
    cls, ent = top_class.ravel()[keep], np.repeat(np.arange(n, dtype=np.int32), stored)[keep]
    prob = top_prob.ravel()[keep]
    order = np.argsort(cls, kind="stable")
    offsets = np.searchsorted(cls[order], np.arange(classes + 1))
    store = types.SimpleNamespace(post_offsets=offsets, post_entry=ent[order], post_prob=prob[order], entries=n,
                                  class_blocks=load_rows(tmp_path / postings.FILE))
    return store, top_class, top_prob


def dense(top_class, top_prob, classes) -> np.ndarray:
    wanted = np.zeros(1001, bool)
    wanted[list(classes)] = True
    hit = wanted[top_class.astype(np.int64)] & (top_class >= 0)
    return (top_prob.astype(np.float64) * hit).sum(axis=1)


def test_class_blocks_give_the_same_scores_bit_for_bit(tmp_path):
    store, top_class, top_prob = fake_store(tmp_path)
    assert store.class_blocks.shape == (40, 3000)
    rng = np.random.default_rng(1)
    sets = [range(0, 398), range(151, 269), range(400, 1000), range(0, 1000), range(975, 1000),
            list(range(0, 60)) + [500, 777], sorted(rng.choice(1000, 300, replace=False).tolist())]
    used_blocks = 0
    for classes in sets:
        classes = list(classes)
        with_blocks = search.keyword_scores(store, classes)
        whole, _ = postings.split(classes, 1000)
        used_blocks += len(whole)
        lists_only = search.keyword_scores(types.SimpleNamespace(**{**vars(store), "class_blocks": None}), classes)
        np.testing.assert_array_equal(with_blocks, lists_only)
        np.testing.assert_array_equal(with_blocks, dense(top_class, top_prob, classes))
    assert used_blocks >= 15 + 3 + 24 + 40 + 1 + 2  # the runs above were scored through whole blocks


def test_split_finds_whole_blocks_and_the_rest():
    whole, rest = postings.split(list(range(0, 398)), 1000)
    assert whole == list(range(15)) and rest == list(range(375, 398))
    whole, rest = postings.split([3, 1, 2], 1000)
    assert whole == [] and rest == [1, 2, 3]
    whole, rest = postings.split(list(range(90, 105)), 105)  # a short last block, covered whole
    assert whole == [4] and rest == list(range(90, 100))


def plain_segments(files, times, rows, scores):
    """Runs of consecutive rows of one video; a photo alone; best = highest score, first on a tie."""
    out = []
    i = 0
    while i < len(rows):
        j = i
        while (j + 1 < len(rows) and rows[j + 1] == rows[j] + 1 and files[rows[j + 1]] == files[rows[j]]
               and not np.isnan(times[rows[j]]) and not np.isnan(times[rows[j + 1]])):
            j += 1
        seg = list(range(i, j + 1))
        b = max(seg, key=lambda k: (scores[k], -k))
        out.append((rows[b], scores[b], rows[i], rows[j]))
        i = j + 1
    return out


@pytest.mark.parametrize("videos", [False, True])
def test_segments_and_top_order_match_a_plain_loop_and_a_full_sort(videos):
    rng = np.random.default_rng(2)
    n = 4000
    files = np.sort(rng.integers(0, 600, n)).astype(np.int32)
    times = np.where(files % 3 == 0, np.arange(n, dtype=np.float32), np.nan) if videos else np.full(n, np.nan, np.float32)
    store = types.SimpleNamespace(entry_file=files, entry_time=times)
    rows = np.flatnonzero(rng.random(n) < 0.6)
    scores = np.round(rng.random(len(rows)), 2)  # many ties
    best, score, first, last = search.segments(store, rows, scores)
    assert list(zip(best.tolist(), score.tolist(), first.tolist(), last.tolist())) == plain_segments(files, times, rows, scores)
    if videos:
        assert len(best) < len(rows)  # frames did merge
    for top in (1, 7, 50, len(best) + 5):
        order = search._top_order(score, first, top)
        full = np.lexsort((first, -score))[:top]
        np.testing.assert_array_equal(order, full)
