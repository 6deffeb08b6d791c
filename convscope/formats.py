"""The photo formats that Pillow does not read by itself: HEIC/HEIF through ``pillow-heif``, camera
RAW through ``rawpy`` (LibRaw). :mod:`convscope.data` stays the one decoder: it registers HEIF here
once, and hands a RAW file here to be opened as a picture it then budgets, reduces and turns like
any other.

A RAW file is read as its embedded JPEG preview where that is large enough (the camera's own
rendering, decoded at reduced scale like any JPEG), else as a half-size demosaic by LibRaw. Its
orientation is LibRaw's (``sizes.flip``); its date and position are the EXIF of the RAW file's own
TIFF header (DNG, CR2, NEF, ARW, PEF, ...), else of the preview.

>>> register_heif()                  # True where pillow-heif is installed
>>> img = open_raw(data, "IMG_0001.CR2", target_size=256, check=lambda w, h, cost: None)
"""
from __future__ import annotations

import functools
import io
import os
import struct
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from .errors import ImageError

HEIF_EXTENSIONS = frozenset(".heic .heif .hif".split())
#: Camera RAW files LibRaw reads, by extension (Canon, Nikon, Sony, Adobe DNG, Fujifilm, Olympus,
#: Panasonic, Pentax, Samsung, Leica, Hasselblad, Phase One, Sigma, Kodak, Minolta, Epson).
RAW_EXTENSIONS = frozenset(
    ".cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .dng .raf .orf .rw2 .pef .srw .rwl .3fr .fff .iiq .x3f .dcr .kdc "
    ".mrw .erf .mef .mos".split()
)
#: The package that reads each kind, and the words for it in an error.
PACKAGES = {"heif": ("HEIC/HEIF photo", "pillow-heif"), "raw": ("camera RAW file", "rawpy")}
#: ISO BMFF brands of HEIF still pictures (the ``ftyp`` box, bytes 8..12 of the file).
HEIF_BRANDS = frozenset(b"heic heix heim heis hevc hevx mif1 msf1".split())
#: The first bytes of RAW formats that are not plain TIFF: Olympus ORF, Panasonic RW2.
RAW_MAGIC = frozenset((b"IIRO", b"IIRS", b"MMOR", b"IIU\0"))
#: LibRaw's ``flip`` -> the EXIF orientation that turns the unrotated picture upright.
FLIP_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}
#: Bytes LibRaw holds per pixel for a half-size demosaic: the raw mosaic (2 per sensor pixel) and
#: its working image (4 channels x 2 bytes per output pixel, a quarter of the sensor's).
RAW_BYTES_PER_SENSOR_PIXEL = 2 + 8 / 4
_EXIF_IFD, _GPS_IFD, _ORIENTATION, _MAKER_NOTE, _DATE_TIME_ORIGINAL = 0x8769, 0x8825, 0x0112, 0x927C, 36867
_DNG_VERSION, _PHOTOMETRIC = 50706, 262


@functools.cache
def register_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once per process; False where the
    package is not installed (a HEIC file then says to install it: :func:`missing_package`)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def kind(name) -> str | None:
    """"heif" or "raw" for a file of those kinds by its extension, else None."""
    suffix = os.path.splitext(os.fspath(name))[1].lower()
    return "heif" if suffix in HEIF_EXTENSIONS else "raw" if suffix in RAW_EXTENSIONS else None


def is_raw(name, head: bytes = b"") -> bool:
    """Whether a file is read as a camera RAW file: by the extension of ``name``, else by ``head``,
    its bytes where they are in memory (an upload has no extension): the magic of CR2, CR3, ORF,
    RW2 and RAF, or a TIFF whose first IFD names DNG or a Bayer mosaic (NEF and ARW uploads, whose
    first IFD is a preview, are read as TIFF by Pillow)."""
    if kind(name) == "raw":
        return True
    if head[:4] in RAW_MAGIC or head.startswith(b"FUJIFILMCCD-RAW") or head[4:12] == b"ftypcrx ":
        return True
    if head[:4] not in (b"II*\0", b"MM\0*"):
        return False
    if head[8:10] == b"CR":  # Canon's CR2 marks its TIFF header
        return True
    tags = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of damaged values
            tags.load(head)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error, UserWarning):
        return False
    return _DNG_VERSION in tags or tags.get(_PHOTOMETRIC) in (32803, 34892)  # CFA, LinearRaw


