"""Per-photo signals, the index's pipeline: a build decodes each photo (or video frame) once and
hands it to every signal of :data:`SIGNALS` in order, one module each, one interface
(:class:`Signal`). A new signal is one new module and one line here.

>>> [s.name for s in SIGNALS]
['classes', 'embedding', 'units', 'thumbnail', 'metadata']
"""
from __future__ import annotations

from .base import Signal
from .classes import Classes, top_classes
from .embedding import Embedding
from .metadata import Metadata
from .thumbnail import Thumbnail
from .units import Units

#: The signals every index build computes, in order (the arrays and columns of the index).
SIGNALS: tuple[Signal, ...] = (Classes(), Embedding(), Units(), Thumbnail(), Metadata())


def decode_size(resize: int) -> int:
    """The shorter side a build decodes photos at (reduced scale): the model's ``resize``, or
    more where a signal needs more."""
    return max(resize, *(signal.min_size for signal in SIGNALS))

__all__ = ["SIGNALS", "Classes", "decode_size", "Embedding", "Metadata", "Signal", "Thumbnail", "Units", "top_classes"]
