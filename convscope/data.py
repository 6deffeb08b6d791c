"""Image sources (folders, globs, list files) and robust decoding into the model's input.

Bad files never stop a run: each is rejected with a one-line reason (:class:`ImageError`) and
counted, and the rest carry on. Decoding runs in DataLoader worker processes.

>>> paths, errors = expand_inputs(["photos/", "extra/*.jpg", "@more.txt"])
>>> for batch in iter_batches(paths, model.transform, batch_size=32):
...     logits = model(batch.tensors)
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import io
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from . import formats
from .errors import ImageError
from .exif import EXIF_TRANSPOSE, QUARTER_TURNS, Facts, orientation, read_facts
from .files import atomic_write, cache_dir

IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jp2 .avif"
                             .split()) | formats.HEIF_EXTENSIONS | formats.RAW_EXTENSIONS  # (convscope.formats)
#: Largest image accepted, in pixels (width x height); larger files are rejected as possible
#: decompression bombs. 100 megapixels covers any camera; raise it with ``max_pixels``.
MAX_PIXELS = 100_000_000
#: Most memory one decode may take, in bytes (:func:`decode_cost`): 1 GiB admits any camera photo
#: (a 100 Mpx RGB JPEG takes 400 MB, 800 MB upright); a server passes a smaller ``max_bytes``.
MAX_BYTES = 1 << 30
_GLOB_CHARS = set("*?[")


@dataclasses.dataclass
class Batch:
    """Decoded images: ``tensors`` (B, 3, H, W) model inputs, their ``indices`` into the path list
    and ``paths``; ``errors`` are the files of this stretch that could not be read. With
    ``iter_batches(..., sha256=True)``, ``hashes`` holds the sha256 (hex) of each decoded file."""

    indices: list[int]
    paths: list[str]
    tensors: torch.Tensor
    errors: list[ImageError]
    hashes: list[str] = dataclasses.field(default_factory=list)


def expand_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> tuple[list[Path], list[ImageError]]:
    """Turn command-line style inputs into image paths, in a stable order.

    Each input is a file (always tried, whatever its extension), a folder (its files with image
    extensions, recursively, sorted), a glob pattern, or ``@LIST`` (a text file with one path per
    line, relative to the list's folder; blank lines and ``#`` comments skipped). Inputs that name
    nothing, or that cannot be looked at (a name too long, a folder not readable), come back as
    errors, one per input or subfolder; this never raises for one bad input. A special file
    (FIFO, device, socket) named on its own is passed on, and :func:`load_image` refuses it
    without opening it. Duplicates are kept once.
    """
    paths: list[Path] = []
    errors: list[ImageError] = []
    for item in inputs:
        text = os.fspath(item)
        kind, problem = _stat_kind(text)
        if text.startswith("@") and kind is None:
            listfile = Path(text[1:])
            try:
                lines = listfile.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                errors.append(ImageError(text, f"cannot read list file ({_os_words(exc)})"))
                continue
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    paths.append(p if p.is_absolute() else listfile.parent / p)
            continue
        p = Path(text)
        if kind == "dir":
            found, unreadable = _image_files(p, recursive)
            paths.extend(found)
            errors.extend(unreadable)
        elif kind is not None:
            paths.append(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if _stat_kind(m)[0] == "file")
            if not matches:
                errors.append(ImageError(text, "no file matches this pattern"))
            paths.extend(matches)
        else:
            errors.append(ImageError(text, problem))
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, errors


def _stat_kind(path: str | os.PathLike) -> tuple[str | None, str]:
    """("dir" | "file" | "special", "") for what ``path`` names, or (None, the reason) when
    nothing can be seen there; never raises."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None, "no such file or folder"
        return None, _os_reason(exc)
    except ValueError:  # a NUL byte in the name
        return None, "not a valid file name (it holds a NUL character)"
    if stat.S_ISDIR(mode):
        return "dir", ""
    return ("file" if stat.S_ISREG(mode) else "special"), ""


#: The reason a folder's link whose target is missing is skipped (said once, not dropped).
DANGLING_LINK = "dangling link (its target is missing)"


def _image_files(folder: Path, recursive: bool) -> tuple[list[Path], list[ImageError]]:
    """The regular files with image extensions under ``folder`` (sorted as ``Path`` objects, symlinked
    folders not followed), and one error per subfolder that could not be listed and per dangling link."""
    found: list[Path] = []
    errors: list[ImageError] = []

    def unreadable(exc: OSError) -> None:
        errors.append(ImageError(exc.filename if exc.filename is not None else folder,
                                 f"cannot list folder ({_os_reason(exc)})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        if not recursive:
            dirs.clear()
        base = folder if root == str(folder) else Path(root)
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                p = base / name
                kind = _stat_kind(p)[0]
                if kind == "file":
                    found.append(p)
                elif kind is None and os.path.islink(p):
                    errors.append(ImageError(p, DANGLING_LINK))
    return sorted(found), errors


#: Reasons for the errors of the operating system that a person can act on.
_ERRNO_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def _os_words(exc: OSError) -> str:
    return _ERRNO_REASONS.get(exc.errno) or exc.strerror or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    """One line for an OSError of looking at or opening a file."""
    reason = _ERRNO_REASONS.get(exc.errno)
    return reason or f"cannot read ({exc.strerror or type(exc).__name__})"


_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str | None:
    """Why a file of ``st_mode`` cannot be an image file, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image"
    kind = next((name for test, name in _SPECIAL if test(mode)), "a special file")
    return f"not a regular file ({kind})"


# --------------------------------------------------------------------------- decoding


class ImageTooLarge(ImageError):
    """An image over the decoder's budget (``max_pixels`` or ``max_bytes``); a server answers 413."""


#: Bytes PIL keeps per pixel, by mode (Pillow's Storage.c): 1 for "1" (one byte per pixel in
#: memory, not a bit), L and P; 2 for 16-bit grey; 4 for every other mode, RGB included.
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Decoders that hold a second copy of the pixels while they decode (libwebp's own buffer).
DECODER_COPIES = {"WEBP": 2, "HEIF": 2}
#: Conversions to RGB run one strip of rows of about this many bytes at a time.
STRIP_BYTES = 4 * 1024 * 1024
_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def pixel_bytes(mode: str) -> int:
    """Bytes PIL stores per pixel of ``mode`` (RGB takes 4: PIL pads it)."""
    return PIXEL_BYTES.get(mode, 4)


def decode_cost(img: Image.Image, factor: int = 1, rotated: bool = False,
                full_size: tuple[int, int] | None = None) -> int:
    """Bytes of memory that decoding the opened (not yet loaded) ``img`` at its current (drafted)
    size takes, reduced by ``factor`` and turned upright if ``rotated``: its pixels (twice for
    decoders that keep their own copy; a progressive JPEG's coefficients at ``full_size``, its
    size before ``draft``), plus the RGB result unless it is RGB already at full size; an
    upright copy is made of the RGB result after the decoded pixels are freed.

    >>> decode_cost(Image.open("grey16.png"))   # 6300 x 6300, mode I;16: 2 + 4 bytes per pixel
    238140000
    """
    w, h = img.size
    out = -(-w // factor) * -(-h // factor) * pixel_bytes("RGB")
    cost = w * h * pixel_bytes(img.mode) * DECODER_COPIES.get(img.format or "", 1)
    cost += _jpeg_coefficients(img, full_size or img.size)
    if img.mode != "RGB" or factor > 1:
        cost += out
    return max(cost, 2 * out) if rotated else cost


def _jpeg_coefficients(img: Image.Image, size: tuple[int, int]) -> int:
    """Bytes libjpeg holds for a progressive JPEG: every DCT coefficient of the full-size image
    (2 bytes each, per component at its sampling), whatever the drafted scale (measured: 70 MB
    for a 24 Mpx 4:2:0 photo)."""
    if img.format != "JPEG" or not img.info.get("progressive"):
        return 0
    layers = getattr(img, "layer", None) or []  # (id, horizontal, vertical sampling, table)
    w, h = size
    if not layers:
        return 2 * 3 * w * h
    hmax = max(layer[1] for layer in layers) or 1
    vmax = max(layer[2] for layer in layers) or 1
    return int(2 * w * h * sum(layer[1] * layer[2] for layer in layers) / (hmax * vmax))


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, *, max_bytes: int = MAX_BYTES,
               target_size: int | None = None) -> Image.Image:
    """Open any image file as an 8-bit RGB PIL image, upright per its EXIF orientation.

    Grayscale, palette, CMYK, 16-bit and float images are converted; transparency is composited
    on white. The size is checked from the header before any pixel is decoded: more than
    ``max_pixels`` (width x height) or more than ``max_bytes`` of memory to decode
    (:func:`decode_cost`: mode and bit depth count) raises :class:`ImageTooLarge`. With
    ``target_size`` (pixels, the shorter side the model resizes to, say 256) a large image is
    decoded at reduced scale, its shorter side kept at least ``target_size``: a JPEG by libjpeg
    at 1/2, 1/4 or 1/8 (``Image.draft``), then any format by a whole box-filter factor. The pixels
    then differ slightly from a full decode resized; ``None`` (the default) decodes every pixel.

    Raises :class:`ImageError` with a one-line reason for a missing, empty, unreadable,
    special (FIFO, device, socket: never opened), truncated, corrupt or non-image file.

    >>> img = load_image("photos/cat.jpg")
    >>> small = load_image("photos/cat.jpg", target_size=256)   # min(small.size) >= 256
    """
    return _load(Path(path), _Budget.of(max_pixels, max_bytes, target_size), digest=False).image


def load_image_hashed(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, *, max_bytes: int = MAX_BYTES,
                      target_size: int | None = None) -> tuple[Image.Image, str]:
    """:func:`load_image`, and the sha256 (hex) of the very bytes it decoded: the file is read
    once, so the hash names exactly the picture that was seen.

    >>> img, sha256 = load_image_hashed("photos/cat.jpg")
    """
    photo = _load(Path(path), _Budget.of(max_pixels, max_bytes, target_size), digest=True)
    return photo.image, photo.sha256


@dataclasses.dataclass
class Photo:
    """A decoded photo and what the same read of its file tells: ``image`` (8-bit RGB, upright; smaller
    than the file where ``target_size`` reduced it), ``size`` (width, height of the file's pixels, upright),
    ``sha256`` (hex, of the bytes decoded) and its EXIF's :class:`~convscope.exif.Facts`, by their names."""

    image: Image.Image
    size: tuple[int, int]
    taken: str | None = None
    sha256: str | None = None
    gps: tuple[float, float] | None = None
    offset: int | None = None
    notes: tuple[str, ...] = ()


def load_photo(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, *, max_bytes: int = MAX_BYTES,
               target_size: int | None = None) -> Photo:
    """:func:`load_image_hashed` with the file's facts: the file is opened and read once, and its
    pixels, full size, EXIF facts (date, offset, position) and sha256 come from those bytes.

    >>> photo = load_photo("holiday/beach.jpg", target_size=256)
    >>> photo.size, photo.taken, photo.gps   # ((2000, 1500), '2021-07-04T12:30:00', (45.764, 4.8357))
    """
    return _load(Path(path), _Budget.of(max_pixels, max_bytes, target_size), digest=True, facts=True)


def load_image_bytes(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS, *,
                     max_bytes: int = MAX_BYTES, target_size: int | None = None) -> Image.Image:
    """:func:`load_image` for the bytes of an image file held in memory (an upload); ``name``
    is what the :class:`ImageError` names. The file's own bytes count towards ``max_bytes``.

    >>> img = load_image_bytes(request_body, "upload", max_bytes=128 << 20, target_size=256)
    """
    budget = _Budget.of(max_pixels, max_bytes, target_size)
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, budget, held=len(data)).image


@dataclasses.dataclass(frozen=True)
class _Budget:
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    target_size: int | None = None

    @classmethod
    def of(cls, max_pixels: int, max_bytes: int, target_size: int | None) -> "_Budget":
        for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if target_size is not None and (not isinstance(target_size, int) or target_size < 1):
            raise ValueError(f"target_size must be a positive whole number of pixels or None, got {target_size!r}")
        return cls(max_pixels, max_bytes, target_size)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary if it is a regular file, else :class:`ImageError`
    (one line: a FIFO, a device, a folder, a name that cannot be opened). The one opening of an
    input file (photos here, videos and hashes in :mod:`convscope.index.media`). Looked at before
    it is opened (opening a FIFO blocks until a writer comes; opening a device can act on it);
    ``O_NONBLOCK`` keeps a file swapped for a FIFO meanwhile from blocking, ``fstat`` checks it.

    >>> with open_regular("photos/cat.jpg") as f:
    ...     head = f.read(2)
    """
    try:
        why = _not_regular(os.stat(path).st_mode)
        if why:
            raise ImageError(path, why)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    except ValueError:
        raise ImageError(path, "not a valid file name (it holds a NUL character)") from None
    f = os.fdopen(fd, "rb")
    why = _not_regular(os.fstat(fd).st_mode)
    if why:
        f.close()
        raise ImageError(path, why)
    return f


def _load(path: Path, budget: _Budget, digest: bool, facts: bool = False) -> Photo:
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        if not digest and not formats.is_raw(path):  # LibRaw reads a RAW file from memory
            if st.st_size == 0:
                raise ImageError(path, "empty file (0 bytes)")
            return _decode(f, path, budget, facts=facts)
        try:  # the size a file claims is not what it holds (/proc): what is read decides
            data = f.read()
        except OSError as exc:
            raise ImageError(path, _os_reason(exc)) from None
        if not data:
            raise ImageError(path, "empty file (0 bytes)")
        photo = _decode(io.BytesIO(data), path, budget, held=len(data), facts=facts)
        photo.sha256 = hashlib.sha256(data).hexdigest()
        return photo


def _decode(source, name, budget: _Budget, held: int = 0, facts: bool = False) -> Photo:
    """The budgeted decode of an open binary file (``held``: its bytes in memory; ``facts``: read EXIF's too)."""
    img = rgb = None
    try:
        if formats.is_raw(name, source.getvalue() if isinstance(source, io.BytesIO) else b""):  # preview or demosaic
            img = formats.open_raw(source.getvalue(), name, budget.target_size, lambda w, h, cost: check_pixels(
                name, w, h, budget.max_pixels, budget.max_bytes, cost + held))
        else:
            img = Image.open(source)
        w, h = img.size
        if w == 0 or h == 0:
            raise ImageError(name, "image has no pixels")
        check_pixels(name, w, h, budget.max_pixels)
        target = budget.target_size
        if target is not None and img.format == "JPEG" and min(w, h) >= 2 * target:
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, to at least target on each side
            img.draft("RGB", (target, target))
        factor = max(1, min(img.size) // target) if target is not None else 1
        rotated = orientation(img) in EXIF_TRANSPOSE
        cost = decode_cost(img, factor, rotated, full_size=(w, h)) + held
        if cost > budget.max_bytes:
            raise ImageTooLarge(
                name, f"too large to decode ({w}x{h} {_describe(img)} takes {_mb(cost)}, limit {_mb(budget.max_bytes)})"
            )
        img.load()  # decode now, so truncation shows here
        turned = orientation(img)  # PNG may carry its EXIF after the pixels
        found = read_facts(img) if facts else Facts()
        rgb = to_rgb(img, factor)
        if rgb is not img:
            img.close()  # the decoded pixels go before the upright copy is made
        if turned in EXIF_TRANSPOSE:
            rgb = rgb.transpose(EXIF_TRANSPOSE[turned])
            for key in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"):
                rgb.info.pop(key, None)  # no longer true of these pixels: no one turns them again
            if turned in QUARTER_TURNS:
                w, h = h, w
        return Photo(rgb, (w, h), found.taken, gps=found.gps, offset=found.offset, notes=found.notes)
    except ImageError:
        raise
    except UnidentifiedImageError:
        source.seek(0)
        raise ImageError(name, formats.missing_package(name, source.read(16))
                         or "not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, twice Image.MAX_IMAGE_PIXELS
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels, " if pixels else ""
        raise ImageTooLarge(name, f"too large ({size}over PIL's limit); possible decompression bomb") from None
    except Image.DecompressionBombWarning:
        # PIL warns (it does not raise) above Image.MAX_IMAGE_PIXELS; it arrives here only where
        # the process's warning filters turn it into an error (python -W error)
        raise ImageTooLarge(name, "too large (over PIL's Image.MAX_IMAGE_PIXELS, and warnings are errors here)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the system's, not the decoder's
            raise ImageError(name, _os_reason(exc)) from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower() or "end of file" in reason.lower():  # libheif's words for it
            reason = "truncated image file"
        raise ImageError(name, f"corrupt image ({reason})") from None
    except MemoryError:
        raise ImageTooLarge(name, "too large to decode in memory") from None
    finally:
        if img is not None and img is not rgb:
            img.close()


def check_pixels(name, width: int, height: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
                 cost: int = 0) -> None:
    """Raise :class:`ImageTooLarge` for a picture of ``width`` x ``height`` over ``max_pixels``,
    or whose decoding takes ``cost`` bytes over ``max_bytes`` (a video frame's decoder checks
    its frames with the photos' budget)."""
    if width * height > max_pixels:
        raise ImageTooLarge(
            name, f"too large ({width}x{height} = {width * height:,} pixels, limit {max_pixels:,}); possible decompression bomb"
        )
    if cost > max_bytes:
        raise ImageTooLarge(name, f"too large to decode ({width}x{height} takes {_mb(cost)}, limit {_mb(max_bytes)})")


def _describe(img: Image.Image) -> str:
    bits = {"1": "1-bit", "I": "32-bit", "F": "float"}.get(img.mode, "16-bit" if img.mode.startswith("I;16") else "8-bit")
    return f"{bits} {img.mode}"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def to_rgb(img: Image.Image, factor: int = 1) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, box-reduced by ``factor``. 16-bit and float data are scaled by
    their range, not clipped: 16-bit by integer arithmetic (``(v * 255 + 32767) // 65535``, the
    value ``round(v / 65535 * 255)`` gives), 32-bit and float over the image's (min, max).
    Modes other than plain per-pixel conversions run one strip of rows at a time, so the only
    full-size image made is the result."""
    mode = img.mode
    if factor <= 1:
        if mode == "RGB":
            return img
        if mode not in _WIDE and mode not in _ALPHA and not (mode == "P" and "transparency" in img.info):
            return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own, pixel by pixel
    elif mode == "RGB":
        return img.reduce(factor)
    w, h = img.size
    extrema = _extrema(img) if mode in ("I", "F") else None
    rows = max(1, STRIP_BYTES // (4 * w * factor)) * factor  # a multiple of the factor
    if rows >= h and factor <= 1:
        return _strip_to_rgb(img, extrema)
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for top in range(0, h, rows):
        strip = _strip_to_rgb(img.crop((0, top, w, min(h, top + rows))), extrema)
        if factor > 1:
            strip = strip.reduce(factor)
        out.paste(strip, (0, top // factor))
    return out


def _extrema(img: Image.Image) -> tuple[float, float]:
    """(min, max) of a mode I or F image as numpy gives them (NaN if any value is NaN), by strips."""
    w, h = img.size
    rows = max(1, STRIP_BYTES // (4 * w))
    lo = hi = None
    for top in range(0, h, rows):
        a = np.asarray(img.crop((0, top, w, min(h, top + rows))))
        lo = a.min() if lo is None else np.minimum(lo, a.min())
        hi = a.max() if hi is None else np.maximum(hi, a.max())
    return float(lo), float(hi)


def _strip_to_rgb(img: Image.Image, extrema: tuple[float, float] | None) -> Image.Image:
    """One strip (or a small whole image) -> 8-bit RGB; ``extrema``: the whole image's (min, max)
    for modes I and F, so that every strip is scaled alike."""
    mode = img.mode
    if mode in _WIDE:
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            grey = _scale_16bit(arr)
        else:
            lo, hi = extrema if extrema is not None else _extrema(img)
            if mode == "I" and lo >= 0 and hi <= 65535:
                # exact in integers: v / 255 * 255 rounds to v, and v / 65535 * 255 (a multiple of
                # 1/257) is never within rounding error of a half
                grey = arr.astype(np.uint8) if hi <= 255 else _scale_16bit(arr)
            else:
                # float64, as ever, but one strip at a time (a few MB, not 8 bytes per pixel)
                a = arr.astype(np.float64)
                a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
                grey = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded as ``round(v / 65535 * 255)``, in uint32 arithmetic."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


class ImageDataset(torch.utils.data.Dataset):
    """Paths -> (index, model input or None, error reason or None, sha256 or None); never raises
    on a bad file. With ``sha256=True`` the hash is that of the bytes decoded; ``max_pixels``,
    ``max_bytes`` and ``target_size`` are :func:`load_image`'s."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable, max_pixels: int = MAX_PIXELS,
                 sha256: bool = False, *, max_bytes: int = MAX_BYTES, target_size: int | None = None):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.budget = _Budget.of(max_pixels, max_bytes, target_size)
        self.sha256 = sha256

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            photo = _load(Path(self.paths[i]), self.budget, digest=self.sha256)
            return i, self.transform(photo.image), None, photo.sha256
        except Exception as exc:  # noqa: BLE001 (failure_reason: one line for every failure)
            return i, None, failure_reason(exc), None


def failure_reason(exc: Exception) -> str:
    """The one line a decoding worker reports for a file it could not turn into model inputs:
    an :class:`ImageError`'s reason, the system's words for an OSError, else the exception's
    (a transform failing on a strange image)."""
    if isinstance(exc, ImageError):
        return exc.reason
    if isinstance(exc, OSError):
        return _os_reason(exc)
    return f"cannot preprocess ({type(exc).__name__}: {str(exc)[:100]})"


def _collate(items):
    return items


def decode_in_workers(dataset: torch.utils.data.Dataset, workers: int, batch_size: int | None = None) -> Iterator:
    """The items of ``dataset`` in order, decoded by ``workers`` processes (0: in this one),
    in lists of ``batch_size`` (None: one by one). The one DataLoader of convscope's decoders."""
    return iter(torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        persistent_workers=False, prefetch_factor=4 if workers else None,
    ))


def default_workers(n_images: int) -> int:
    """Worker processes for decoding: none for a handful of images (start-up costs more)."""
    if n_images < 16:
        return 0
    return max(1, min(4, (os.cpu_count() or 1)))


def iter_batches(paths: Sequence[str | os.PathLike], transform: Callable, batch_size: int = 32,
                 workers: int | None = None, max_pixels: int = MAX_PIXELS, sha256: bool = False, *,
                 max_bytes: int = MAX_BYTES, target_size: int | None = None) -> Iterator[Batch]:
    """Decode ``paths`` in worker processes and yield batches of up to ``batch_size`` good images,
    in path order. Bad files come back in ``Batch.errors`` (a batch may hold only errors). With
    ``sha256``, ``Batch.hashes`` has the sha256 of each good file, from the bytes decoded.
    ``max_pixels``, ``max_bytes`` and ``target_size`` are :func:`load_image`'s."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = ImageDataset(paths, transform, max_pixels, sha256, max_bytes=max_bytes, target_size=target_size)
    workers = default_workers(len(dataset)) if workers is None else max(0, workers)
    for items in decode_in_workers(dataset, workers, batch_size):
        good = [(i, t, h) for i, t, err, h in items if err is None]
        errors = [ImageError(dataset.paths[i], err) for i, _t, err, _h in items if err is not None]
        tensors = torch.stack([t for _, t, _ in good]) if good else torch.empty(0)
        yield Batch([i for i, _, _ in good], [dataset.paths[i] for i, _, _ in good], tensors, errors,
                    [h for _, _, h in good] if sha256 else [])


#: scikit-image's bundled sample photos (no download needed), as the demo and README use them.
SAMPLE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "coins", "clock", "moon", "brick", "grass", "gravel", "colorwheel", "retina",
)


def sample_photos(dest: str | os.PathLike | None = None) -> list[Path]:
    """Write scikit-image's sample photos as PNG files into ``dest`` (default: a cache folder)
    and return their paths; files already there are reused."""
    import skimage.data

    dest = Path(dest) if dest else cache_dir("samples")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SAMPLE_PHOTOS:
        path = dest / f"{name}.png"
        if not path.exists():
            loader = getattr(skimage.data, name, None)
            if loader is None:
                continue
            try:
                arr = loader()
            except Exception:  # a sample that would need a download: skip it
                continue
            arr = np.asarray(arr)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8) * 255
            with atomic_write(path) as f:
                Image.fromarray(arr).save(f, format="PNG")
        out.append(path)
    return out


ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files are errors, not silently grey
formats.register_heif()  # once, here: classify, atlas, index and uploads all decode through this module
