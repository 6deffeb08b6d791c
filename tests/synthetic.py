"""A synthetic index of any size, written through the build's own partial store and finish (no
photos, no network), for the albums' tests of scale and bench/albums.py.

Each file is one photo entry: top classes and probabilities drawn at random (the top one holds
``lead`` of the probability, the rest share what is left), a random unit embedding (a
``groups``-th of the files are noisy copies of one of ``groups`` centres, so look-alikes exist),
a date taken (a random day of 2000-2024; every ``undated``-th none) and, for every
``placed``-th file, a city of :data:`CITIES`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CITIES = (("Lyon", "France"), ("Paris", "France"), ("Bologna", "Italy"), ("Sydney", "Australia"), ("Kyoto", "Japan"))


class _Extractor:
    """What the partial build asks of an extractor."""

    def __init__(self, dim: int, units: int, labels: list[str]):
        self.dim, self.units, self.classes = dim, units, len(labels)
        self.model = type("M", (), {"labels": labels})()


def synthetic_index(out: Path, n: int, *, dim: int = 64, units: int = 4, seed: int = 0, lead: float = 0.4,
                    groups: int = 0, placed: int = 3, undated: int = 4, block: int = 50000) -> Path:
    """Write an index of ``n`` photo entries in ``out`` (module docstring) and return ``out``."""
    from convscope.index import build as b
    from convscope.models import imagenet_labels

    labels = imagenet_labels()
    names = ("classes", "embedding", "units", "thumbnail", "metadata", "place")
    settings = {"format": b.FORMAT, "version": b.FORMAT_VERSION,
                "model": {"spec": "synthetic", "weights": "none", "fingerprint": "0"},
                "preprocessing": {"input_size": [224, 224]}, "labels": labels,
                "layers": [{"name": "synthetic", "offset": 0, "shape": [units, 7, 7]}], "head": None,
                "embedding_dim": dim, "fps": 1.0, "draft": True, "decoder": b.DECODER, "top_classes": b.TOP_CLASSES,
                "prob_floor": b.PROB_FLOOR, "inputs": [], "signals": list(names)}
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(groups, 1), dim)).astype(np.float32)
    extractor = _Extractor(dim, units, labels)
    out.mkdir(parents=True)
    partial = b._Partial(out, settings, extractor, resume=False)
    k = b.TOP_CLASSES
    for a in range(0, n, block):
        m = min(block, n - a)
        # k distinct classes a row: a random start plus the block's k distinct offsets
        top_class = ((rng.integers(0, 1000, (m, 1)) + rng.choice(1000, k, replace=False)) % 1000).astype(np.int16)
        rest = rng.dirichlet(np.ones(k - 1), m) * (1 - lead)
        top_prob = np.concatenate([np.full((m, 1), lead), -np.sort(-rest, axis=1)], axis=1).astype(np.float16)
        emb = rng.standard_normal((m, dim)).astype(np.float32)
        if groups:
            alike = rng.random(m) < 1 / groups
            emb[alike] = centres[rng.integers(0, groups, int(alike.sum()))] + 0.3 * emb[alike]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        rows = {"top_class": top_class, "top_prob": top_prob, "embedding": emb.astype(np.float16),
                "unit_rows": rng.random((m, units), dtype=np.float32).astype(np.float16),
                "unit_pos_rows": rng.integers(0, 49, (m, units)).astype(np.int16)}
        for name, f in partial.files.items():
            f.append(rows[name])
        first = partial.rows
        days = rng.integers(0, 25 * 365, m)
        records = []
        for i in range(m):
            row = first + i
            year, day = 2000 + int(days[i]) // 365, int(days[i]) % 365
            taken = None if row % undated == 0 else f"{year}-{day // 31 % 12 + 1:02d}-{day % 28 + 1:02d}T12:00:00"
            city, country = CITIES[row % len(CITIES)] if row % placed == 0 else (None, None)
            records.append((row + 1, f"/synthetic/{row:07d}.jpg", row * 10**9, f"{row:064x}", row, taken, city, country))
        partial.conn.executemany("INSERT INTO entries VALUES (?, ?, NULL)", [(first + i, first + i + 1) for i in range(m)])
        partial.conn.executemany("INSERT INTO thumbs VALUES (?, ?)", [(first + i, b"\xff\xd8\xff\xd9") for i in range(m)])
        partial.conn.executemany(
            "INSERT INTO files (id, path, kind, size, mtime_ns, sha256, first_row, rows, taken, city, country) "
            "VALUES (?, ?, 'photo', 1, ?, ?, ?, 1, ?, ?, ?)", records)
        partial.rows += m
        partial.commit(force=True)
    b._finalize(out, partial, extractor, 0.0, None)
    partial.close()
    b._cleanup(out)
    return out
