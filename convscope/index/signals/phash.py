"""The perceptual hash: 64 bits that keep the picture's layout, four per entry (``phash``,
(N, 4) uint64: the picture, its mirror image, its centre, its centre mirrored), what tells a copy of a photo from a
different photo of the same subject (:mod:`convscope.index.duplicates`).

Each hash is imagehash's ``phash`` (the same bits, checked in the tests): the picture in grey
at 32 x 32 pixels, its 2-D DCT, and of the 8 x 8 lowest frequencies one bit each, set where the
coefficient is above their median. A resized or recompressed copy keeps almost every bit; a
different photo, even of the same cat, agrees on about half (on the dev photos no two
different photos came nearer than 10 bits). Mirroring flips the sign of the coefficients of odd
horizontal frequency, so the mirror image's hash costs nothing more (the second column); a
crop moves the layout (a tenth off each side: 12 to 28 bits), so the third column hashes the
picture's centre (:data:`CENTRE` of each side), which a cropped copy's whole picture matches
(2 to 4 bits), and the fourth its mirror image (a crop of a mirrored copy): :func:`copy_distance`
takes the nearest of these.

It is computed in the decoding worker from the decoded picture, and needs no model output
(:attr:`~.base.Signal.needs_model` False): an index built before it gets it on an update
without running the network.
"""
from __future__ import annotations

import numpy as np

from .base import Signal

#: Side of the grey picture the DCT is taken of, and of the block of its lowest frequencies kept.
_SIDE, _KEEP = 32, 8
_n = np.arange(_SIDE)
#: The DCT-II matrix (unnormalized, as scipy.fftpack's ``dct``): ``C @ x`` is the DCT of ``x``.
_DCT = 2 * np.cos(np.pi * _n[:, None] * (2 * _n[None, :] + 1) / (2 * _SIDE))
#: Sign of each kept coefficient in the mirror image (odd horizontal frequencies flip).
_MIRROR = np.where(np.arange(_KEEP) % 2 == 1, -1.0, 1.0)[None, :]
#: The part of each side the third hash keeps: the picture's centre.
CENTRE = 0.8
_WEIGHTS = (np.uint64(1) << np.arange(_KEEP * _KEEP - 1, -1, -1, dtype=np.uint64))


def _bits(low: np.ndarray) -> np.uint64:
    """The 64 bits of an 8 x 8 block of DCT coefficients: above their median, first bit highest."""
    bits = (low > np.median(low)).ravel()
    return np.uint64(np.bitwise_or.reduce(_WEIGHTS[bits])) if bits.any() else np.uint64(0)


def _hashes(image) -> tuple[int, int]:
    """imagehash's ``phash`` of a PIL picture and of its mirror image, as 64-bit integers."""
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT @ grey @ _DCT.T)[:_KEEP, :_KEEP]
    return int(_bits(low)), int(_bits(low * _MIRROR))


def phash(image) -> tuple[int, int, int, int]:
    """The perceptual hashes of a PIL picture: of the picture, of its mirror image, of its
    centre (:data:`CENTRE` of each side) and of the centre's mirror image, as 64-bit integers
    (imagehash's ``phash(image)``, ``phash(ImageOps.mirror(image))``, ``phash(centre)``,
    ``phash(ImageOps.mirror(centre))``, bit for bit).

    >>> whole, mirrored, centre, centre_mirrored = phash(Image.open("cat.jpg"))
    """
    w, h = image.size
    dx, dy = round(w * (1 - CENTRE) / 2), round(h * (1 - CENTRE) / 2)
    whole, mirrored = _hashes(image)
    return (whole, mirrored, *_hashes(image.crop((dx, dy, w - dx, h - dy))))


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between hashes ``a`` and ``b`` (uint64 arrays, broadcast): 0 to 64."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int16)


def copy_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits between two pictures from their ``phash`` rows (..., 4): the nearest of the whole
    pictures, one whole and the other mirrored, and one whole and the other's centre, as it is
    or mirrored (a crop)."""
    near = distance(a[..., 0], b[..., 0])
    for x, y in ((0, 1), (2, 0), (0, 2), (3, 0), (0, 3)):
        near = np.minimum(near, distance(a[..., x], b[..., y]))
    return near


class PerceptualHash(Signal):
    name = "phash"
    needs_model = False

    def entry(self, image):
        return {"phash": phash(image)}

    def arrays(self, extractor):
        return {"phash": (np.uint64, (4,))}

    def rows(self, features, entries):
        # (an entry without it: a file an update could not read again, copied as it was)
        return {"phash": np.array([e.get("phash", (0, 0, 0, 0)) for e in entries], np.uint64).reshape(len(entries), 4)}

    def stored(self, store, first, stop):
        return {"phash": hashes(store)[first:stop]}


def hashes(store) -> np.ndarray | None:
    """The ``phash`` rows of an index (memory-mapped, (N, 4) uint64), or None where it was built
    before the signal (an update adds it)."""
    if "phash" not in store.signals:
        return None
    return store.array("phash")


__all__ = ["PerceptualHash", "copy_distance", "distance", "hashes", "phash"]
