"""Image sources (folders, globs, list files) and robust decoding into the model's input.

Bad files never stop a run: each is rejected with a one-line reason (:class:`ImageError`) and
counted, and the rest carry on. Decoding runs in DataLoader worker processes.

>>> paths, errors = expand_inputs(["photos/", "extra/*.jpg", "@more.txt"])
>>> for batch in iter_batches(paths, model.transform, batch_size=32):
...     logits = model(batch.tensors)
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .files import atomic_write, cache_dir

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico .jp2 .heic .avif".split()
)
#: Largest image accepted, in pixels (width x height); larger files are rejected as possible
#: decompression bombs. 100 megapixels covers any camera; raise it with ``max_pixels``.
MAX_PIXELS = 100_000_000
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
    nothing come back as errors. Duplicates are kept once.
    """
    paths: list[Path] = []
    errors: list[ImageError] = []
    for item in inputs:
        text = os.fspath(item)
        if text.startswith("@") and not Path(text).exists():
            listfile = Path(text[1:])
            try:
                lines = listfile.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                errors.append(ImageError(text, f"cannot read list file ({exc.strerror or exc})"))
                continue
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    paths.append(p if p.is_absolute() else listfile.parent / p)
            continue
        p = Path(text)
        if p.is_dir():
            found = (p.rglob("*") if recursive else p.glob("*"))
            paths.extend(sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        elif p.exists():
            paths.append(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                errors.append(ImageError(text, "no file matches this pattern"))
            paths.extend(matches)
        else:
            errors.append(ImageError(text, "no such file or folder"))
    seen: set[str] = set()
    unique = []
    for p in paths:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, errors


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open any image file as an 8-bit RGB PIL image, upright per its EXIF orientation.

    Grayscale, palette, CMYK, 16-bit and float images are converted; transparency is composited
    on white. Raises :class:`ImageError` with a one-line reason for a missing, empty, truncated,
    corrupt, non-image or over-large (more than ``max_pixels``) file.
    """
    return _load(Path(path), max_pixels, digest=False)[0]


def load_image_hashed(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str]:
    """:func:`load_image`, and the sha256 (hex) of the very bytes it decoded: the file is read
    once, so the hash names exactly the picture that was seen.

    >>> img, sha256 = load_image_hashed("photos/cat.jpg")
    """
    return _load(Path(path), max_pixels, digest=True)


def _load(path: Path, max_pixels: int, digest: bool) -> tuple[Image.Image, str | None]:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image")
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    sha256 = None
    try:
        source = path
        if digest:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ImageError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
            sha256 = hashlib.sha256(data).hexdigest()
            source = io.BytesIO(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        path, f"too large ({w}x{h} = {w * h:,} pixels, limit {max_pixels:,}); possible decompression bomb"
                    )
                if w == 0 or h == 0:
                    raise ImageError(path, "image has no pixels")
                img.load()  # decode now, so truncation shows here
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img), sha256
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(path, "too large; possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise ImageError(path, f"corrupt image ({reason})") from None
    except MemoryError:
        raise ImageError(path, "too large to decode in memory") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit and float data are scaled by their range, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if mode == "I" and lo >= 0 and hi <= 65535:
                arr = arr / (255.0 if hi <= 255 else 65535.0)
            elif hi > lo:
                arr = (arr - lo) / (hi - lo)
            else:
                arr = np.zeros_like(arr)
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions
    return img.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """Paths -> (index, model input or None, error reason or None, sha256 or None); never raises
    on a bad file. With ``sha256=True`` the hash is that of the bytes decoded."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable, max_pixels: int = MAX_PIXELS,
                 sha256: bool = False):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.max_pixels = max_pixels
        self.sha256 = sha256

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img, digest = _load(Path(self.paths[i]), self.max_pixels, digest=self.sha256)
            return i, self.transform(img), None, digest
        except ImageError as exc:
            return i, None, exc.reason, None
        except Exception as exc:  # a transform failing on a strange image: still one line
            return i, None, f"cannot preprocess ({type(exc).__name__}: {str(exc)[:100]})", None


def _collate(items):
    return items


def default_workers(n_images: int) -> int:
    """Worker processes for decoding: none for a handful of images (start-up costs more)."""
    if n_images < 16:
        return 0
    return max(1, min(4, (os.cpu_count() or 1)))


def iter_batches(
    paths: Sequence[str | os.PathLike],
    transform: Callable,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    sha256: bool = False,
) -> Iterator[Batch]:
    """Decode ``paths`` in worker processes and yield batches of up to ``batch_size`` good images,
    in path order. Bad files come back in ``Batch.errors`` (a batch may hold only errors). With
    ``sha256``, ``Batch.hashes`` has the sha256 of each good file, from the bytes decoded."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = ImageDataset(paths, transform, max_pixels, sha256)
    workers = default_workers(len(dataset)) if workers is None else max(0, workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    for items in loader:
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
