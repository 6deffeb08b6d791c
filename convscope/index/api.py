"""``Index``: build an index once, then search, find look-alikes, excite units, find duplicates
and make albums. Each method is what one command line does, with the same parameters.

>>> from convscope import load_model
>>> from convscope.index import Index
>>> index = Index.build(load_model(), ["photos/", "clips/"], "photos.index")   # convscope index
>>> index = Index.open("photos.index")
>>> [r.to_json() for r in index.search("dog", top=5)]                          # convscope search
>>> index.like("photos/rex.jpg")                                               # --like
>>> index.unit("blocks.4:17")                                                  # --unit
>>> index.duplicates(), index.albums()                                         # duplicates, organize
"""
from __future__ import annotations

import os
import weakref
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ArgumentError, ConvscopeError
from ..vocab import EverydayWords
from . import browse, organize, search
from .store import IndexStore


def parse_unit(text: str) -> tuple[str, int]:
    """``"LAYER:UNIT"`` -> (layer, unit): ``parse_unit("blocks.4:17") == ("blocks.4", 17)``."""
    layer, sep, unit = str(text).rpartition(":")
    if not sep or not layer or not unit.strip().isdigit():
        raise ArgumentError(f"a unit is written LAYER:UNIT, such as blocks.4:17; got {text!r}", param="unit")
    return layer, int(unit)


