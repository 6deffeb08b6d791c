"""Class probabilities: the :data:`~convscope.index.store.TOP_CLASSES` most probable classes of
each entry (``top_class``, ``top_prob``), and the inverted lists keyword search reads
(:mod:`..postings`)."""
from __future__ import annotations

import numpy as np

from ..postings import write_postings
from ..store import PROB_FLOOR, TOP_CLASSES
from .base import Signal


def top_classes(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The :data:`TOP_CLASSES` most probable classes per row of ``probs`` (B, K), -1 / 0 where
    below :data:`PROB_FLOOR`: (B, 32) int16 classes and (B, 32) float16 probabilities."""
    k = min(TOP_CLASSES, probs.shape[1])
    idx = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.tile(np.arange(k), (len(probs), 1))
    p = np.take_along_axis(probs, idx, axis=1)
    order = np.argsort(-p, axis=1, kind="stable")
    idx, p = np.take_along_axis(idx, order, axis=1), np.take_along_axis(p, order, axis=1)
    cls = np.full((len(probs), TOP_CLASSES), -1, np.int16)
    val = np.zeros((len(probs), TOP_CLASSES), np.float16)
    keep = p >= PROB_FLOOR
    cls[:, :k] = np.where(keep, idx, -1)
    val[:, :k] = np.where(keep, p, 0)
    return cls, val


class Classes(Signal):
    name = "classes"

    def arrays(self, extractor):
        return {"top_class": (np.int16, (TOP_CLASSES,)), "top_prob": (np.float16, (TOP_CLASSES,))}

    def rows(self, features, entries):
        cls, val = top_classes(features.probs)
        return {"top_class": cls, "top_prob": val}

    def stored(self, store, first, stop):
        return {"top_class": store.top_class[first:stop], "top_prob": store.top_prob[first:stop]}

    def finish(self, arrays, rows, extractor):
        labels = extractor.model.labels
        write_postings(arrays, len(labels) if labels else extractor.classes, rows)
