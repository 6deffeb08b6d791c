"""Live Photos, bursts and RAW+JPEG pairs as one moment: what the files say (Apple's MakerNote and
QuickTime identifiers, written here as an iPhone writes them), else their names."""
from __future__ import annotations

import struct

import av
import numpy as np
import pytest
from PIL import Image

from convscope.index.moments import APPLE_BURST, APPLE_CONTENT, Marks, apple_maker_note, marks, moments

pytest.importorskip("pillow_heif")
import convscope.data  # noqa: E402,F401  (registers HEIF with Pillow)


def maker_note(content: str | None = None, burst: str | None = None) -> bytes:
    """An Apple MakerNote as iOS writes it: "Apple iOS\\0", version 1, "MM", then a big-endian IFD
    whose offsets count from the note's start."""
    tags = sorted((t, v) for t, v in ((APPLE_BURST, burst), (APPLE_CONTENT, content)) if v)
    tags.append((0x0001, None))  # a LONG tag as iOS also writes (MakerNoteVersion): skipped
    head = b"Apple iOS\0" + b"\0\x01" + b"MM"
    start = len(head) + 2 + 12 * len(tags) + 4
    entries, blobs = b"", b""
    for tag, value in tags:
        if value is None:
            entries += struct.pack(">HHII", tag, 9, 1, 14)
            continue
        raw = value.encode("ascii") + b"\0"
        if len(raw) <= 4:  # held in the entry itself, as TIFF does
            entries += struct.pack(">HHI4s", tag, 2, len(raw), raw)
            continue
        entries += struct.pack(">HHII", tag, 2, len(raw), start + len(blobs))
        blobs += raw
    return head + struct.pack(">H", len(tags)) + entries + b"\0\0\0\0" + blobs


def write_photo(path, content=None, burst=None, color=(200, 120, 40)):
    exif = Image.Exif()
    if content or burst:
        exif.get_ifd(0x8769)[0x927C] = maker_note(content, burst)
    Image.new("RGB", (64, 48), color).save(path, exif=exif.tobytes(), quality=90)
    return path


def write_motion(path, content=None):
    options = {"movflags": "use_metadata_tags"} if content else {}
    with av.open(str(path), "w", format="mov", options=options) as out:
        if content:
            out.metadata["com.apple.quicktime.content.identifier"] = content
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _names(found):
    return [(m.kind, [p.name for p in m.files]) for m in found]


def test_maker_note_read_back():
    note = maker_note("4D6B0C8F-1C7A", "B1B2-B3")
    assert apple_maker_note(note) == {APPLE_CONTENT: "4D6B0C8F-1C7A", APPLE_BURST: "B1B2-B3"}
    assert apple_maker_note(maker_note("A-1")) == {APPLE_CONTENT: "A-1"}  # four bytes: in the entry
    assert apple_maker_note(b"Nikon\0\x02\x10\0\0MM\0*") == {} and apple_maker_note(note[:20]) == {}


def test_live_photo_by_its_identifiers(tmp_path):
    still = write_photo(tmp_path / "IMG_1234.HEIC", content="A-1")
    motion = write_motion(tmp_path / "IMG_1234.MOV", content="A-1")
    assert marks(still) == Marks(content="A-1") and marks(motion) == Marks(content="A-1")
    # an exported pair whose names differ: the identifier joins them
    other_still = write_photo(tmp_path / "export.jpg", content="B-2")
    other_motion = write_motion(tmp_path / "export_motion.mov", content="B-2")
    alone = write_photo(tmp_path / "IMG_1235.HEIC", content="C-3")
    found = moments([still, motion, other_still, other_motion, alone])
    assert _names(found) == [("live", ["IMG_1234.HEIC", "IMG_1234.MOV"]),
                             ("live", ["export.jpg", "export_motion.mov"]),
                             ("single", ["IMG_1235.HEIC"])]
    assert found[0].cover == still


def test_identifiers_that_differ_keep_same_named_files_apart(tmp_path):
    still = write_photo(tmp_path / "IMG_0001.JPG", content="X")
    motion = write_motion(tmp_path / "IMG_0001.MOV", content="Y")
    assert _names(moments([still, motion])) == [("single", ["IMG_0001.JPG"]), ("single", ["IMG_0001.MOV"])]


def test_names_pair_what_carries_no_identifier(tmp_path):
    (tmp_path / "b").mkdir()
    files = [write_photo(tmp_path / "IMG_0002.jpg"), write_motion(tmp_path / "img_0002.mov"),
             write_motion(tmp_path / "b" / "IMG_0002.MOV"),  # another folder: another moment
             tmp_path / "DSC_0003.NEF", write_photo(tmp_path / "DSC_0003.JPG"), write_photo(tmp_path / "DSC_0004.JPG")]
    files[3].write_bytes(b"II*\0 not read: names only")
    found = moments(files)
    assert _names(found) == [("live", ["IMG_0002.jpg", "img_0002.mov"]), ("single", ["IMG_0002.MOV"]),
                             ("raw+jpeg", ["DSC_0003.JPG", "DSC_0003.NEF"]), ("single", ["DSC_0004.JPG"])]
    assert moments(files, read=None) == found  # nothing to read here: the names decide alike


def test_burst_frames_are_one_moment(tmp_path):
    frames = [write_photo(tmp_path / f"IMG_{i:04d}.HEIC", content=f"L-{i}", burst="BURST-1", color=(10 * i, 0, 0))
              for i in range(10, 14)]
    other = write_photo(tmp_path / "IMG_0014.HEIC", burst="BURST-2")
    motion = write_motion(tmp_path / "IMG_0011.MOV", content="L-11")  # one frame a Live Photo too
    found = moments([*frames, other, motion])
    assert _names(found) == [("burst", ["IMG_0010.HEIC", "IMG_0011.HEIC", "IMG_0012.HEIC", "IMG_0013.HEIC",
                                        "IMG_0011.MOV"]), ("single", ["IMG_0014.HEIC"])]
    stored = {p: marks(p) for p in [*frames, other, motion]}  # what an index keeps per file
    assert moments([*frames, other, motion], read=stored) == found


def test_unreadable_files_have_no_marks(tmp_path):
    empty, cut = tmp_path / "IMG_0020.MOV", tmp_path / "IMG_0020.HEIC"
    empty.write_bytes(b"")
    write_photo(tmp_path / "whole.heic", content="Z")
    cut.write_bytes((tmp_path / "whole.heic").read_bytes()[:30])
    assert marks(empty) == marks(cut) == marks(tmp_path) == Marks()
    assert _names(moments([cut, empty])) == [("live", ["IMG_0020.HEIC", "IMG_0020.MOV"])]  # by name
