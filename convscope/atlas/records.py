"""The records of one atlas build: what the build steps fill in and the store writes, one
dataclass per row of ``atlas.sqlite`` (``examples``, ``images``, and the photo behind each image).

Names: an *image* is one model input, a crop of a photo, named inside the build by its
``image_id`` (:meth:`convscope.scan.Scan.image_id`). The reader (:meth:`convscope.atlas.Atlas.examples`)
gives back the same names and box orders: ``path`` and ``sha256`` of the photo, ``window``
(left, top, right, bottom) of the crop, ``pre``, ``box`` and ``display_box`` (top, left, bottom,
right).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ExampleRecord:
    """One of a unit's top examples: ``value`` (the layer's output) at (``y``, ``x``) on the
    layer's map, in image ``image_id``; ``box`` (top, left, bottom, right) its receptive field
    on the model input, ``box_original`` the same on the photo; ``patch`` and ``projections``
    ({method: path}) the files written for it, relative to the atlas folder; ``pre`` the
    pre-activation at (``y``, ``x``) where it ranks the layer; ``display_box`` the part of the
    model input its projection pictures show (``box``, or the energy crop inside it)."""

    layer: str
    layer_index: int
    unit: int
    rank: int
    image_id: int
    value: float
    y: int
    x: int
    box: tuple[int, int, int, int]
    box_original: tuple[int, int, int, int] | None = None
    patch: str | None = None
    projections: dict[str, str] = dataclasses.field(default_factory=dict)
    pre: float | None = None
    display_box: tuple[int, int, int, int] | None = None


@dataclasses.dataclass
class ImageRecord:
    """One model input that some example is on: crop ``crop`` of photo ``photo`` (an index into
    the scan's paths); ``window`` (left, top, right, bottom) the crop on the photo once read;
    ``written`` the patch files already written for it (deep layers share whole-input boxes)."""

    image_id: int
    photo: int
    crop: int
    window: tuple[int, int, int, int] | None = None
    written: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class PhotoRecord:
    """A photo that the build reads again: its absolute ``path``, the ``sha256`` of the bytes the
    scan decoded, its ``size`` (width, height) once read again, or the ``error`` why it could not
    be read again (written to the atlas: :meth:`convscope.atlas.Atlas.unreadable`)."""

    index: int
    path: str
    sha256: str | None
    size: tuple[int, int] | None = None
    error: str | None = None


@dataclasses.dataclass
class Records:
    """Every record of a build: ``examples`` in (layer, unit, rank) order, ``images`` by image id,
    ``photos`` by index into the scan's paths, and ``methods``: per layer, the projection methods
    computed where they are not the build's (guided backprop standing in for the deconvnet where
    the deconvnet does not depend on the image)."""

    examples: list[ExampleRecord]
    images: dict[int, ImageRecord]
    photos: dict[int, PhotoRecord]
    methods: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def methods_of(self, layer: str, methods: tuple[str, ...]) -> tuple[str, ...]:
        """The projection methods of ``layer``'s examples: its own (guided backprop standing in
        for the deconvnet, :func:`convscope.backproject.layer_methods`), else the build's ``methods``."""
        return tuple(self.methods.get(layer, methods))


__all__ = ["ExampleRecord", "ImageRecord", "PhotoRecord", "Records"]
