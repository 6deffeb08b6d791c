"""Write small DNG files that LibRaw (rawpy) reads, for the RAW tests: an uncompressed 16-bit RGGB
Bayer mosaic of a given RGB picture, an optional embedded JPEG preview, an orientation and EXIF's
date and GPS position. Written by hand (TIFF is simple), so the tests need no sample file."""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

#: XYZ (D65) -> linear sRGB: the DNG ColorMatrix1 of a "camera" whose channels are linear sRGB.
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
WHITE = 65535
_TYPES = {"BYTE": (1, "B"), "ASCII": (2, "s"), "SHORT": (3, "H"), "LONG": (4, "I"), "RATIONAL": (5, "II"),
          "UNDEFINED": (7, "B"), "SRATIONAL": (10, "ii")}


def mosaic(rgb: np.ndarray) -> np.ndarray:
    """An RGGB Bayer mosaic (uint16, linear light) of an 8-bit sRGB picture."""
    a = rgb.astype(np.float64) / 255.0
    linear = np.where(a <= 0.04045, a / 12.92, ((a + 0.055) / 1.055) ** 2.4)
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    out = np.empty((h, w), np.float64)
    out[0::2, 0::2] = linear[0:h:2, 0:w:2, 0]
    out[0::2, 1::2] = linear[0:h:2, 1:w:2, 1]
    out[1::2, 0::2] = linear[1:h:2, 0:w:2, 1]
    out[1::2, 1::2] = linear[1:h:2, 1:w:2, 2]
    return np.round(out * WHITE).astype("<u2")


def _entry(tag, kind, values):
    code, fmt = _TYPES[kind]
    if kind == "ASCII":
        raw = values.encode("ascii") + b"\0"
        return tag, code, len(raw), raw
    if kind in ("RATIONAL", "SRATIONAL"):
        raw = b"".join(struct.pack("<" + fmt, round(v * 10000), 10000) for v in values)
        return tag, code, len(values), raw
    if isinstance(values, (bytes, bytearray)):
        return tag, code, len(values), bytes(values)
    return tag, code, len(values), struct.pack(f"<{len(values)}{fmt}", *values)


class _Tiff:
    """A little-endian TIFF assembled in memory: blobs and IFDs placed one after another."""

    def __init__(self):
        self.buf = bytearray(b"II*\0\0\0\0\0")

    def blob(self, data: bytes) -> int:
        if len(self.buf) % 2:
            self.buf += b"\0"
        at = len(self.buf)
        self.buf += data
        return at

    def ifd(self, entries) -> int:
        """Write an IFD (entries: (tag, type code, count, raw bytes)); returns its offset."""
        entries = sorted(entries)
        if len(self.buf) % 2:
            self.buf += b"\0"
        at = len(self.buf)
        size = 2 + 12 * len(entries) + 4
        extra = at + size
        head, tail = bytearray(struct.pack("<H", len(entries))), bytearray()
        for tag, code, count, raw in entries:
            if len(raw) <= 4:
                head += struct.pack("<HHI", tag, code, count) + raw.ljust(4, b"\0")
            else:
                if (extra + len(tail)) % 2:
                    tail += b"\0"
                head += struct.pack("<HHII", tag, code, count, extra + len(tail))
                tail += raw
        head += b"\0\0\0\0"
        self.buf += head + tail
        return at


def _degrees(value: float):
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return (d, m, s)


def write_dng(path, rgb: np.ndarray, *, orientation: int = 1, preview: Image.Image | None = None,
              taken: str | None = None, gps: tuple[float, float] | None = None, make: str = "Convscope",
              model: str = "Test Camera") -> None:
    """A DNG of the 8-bit RGB array ``rgb`` (H, W, 3): its mosaic at full size, ``preview`` as an
    embedded baseline JPEG (IFD1's JPEGInterchangeFormat, where LibRaw finds a thumbnail), the
    EXIF ``orientation``, ``taken`` ("YYYY:MM:DD HH:MM:SS") and ``gps`` (lat, lon)."""
    cfa = mosaic(rgb)
    h, w = cfa.shape
    t = _Tiff()
    pixels = t.blob(cfa.tobytes())
    exif_entries = [_entry(0x9000, "UNDEFINED", b"0230")]
    if taken:
        exif_entries.append(_entry(36867, "ASCII", taken))
    exif_ifd = t.ifd(exif_entries)
    gps_ifd = None
    if gps:
        lat, lon = gps
        gps_ifd = t.ifd([_entry(0, "BYTE", (2, 3, 0, 0)), _entry(1, "ASCII", "N" if lat >= 0 else "S"),
                         _entry(2, "RATIONAL", _degrees(lat)), _entry(3, "ASCII", "E" if lon >= 0 else "W"),
                         _entry(4, "RATIONAL", _degrees(lon))])
    ifd1 = None
    if preview is not None:
        buf = io.BytesIO()
        preview.convert("RGB").save(buf, format="JPEG", quality=92)
        jpeg = t.blob(buf.getvalue())
        ifd1 = t.ifd([_entry(254, "LONG", (1,)), _entry(259, "SHORT", (6,)),
                      _entry(513, "LONG", (jpeg,)), _entry(514, "LONG", (len(buf.getvalue()),))])
    matrix = [v for row in XYZ_TO_SRGB for v in row]
    entries = [
        _entry(254, "LONG", (0,)), _entry(256, "LONG", (w,)), _entry(257, "LONG", (h,)),
        _entry(258, "SHORT", (16,)), _entry(259, "SHORT", (1,)), _entry(262, "SHORT", (32803,)),
        _entry(271, "ASCII", make), _entry(272, "ASCII", model), _entry(273, "LONG", (pixels,)),
        _entry(274, "SHORT", (orientation,)), _entry(277, "SHORT", (1,)), _entry(278, "LONG", (h,)),
        _entry(279, "LONG", (cfa.nbytes,)), _entry(284, "SHORT", (1,)),
        _entry(33421, "SHORT", (2, 2)), _entry(33422, "BYTE", (0, 1, 1, 2)),
        _entry(34665, "LONG", (exif_ifd,)),
        _entry(50706, "BYTE", (1, 4, 0, 0)), _entry(50707, "BYTE", (1, 1, 0, 0)),
        _entry(50708, "ASCII", f"{make} {model}"), _entry(50714, "LONG", (0,)), _entry(50717, "LONG", (WHITE,)),
        _entry(50721, "SRATIONAL", matrix), _entry(50728, "RATIONAL", (1.0, 1.0, 1.0)),
        _entry(50778, "SHORT", (21,)),
    ]
    if gps_ifd is not None:
        entries.append(_entry(34853, "LONG", (gps_ifd,)))
    ifd0 = t.ifd(entries)
    t.buf[4:8] = struct.pack("<I", ifd0)
    if ifd1 is not None:  # IFD0's "next IFD" is the preview's
        count = struct.unpack_from("<H", t.buf, ifd0)[0]
        struct.pack_into("<I", t.buf, ifd0 + 2 + 12 * count, ifd1)
    with open(path, "wb") as f:
        f.write(bytes(t.buf))
