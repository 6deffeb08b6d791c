"""Uploaded images decoded within a memory budget: bytes in, a small 8-bit RGB PIL image out.

The cost of decoding is counted in bytes before any pixel is decoded, from the header that
``Image.open`` reads: width x height x what PIL stores per pixel of the file's mode (1 byte for
L and P, 2 for 16-bit grey, 4 for RGB, RGBA, CMYK, 32-bit and float). What is over the budget is
refused with :class:`OverBudget` (HTTP 413) and a one-line reason. What is under it is decoded
at the smallest scale that still gives the model enough pixels:

* a JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (``Image.draft``), so a 40 Mpx
  photo never exists at full size;
* other formats are decoded whole (a PNG cannot be decoded at reduced scale), then converted to
  RGB and box-reduced one strip of rows at a time, so only the file's own decoded pixels and a
  few MB of strips exist at once.

16-bit and 32-bit data become 8-bit with integer or float32 arithmetic (``(v + 128) // 257``
for 16-bit, the same value as rounding ``v / 65535 * 255``), never through a float64 copy of
the whole image. Nothing here touches the process's warning filters, so it needs no lock.

>>> image = decode_upload(data, DecodeBudget(max_bytes=128 << 20, min_side=512))
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data import DECODER_COPIES, PIXEL_BYTES, STRIP_BYTES
from ..exif import EXIF_ORIENTATION, EXIF_TRANSPOSE
from ..errors import ConvscopeError, ImageError

#: The largest decode of one upload, in bytes of decoded pixels (a 24 Mpx RGB PNG is 96 MB).
MAX_DECODE_BYTES = 128 * 1024 * 1024
#: Largest upload, in pixels (width x height), whatever the format.
MAX_UPLOAD_PIXELS = 40_000_000
class OverBudget(ConvscopeError):
    """An image whose decoding would take more memory than the budget allows (HTTP 413)."""

    status = 413


@dataclasses.dataclass(frozen=True)
class DecodeBudget:
    """How much one decode may cost and how small its result may be.

    ``max_bytes``: the most bytes of decoded pixels (see :func:`decode_cost`); ``max_pixels``:
    the most pixels, width x height; ``min_side``: the result's shorter side is reduced by a
    whole factor as long as it stays at least this many pixels (0: never reduced).
    """

    max_bytes: int = MAX_DECODE_BYTES
    max_pixels: int = MAX_UPLOAD_PIXELS
    min_side: int = 0

    def __post_init__(self):
        if self.max_bytes < 1 or self.max_pixels < 1 or self.min_side < 0:
            raise ValueError(f"a decode budget needs max_bytes and max_pixels of at least 1 and min_side of "
                             f"at least 0, got {self.max_bytes}, {self.max_pixels}, {self.min_side}")


def pixel_bytes(mode: str) -> int:
    """Bytes PIL stores per pixel of ``mode``."""
    return PIXEL_BYTES.get(mode, 4)


def decode_cost(img: Image.Image, factor: int = 1) -> int:
    """Bytes that decoding the opened (not yet loaded) ``img`` at its current (drafted) size and
    reducing it by ``factor`` take: its pixels (twice for decoders that keep their own copy)
    and, unless it is RGB already and kept at full size, the RGB result."""
    w, h = img.size
    cost = w * h * pixel_bytes(img.mode) * DECODER_COPIES.get(img.format or "", 1)
    if img.mode != "RGB" or factor > 1:
        cost += math.ceil(w / factor) * math.ceil(h / factor) * pixel_bytes("RGB")
    return cost


def reduce_factor(size: tuple[int, int], min_side: int) -> int:
    """The largest whole factor that keeps the shorter side of ``size`` at least ``min_side``."""
    if min_side <= 0:
        return 1
    return max(1, min(size) // min_side)


def decode_upload(data: bytes, budget: DecodeBudget = DecodeBudget(), name: str = "upload") -> Image.Image:
    """``data`` (the bytes of an image file) as an 8-bit RGB PIL image, upright per its EXIF
    orientation, reduced to about ``budget.min_side`` on its shorter side.

    Raises :class:`OverBudget` when the image has more than ``budget.max_pixels`` pixels or its
    decoding would take more than ``budget.max_bytes``, and :class:`ImageError` (``name`` and a
    one-line reason) for what is not an image or is damaged.
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w == 0 or h == 0:
                raise ImageError(name, "image has no pixels")
            if w * h > budget.max_pixels:
                raise OverBudget(f"the image is too large: {w}x{h} = {w * h:,} pixels, the limit is "
                                 f"{budget.max_pixels:,}; send a smaller image")
            factor = reduce_factor((w, h), budget.min_side)
            if img.format in ("JPEG", "MPO") and factor > 1:  # MPO: a phone's JPEG with extra frames
                # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: ask for the size we need
                img.draft("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
            factor = reduce_factor(img.size, budget.min_side)
            cost = decode_cost(img, factor)
            if cost > budget.max_bytes:
                raise OverBudget(
                    f"the image is too large to decode: {w}x{h} {_describe(img)} takes {cost / 1e6:.0f} MB, the limit "
                    f"is {budget.max_bytes / 1e6:.0f} MB; send a smaller image or a JPEG"
                )
            img.load()  # decode now, so truncation shows here
            orientation = img.getexif().get(EXIF_ORIENTATION)
            rgb = to_rgb_reduced(img, factor)
    except (ImageError, OverBudget):
        raise
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own limit (far above ours) fired first; a warning is raised when another
        # thread's warnings.catch_warnings has turned it into an error meanwhile
        raise OverBudget("the image is too large; possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise ImageError(name, f"corrupt image ({reason})") from None
    except MemoryError:
        raise OverBudget("the image is too large to decode in memory") from None
    if orientation in EXIF_TRANSPOSE:
        rgb = rgb.transpose(EXIF_TRANSPOSE[orientation])
    return rgb


def _describe(img: Image.Image) -> str:
    bits = {"1": "1-bit", "I": "32-bit", "F": "float"}.get(img.mode, "16-bit" if img.mode.startswith("I;16") else "8-bit")
    return f"{bits} {img.mode}"


def to_rgb_reduced(img: Image.Image, factor: int = 1) -> Image.Image:
    """A loaded image of any mode -> 8-bit RGB, box-reduced by ``factor``, converted one strip of
    rows at a time so no full-size copy of another mode is made."""
    w, h = img.size
    if factor <= 1 and not _is_wide(img.mode):
        return _strip_to_rgb(img, None)
    extrema = img.getextrema() if img.mode in ("I", "F") else None
    rows = max(1, STRIP_BYTES // (4 * w * factor)) * factor  # a multiple of the factor
    out = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    for top in range(0, h, rows):
        strip = _strip_to_rgb(img.crop((0, top, w, min(h, top + rows))), extrema)
        if factor > 1:
            strip = strip.reduce(factor)
        out.paste(strip, (0, top // factor))
    return out


def _is_wide(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _strip_to_rgb(img: Image.Image, extrema) -> Image.Image:
    """One strip (or a small whole image) -> 8-bit RGB, as :func:`convscope.data.to_rgb` does, with
    16-bit, 32-bit and float data scaled by integer or float32 arithmetic (``extrema``: the
    whole image's (min, max) for modes I and F, so every strip is scaled alike)."""
    mode = img.mode
    if not _is_wide(mode):
        from ..data import to_rgb

        return to_rgb(img)
    arr = np.asarray(img)
    if mode.startswith("I;16"):
        grey = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    else:
        lo, hi = extrema if extrema is not None else img.getextrema()
        a = arr.astype(np.float32)
        if mode == "I" and lo >= 0 and hi <= 65535:
            a = a if hi <= 255 else a * np.float32(255 / 65535)
        elif hi > lo:
            a = (a - np.float32(lo)) * np.float32(255 / (hi - lo))
        else:
            a = np.zeros_like(a)
        grey = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")

