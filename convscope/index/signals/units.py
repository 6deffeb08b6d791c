"""Unit maxima: per entry, the spatial maximum of every unit of the indexed layers and where it
is (``unit_rows``, ``unit_pos_rows`` while building; transposed at the end into ``units`` and
``unit_pos``, one row per unit, which unit search reads a column at a time)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..arrays import load_rows
from .base import Signal

#: float16's largest finite value: larger maxima are clipped to it.
F16_MAX = 65504


class Units(Signal):
    name = "units"

    def arrays(self, extractor):
        return {"unit_rows": (np.float16, (extractor.units,)), "unit_pos_rows": (np.int16, (extractor.units,))}

    def rows(self, features, entries):
        return {"unit_rows": np.clip(features.unit_max, -F16_MAX, F16_MAX).astype(np.float16),
                "unit_pos_rows": features.unit_pos}

    def stored(self, store, first, stop):
        return {"unit_rows": store.units[:, first:stop].T, "unit_pos_rows": store.unit_pos[:, first:stop].T}

    def finish(self, arrays, rows, extractor):
        transpose(arrays / "unit_rows.npy", arrays / "units.npy")
        transpose(arrays / "unit_pos_rows.npy", arrays / "unit_pos.npy")


def transpose(src: Path, dst: Path, block: int = 8192) -> None:
    """(N, U) rows -> (U, N) columns, a block of rows at a time; ``src`` is removed."""
    rows = load_rows(src)
    n, u = rows.shape
    if n == 0:
        np.save(dst, np.zeros((u, 0), rows.dtype))
        src.unlink()
        return
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=rows.dtype, shape=(u, n))
    for a in range(0, n, block):
        out[:, a:a + block] = np.asarray(rows[a:a + block]).T
    out.flush()
    del out, rows
    src.unlink()
