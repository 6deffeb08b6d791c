"""The one interface of a per-photo signal: what the index keeps of each photo, in up to three
stages, each optional (the base class's are empty).

- :meth:`Signal.file` runs in the decoding worker, once per file, on what reading it told
  (:class:`convscope.data.Photo`, or :class:`~convscope.index.media.VideoInfo`): columns of
  the file's record.
- :meth:`Signal.entry` runs in the decoding worker on each decoded picture (a photo, or a
  sampled video frame) while its pixels are there: per-entry values (a thumbnail).
- :meth:`Signal.rows` runs after the batch's forward pass on its
  :class:`~convscope.index.features.Features` and its entries' values: per-entry row arrays, declared by
  :meth:`Signal.arrays`; :meth:`Signal.stored` reads them back from an index (an update copies
  the rows of unchanged files), :meth:`Signal.finish` writes the arrays derived from them once
  the build has every row.

>>> class Brightness(Signal):
...     name = "brightness"
...     def entry(self, image): return {"brightness": np.asarray(image.convert("L")).mean()}
...     def arrays(self, extractor): return {"brightness": (np.float32, ())}
...     def rows(self, features, entries): return {"brightness": np.array([e["brightness"] for e in entries])}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class Signal:
    """A per-photo signal; subclasses set :attr:`name` and override the stages they fill."""

    name: str = ""
    #: Pixels of the shorter side this signal needs of a decoded picture: a build decodes at
    #: reduced scale, but never smaller than the model's resize or any signal's ``min_size``.
    min_size: int = 0

    def file(self, read) -> dict:
        """Columns of the file's record, from ``read`` (a decoded Photo, or a VideoInfo)."""
        return {}

    def entry(self, image) -> dict:
        """Per-entry values of one decoded picture (RGB PIL image, upright)."""
        return {}

    def arrays(self, extractor) -> dict[str, tuple[type, tuple[int, ...]]]:
        """The row arrays this signal adds: name -> (dtype, shape of one row)."""
        return {}

    def rows(self, features, entries: list[dict]) -> dict[str, np.ndarray]:
        """The rows of a batch's entries, one array per name of :meth:`arrays`, from the batch's
        forward pass (``features``) and the entries' values (what every :meth:`entry` gave)."""
        return {}

    def stored(self, store, first: int, stop: int) -> dict[str, np.ndarray]:
        """The rows of entries ``first <= row < stop`` of an existing index, as :meth:`rows` gives them."""
        return {}

    def finish(self, arrays: Path, rows: int, extractor) -> None:
        """Write the arrays derived from this signal's rows into the folder ``arrays``."""
