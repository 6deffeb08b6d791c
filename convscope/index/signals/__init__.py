"""Per-photo signals, the index's pipeline: a build decodes each photo (or video frame) once and
hands it to every chosen signal of :data:`SIGNALS` in order, one module each, one interface
(:class:`Signal`). A new signal is one new module and one line here.

A build runs every signal that is not :attr:`~Signal.optional`, and each optional one that it
asks for (``text=True``), or that is available here when it says nothing (``text=None``); it
records their names (meta ``signals``), and an update runs a signal that the old index lacks on
its unchanged files without running the network again.

>>> [s.name for s in SIGNALS]
['classes', 'embedding', 'units', 'thumbnail', 'metadata', 'place', 'phash']
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ...errors import ArgumentError, ConvscopeError
from ..store import BEFORE_RECORDED, schema as store_schema
from .base import Signal
from .classes import Classes, top_classes
from .embedding import Embedding
from .metadata import Metadata
from .phash import PerceptualHash
from .place import Location
from .text import Text
from .thumbnail import Thumbnail
from .units import Units

#: The signals an index build can compute, in order (the arrays, columns and tables of the index).
SIGNALS: tuple[Signal, ...] = (Classes(), Embedding(), Units(), Thumbnail(), Metadata(), Location(), PerceptualHash(),
                             Text())


def choose(options: Mapping[str, bool | None] | None = None) -> tuple[str, ...]:
    """The names of the signals a build runs: every required one; an optional one where
    ``options[name]`` is True (one line if it cannot run here), or None/absent and it can.

    >>> choose({"text": False})
    ('classes', 'embedding', 'units', 'thumbnail', 'metadata', 'place', 'phash')"""
    options = dict(options or {})
    known = {s.name for s in SIGNALS if s.optional}
    for name in options:
        if name not in known:
            raise ArgumentError(f"no optional signal {name!r}; the optional ones are {', '.join(sorted(known)) or 'none'}",
                                param=name)
    names = []
    for signal in SIGNALS:
        if signal.optional:
            wanted = options.get(signal.name)
            reason = signal.available() if wanted is not False else None
            if wanted is False or (wanted is None and reason is not None):
                continue
            if reason is not None:
                raise ConvscopeError(f"cannot index {signal.name}: {reason}")
        names.append(signal.name)
    return tuple(names)


def chosen(names: Sequence[str] | None) -> tuple[Signal, ...]:
    """The signals of ``names`` (None: every signal), in pipeline order."""
    if names is None:
        return SIGNALS
    return tuple(s for s in SIGNALS if s.name in names)


def decode_size(resize: int, names: Sequence[str] | None = None) -> int:
    """The shorter side a build decodes photos at (reduced scale): the model's ``resize``, or
    more where a chosen signal needs more."""
    return max(resize, *(signal.min_size for signal in chosen(names)))


def schema(names: Sequence[str] | None) -> str:
    """The SQL of an index's database with the chosen signals' columns and tables."""
    columns = {col: kind for signal in chosen(names) for col, kind in signal.columns.items()}
    return store_schema(columns, "\n".join(signal.tables for signal in chosen(names) if signal.tables))


__all__ = ["BEFORE_RECORDED", "SIGNALS", "Classes", "choose", "chosen", "decode_size", "Embedding", "Location", "Metadata",
           "PerceptualHash", "schema", "Signal", "Text", "Thumbnail", "Units", "top_classes"]