def missing_package(name, head: bytes = b"") -> str | None:
    """The one line for a file that only a package not installed here could read ("HEIC/HEIF
    photo: install pillow-heif to read it (pip install pillow-heif)"), else None. ``head``: the
    file's first bytes, which name a HEIF file whatever its extension."""
    found = kind(name)
    if found is None and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        found = "heif"
    if found == "heif" and not register_heif() or found == "raw" and not _has_rawpy():
        return _install(found)
    return None


def _install(found: str) -> str:
    what, package = PACKAGES[found]
    return f"{what}: install {package} to read it (pip install {package})"


@functools.cache
def _has_rawpy() -> bool:
    try:
        import rawpy  # noqa: F401
    except ImportError:
        return False
    return True


def open_raw(data: bytes, name, target_size: int | None, check: Callable[[int, int, int], None]) -> Image.Image:
    """A camera RAW file's bytes as a PIL image for :mod:`convscope.data` to decode: its embedded
    JPEG preview (not yet decoded) where the preview's shorter side is at least ``target_size``
    (None: half the sensor's, what a half-size demosaic gives), else LibRaw's half-size demosaic
    (8-bit sRGB, camera white balance). The image's EXIF carries the file's orientation, date and
    position. ``check(width, height, cost)`` raises where a demosaic's sensor pixels, or the bytes
    it takes (LibRaw's copy of the file included), are over the caller's budget; a preview is
    checked by the caller like any JPEG (a 150 Mpx back's preview is read where its sensor would
    not be). Raises :class:`ImageError` (one line) for a file LibRaw cannot read, naming rawpy
    where it is not installed.
    """
    if not _has_rawpy():
        raise ImageError(name, _install("raw"))
    import rawpy

    raw = rawpy.RawPy()
    try:
        raw.open_buffer(io.BytesIO(data))
        sizes = raw.sizes
        turned = FLIP_ORIENTATION.get(sizes.flip, 1)
        preview = _preview(raw)
        need = target_size if target_size is not None else min(sizes.width, sizes.height) // 2
        if preview is not None and min(preview.size) >= need:
            img = preview  # its pixels are the caller's to check, like any JPEG's
        else:  # the sensor's pixels are read
            check(sizes.width, sizes.height, len(data) + int(sizes.raw_width * sizes.raw_height * RAW_BYTES_PER_SENSOR_PIXEL))
            img = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
            turned = 1  # LibRaw turns its output upright itself
        img.info["exif"] = _exif(data, raw, turned)
        img.getexif().load(img.info["exif"])  # in place of the EXIF LibRaw writes into a preview it extracts
        return img
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError(name, "not a RAW file LibRaw can read (unknown camera or not a RAW file)") from None
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        raise ImageError(name, f"corrupt RAW file ({str(exc).splitlines()[0][:100] or type(exc).__name__})") from None
    finally:
        raw.close()


def _preview(raw) -> Image.Image | None:
    """The RAW file's embedded preview, opened (a JPEG is not decoded yet), or None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, rawpy.NotSupportedError):
        return None  # no preview, or one LibRaw cannot extract: the demosaic reads the file
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        return Image.fromarray(np.ascontiguousarray(thumb.data))
    try:
        preview = Image.open(io.BytesIO(thumb.data))
    except (OSError, SyntaxError, ValueError):
        return None  # a damaged preview: the demosaic reads the file
    return preview if preview.format == "JPEG" else None


def _exif(data: bytes, raw, turned: int) -> bytes:
    """EXIF bytes for the picture read from a RAW file: orientation ``turned``, and the date and GPS
    sub-IFDs of the file's TIFF header (DNG, CR2, NEF, ARW, PEF, ... are TIFF), else (ORF, RW2,
    RAF, CR3) LibRaw's date of the shot, without a position."""
    out = Image.Exif()
    out[_ORIENTATION] = turned
    found = Image.Exif()
    try:
        found.load(data)
        sub, gps = dict(found.get_ifd(_EXIF_IFD)), dict(found.get_ifd(_GPS_IFD))
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        sub, gps = {}, {}  # not a TIFF header, or a damaged one
    sub.pop(_MAKER_NOTE, None)  # a camera's own blob, of no use here and often large
    if _DATE_TIME_ORIGINAL not in sub and raw.other.timestamp is not None:
        sub[_DATE_TIME_ORIGINAL] = raw.other.timestamp.strftime("%Y:%m:%d %H:%M:%S")
    out.get_ifd(_EXIF_IFD).update(sub)
    out.get_ifd(_GPS_IFD).update(gps)
    return out.tobytes()
