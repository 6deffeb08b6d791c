"""Atlases: Zeiler & Fergus's figure 2 for every unit of chosen layers, over any photos, on disk.

* :mod:`~convscope.atlas.store`: the SQLite schema and the reader :class:`Atlas`;
* :mod:`~convscope.atlas.write`: the writer of a build's database (or of a snapshot while it runs);
* :mod:`~convscope.atlas.records`: the records of a build, one dataclass per row it writes;
* :mod:`~convscope.atlas.builder`: :func:`build`, step by step (scan, records, render, write).

>>> atlas = build(load_model(), ["photos/"], "atlas/", top=9)
>>> atlas = Atlas.open("atlas/")
>>> atlas.examples("blocks.2", 7)[0]["patch"]
'patches/412/40_96_107_163.png'
"""
from __future__ import annotations

from .builder import build
from .store import (
    DB_NAME,
    FORMAT,
    FORMAT_VERSION,
    HISTOGRAM_BINS,
    METHODS,
    PARTIAL,
    QUANTILES,
    SCHEMA,
    STATE_NAME,
    Atlas,
    IncompleteAtlasError,
)

__all__ = [
    "DB_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "HISTOGRAM_BINS",
    "METHODS",
    "PARTIAL",
    "QUANTILES",
    "SCHEMA",
    "STATE_NAME",
    "Atlas",
    "IncompleteAtlasError",
    "build",
]