class Index(IndexStore):
    """A finished index on disk (see :class:`~convscope.index.store.IndexStore` for its arrays)."""

    def __init__(self, root, conn, meta):
        super().__init__(root, conn, meta)
        self._extractor = None  # made on the first embed() of a file outside the index
        self._checked = None  # (weak reference to the last module that passed checked_model, its tensors' versions)

    @classmethod
    def build(cls, model, inputs: Iterable[str | os.PathLike] | None, out: str | os.PathLike, *, fps: float = 1.0,
              update: bool = False, resume: bool = False, batch_size: int = 32, workers: int | None = None,
              on_skip: Callable[[str, str], None] | None = None, progress: bool | None = None,
              draft: bool = True, layers: Sequence[str] | None = None, ray=None,
              ray_workers: int | None = None, text: bool | None = None,
              on_note: Callable[[str], None] | None = None, snapshots: bool = False) -> "Index":
        """Index photos and videos into the folder ``out`` and open it (arguments: see
        :func:`convscope.index.build.build`; ``ray=True``, an address or a Pool computes on Ray,
        with the same result; ``text``: recognize text in photos, None where the engine is installed;
        ``snapshots``: publish what the build holds so far, for ``Index.open(out, building=True)``).

        >>> index = Index.build(load_model(), ["photos/"], "photos.index", on_skip=print)
        """
        from .build import build

        build(model, inputs, out, fps=fps, update=update, resume=resume, batch_size=batch_size, workers=workers,
              on_skip=on_skip, progress=progress, draft=draft, layers=layers, ray=ray, ray_workers=ray_workers, text=text,
              on_note=on_note, snapshots=snapshots)
        return cls.open(out)

    def search(self, query: str, *, top: int = 20, min_score: float = search.MIN_SCORE,
               sort: str = "score", words=None) -> list[search.Result]:
        """Search by words (:func:`convscope.index.search.search`): classes, everyday words,
        places, times and text in photos; by score or by date (newest first). ``words``: the
        everyday words, or a JSON file of the user's own added to the shipped ones.

        >>> index.search("sports car", top=3, sort="date")
        >>> index.search("dog france 2015", words="my-words.json")
        """
        if words is not None and not isinstance(words, EverydayWords):
            words = EverydayWords.load(words)
        return search.search(self, query, top=top, min_score=min_score, sort=sort, words=words)

    def like(self, target, *, top: int = 20, time: float | None = None, model=None) -> list[search.Result]:
        """Entries most like ``target`` by cosine of embeddings, exact. ``target``: an indexed
        path (its entry; for a video the frame nearest ``time``, else its first), an entry row
        (int), an embedding (D,), or any photo file (embedded with ``model``, default: the index's
        model loaded by its spec). The query's own file is left out.

        >>> index.like("photos/chelsea.png", top=5)
        """
        exclude = None
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
            if not 0 <= int(target) < self.entries:
                raise ArgumentError(f"entry {target} is not in this index of {self.entries} entries; give a row "
                                    f"from 0 to {self.entries - 1} as `target`", param="target")
            vector, exclude = np.asarray(self.embedding[int(target)], np.float32), int(self.entry_file[int(target)])
        elif isinstance(target, np.ndarray):
            vector = target
        elif isinstance(target, (str, os.PathLike)):
            record = self.file_of(target)
            if record is not None:
                row = self.row_at(record, time)
                vector, exclude = np.asarray(self.embedding[row], np.float32), record["id"]
            else:
                vector = self.embed(target, model=model, time=time)
        else:
            raise TypeError(f"like takes a path, an entry row or an embedding, got {type(target).__name__}")
        return search.like(self, vector, top=top, exclude_file=exclude)

    def unit(self, layer: str, unit: int | None = None, *, top: int = 20, model=None, boxes: bool = True) -> list[search.Result]:
        """Entries that excite one unit most: ``unit("blocks.4", 17)`` or ``unit("blocks.4:17")``.
        With ``boxes`` each result gets the receptive-field box of the unit's maximum, from the
        layer catalogue of ``model`` (default: the index's model, loaded by its spec; its
        geometry is probed once per model and cached).

        >>> index.unit("blocks.4:17", top=9)[0].box      # (top, left, bottom, right)
        """
        if unit is None:
            layer, unit = parse_unit(layer)
        self.check_unit(layer, unit)  # before a model loads for the boxes
        return search.unit(self, layer, unit, top=top, box=self._box(layer, model) if boxes else None)

    def check_unit(self, layer: str, unit: int) -> None:
        """Raise one line for a ``layer`` the index does not keep (close matches) or a ``unit`` out
        of its range; nothing loads.

        >>> index.check_unit("blocks.4", 99999)
        ArgumentError: layer 'blocks.4' has units 0..319, got 99999
        """
        search.unit_column(self, layer, unit)

    def unit_at(self, layer: str, unit: int, row: int, *, model=None) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Where ``unit`` of ``layer`` reached its maximum on entry ``row``: (y, x) on the
        layer's map, and its receptive-field box (top, left, bottom, right) on the model input
        (:func:`convscope.index.search.unit_at`; ``model`` as for :meth:`unit`).

        >>> index.unit_at("blocks.4", 17, row=3)
        ((2, 5), (48, 80, 144, 176))
        """
        self.check_unit(layer, unit)
        return search.unit_at(self, layer, unit, row, box=self._box(layer, model))

    def _box(self, layer: str, model) -> search.BoxFn:
        """The receptive field of a position of ``layer``'s map, from ``model``'s layer catalogue."""
        self.layer(layer)  # an unknown layer fails before a model is loaded
        model = self.checked_model(model)
        info, size = model.layers.get(layer), model.input_size
        return lambda y, x: info.box(y, x, input_size=size)

    def duplicates(self, *, threshold: float = organize.DUPLICATE_COSINE, progress: bool | None = None,
                   on_note=None) -> list[dict]:
        """Groups of duplicate files, ``[{"kind": "copies" | "similar", "paths": [...], "pairs": [...],
        "threshold": {...}}]`` (:func:`convscope.index.duplicates.duplicates`); ``threshold``: the
        cosine of every pair of a similar group; ``on_note(line)``: once, where the index has no
        perceptual hashes."""
        return organize.duplicates(self, threshold=threshold, progress=progress, on_note=on_note)

    def albums(self, *, confidence: float = organize.ALBUM_CONFIDENCE) -> list[dict]:
        """Albums ``[{"album", "kind", "paths", "covers", "why"}]`` (:func:`convscope.index.albums.albums`)."""
        return organize.albums(self, confidence=confidence)

    def places(self) -> list[browse.Node]:
        """Countries -> regions -> cities with their file counts (:func:`convscope.index.browse.place_tree`;
        empty for an index without places); a place's files: :func:`~convscope.index.browse.place_files`.

        >>> [(c.name, c.count) for c in index.places()]      # [('France', 12)]
        """
        return browse.place_tree(self)

    def timeline(self) -> list[browse.Node]:
        """Years -> months with their file counts, by the date taken, else the file's time
        (:func:`convscope.index.browse.period_tree`); a period's files: :func:`~convscope.index.browse.period_files`.

        >>> [(y.name, y.count) for y in index.timeline()]    # [('2015', 40)]
        """
        return browse.period_tree(self)

    def explain(self, results: Sequence[search.Result], out_dir: str | os.PathLike, *, model=None) -> list[str]:
        """One PNG per result in ``out_dir``: Grad-CAM of the top matched class, or the unit's box."""
        from .explain import write_explanations

        return write_explanations(self.checked_model(model), results, out_dir)

    # ----------------------------------------------------------------- helpers

    def row_at(self, record: dict, time: float | None) -> int:
        """The entry of a file record: a photo's one, or a video's frame nearest ``time`` (else
        its first)."""
        first, rows = record["first_row"], record["rows"]
        if time is None or record["kind"] != "video":
            return first
        times = np.asarray(self.entry_time[first:first + rows])
        return first + int(np.argmin(np.abs(times - time)))

    def checked_model(self, model=None):
        """The model this index was built with: ``model`` (a module or :class:`~convscope.models.LoadedModel`)
        once its weights are checked against the index's fingerprint, else the model the index
        records loaded again (:func:`convscope.models.load_recorded`: its weights file, its
        seeded random weights or its spec's pretrained ones, with the index's preprocessing);
        a one-line :class:`~convscope.errors.ConvscopeError` when neither can be had."""
        from .features import model_fingerprint
        from ..models import as_loaded, load_recorded

        spec = self.meta["model"]["spec"]
        if model is None:
            try:
                model = load_recorded(self.meta["model"], device="cpu", preprocessing=self.meta.get("preprocessing"),
                                      what="index")
            except ConvscopeError as exc:
                raise ConvscopeError(f"this index was built with {spec!r}, which cannot be loaded again here ({exc}); pass model=") from None
        model = as_loaded(model)
        # hashing every weight costs a pass over them; a module checked before is checked again
        # only if one of its tensors changed since (torch counts in-place changes in _version)
        versions = tuple(t._version for t in model.module.state_dict().values())
        last = self._checked
        if last is not None and last[0]() is model.module and last[1] == versions:
            return model
        if model_fingerprint(model) != self.meta["model"]["fingerprint"]:
            raise ConvscopeError(f"the model given is not the one this index was built with ({spec!r}, "
                                 f"{self.meta['model']['weights']}); pass that model")
        self._checked = (weakref.ref(model.module), versions)
        return model

    def embed(self, path: str | os.PathLike, *, model=None, time: float | None = None) -> np.ndarray:
        """The embedding (D,) float32 of any photo (or a video's frame at ``time``, default 0),
        computed with the index's model."""
        return self.features(path, model=model, time=time).embedding[0]

    def features(self, path: str | os.PathLike, *, model=None, time: float | None = None):
        """What the index's model gives of any photo (or a video's frame at ``time``), as the
        build computes it: :class:`~convscope.index.features.Features` with one row."""
        import torch

        from ..data import load_image
        from . import media
        from .features import Extractor
        from .signals import decode_size

        model = self.checked_model(model)
        target_size = decode_size(model.preprocessing.resize) if self.meta["draft"] else None  # as the index decoded
        if media.is_video(path):
            image = media.frame_at(path, time or 0.0, target_size=target_size)
        else:
            image = load_image(path, target_size=target_size)
        if self._extractor is None or self._extractor.model is not model:  # its set-up costs two forward passes
            self._extractor = Extractor(model, [layer["name"] for layer in self.layers])
        x = model.transform(image)[None]
        return self._extractor(torch.as_tensor(x))

    def __repr__(self) -> str:
        return f"Index({str(self.root)!r}, entries={self.entries})"


