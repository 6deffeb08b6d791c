"""The embedding: each entry's L2-normalized penultimate vector (``embedding``, float16), what
"like this photo" and duplicate search compare."""
from __future__ import annotations

import numpy as np

from .base import Signal


class Embedding(Signal):
    name = "embedding"

    def arrays(self, extractor):
        return {"embedding": (np.float16, (extractor.dim,))}

    def rows(self, features, entries):
        return {"embedding": features.embedding.astype(np.float16)}

    def stored(self, store, first, stop):
        return {"embedding": store.embedding[first:stop]}
