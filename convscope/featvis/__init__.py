"""Feature visualization by optimization: images that make a unit fire.

Lucent's four-way split: :mod:`.param` (how an image is stored: Fourier space with 1/f scaling
and decorrelated colour, or pixels), :mod:`.transforms` (random jitter, scale and rotation at
every step), :mod:`.objectives` (what to maximize; they compose with + and *) and
:mod:`.render` (the batched, seeded optimization loop); :mod:`.export` writes the results.

>>> from convscope.models import load_model
>>> from convscope import featvis
>>> result = featvis.render(load_model(), "blocks.2", "0-7", steps=256)   # doctest: +SKIP
>>> result.sheet().save("blocks.2.png")                                    # doctest: +SKIP
"""
from .objectives import Context, Objective, channel, direction, diversity, l2, neuron, total_variation
from .param import PARAMS, FourierImage, PixelImage, fourier, pixel
from .render import FeatvisResult, UnitRangeError, contact_sheet, render, resolve_units
from .transforms import Compose, Jitter, Pad, RandomRotate, RandomScale, standard_transforms

__all__ = [
    "render", "FeatvisResult", "UnitRangeError", "contact_sheet", "resolve_units",
    "Objective", "Context", "channel", "neuron", "direction", "diversity", "total_variation", "l2",
    "PARAMS", "FourierImage", "PixelImage", "fourier", "pixel",
    "Compose", "Pad", "Jitter", "RandomScale", "RandomRotate", "standard_transforms",
]
