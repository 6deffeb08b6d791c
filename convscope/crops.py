"""Crop geometry: several views per photo, each scanned as its own image (:class:`Crops`).

A crop ``c`` of photo ``p`` (its index in the whole list of photos) is image
:meth:`Crops.image_id` ``(p, c) = p * count + c``: the one formula for image ids, read back by
:meth:`Crops.photo_crop`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Crops:
    """Several views per photo, each scanned as its own image: grid ``levels``.

    Level 1 is the whole photo (exactly what ``classify`` sees after the model's resize and
    centre crop). Level ``n`` is an ``n x n`` grid of windows, each ``2 / (n + 1)`` of the photo's
    width and height, so that neighbours overlap by half and the grid covers the photo; each
    window then goes through the model's transform like a whole photo. ``Crops((1, 2, 3))`` gives
    1 + 4 + 9 = 14 images per photo, a crop ``c`` of photo ``p`` having image id
    ``p * 14 + c`` (:meth:`image_id`).

    >>> Crops.parse("1,2,3").count
    14
    """

    levels: tuple[int, ...] = (1,)

    def __post_init__(self):
        if not self.levels or any((not isinstance(n, int)) or n < 1 or n > 16 for n in self.levels):
            raise ArgumentError(f"`crops` levels must be whole numbers from 1 to 16, got {self.levels!r}", param="crops")
        if len(set(self.levels)) != len(self.levels):
            raise ArgumentError(f"`crops` levels repeat: {self.levels!r}", param="crops")

    @classmethod
    def parse(cls, value) -> "Crops":
        """``None``/1 -> whole photos; ``"1,2,3"`` or ``(1, 2, 3)`` -> those grid levels; an int
        ``n`` -> levels 1..n."""
        if value is None:
            return cls()
        if isinstance(value, Crops):
            return value
        if isinstance(value, int):
            return cls(tuple(range(1, value + 1)))
        if isinstance(value, str):
            try:
                levels = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
            except ValueError:
                raise ArgumentError(f"`crops` must be grid levels like '1,2,3', got {value!r}", param="crops") from None
            return cls(levels)
        return cls(tuple(int(v) for v in value))

    @property
    def count(self) -> int:
        return sum(n * n for n in self.levels)

    def windows(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The ``count`` windows as (left, top, right, bottom) photo pixels, level by level,
        row-major within a level."""
        out = []
        for n in self.levels:
            ww = width if n == 1 else max(1, round(2 * width / (n + 1)))
            wh = height if n == 1 else max(1, round(2 * height / (n + 1)))
            for i in range(n):
                top = 0 if n == 1 else round(i * (height - wh) / (n - 1))
                for j in range(n):
                    left = 0 if n == 1 else round(j * (width - ww) / (n - 1))
                    out.append((left, top, left + ww, top + wh))
        return out

    def image_id(self, photo, crop):
        """The image id of crop ``crop`` of photo ``photo`` (its index in the whole photo list,
        a scan's ``offset`` included): ``photo * count + crop``. Ints or broadcasting tensors.

        >>> Crops((1, 2)).image_id(3, 4)
        19
        """
        return photo * self.count + crop

    def photo_crop(self, image_id: int) -> tuple[int, int]:
        """(photo, crop) of an image id: the inverse of :meth:`image_id`."""
        photo, crop = divmod(int(image_id), self.count)
        return photo, crop

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "count": self.count}


class CropTransform:
    """PIL image -> (count, 3, H, W) model inputs, one per window (picklable for workers)."""

    def __init__(self, transform: Callable, crops: Crops):
        self.transform = transform
        self.crops = crops

    def __call__(self, img):
        return torch.stack([self.transform(img.crop(box)) for box in self.crops.windows(*img.size)])


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(resize)`` (shorter side to ``resize``)."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


__all__ = ["CropTransform", "Crops", "resized_size"]
