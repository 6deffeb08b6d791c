"""The files phones and cameras write: HEIC (pillow-heif), camera RAW (rawpy), HEVC in .mov, and
the formats already read (AVIF, WebP, 16-bit PNG, CMYK, EXIF-rotated JPEG, VP9 .webm), each
classified like its JPEG original; bad files of those kinds are one line each, counted.

Every file is made here: HEIC by pillow-heif, DNG by tests/dng.py (a hand-written TIFF that
LibRaw reads), videos by PyAV's libx265 and libvpx-vp9."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

import convscope
from convscope import data, formats
from convscope.errors import ImageError
from convscope.index.media import video_frames

from .dng import write_dng

pytest.importorskip("pillow_heif")
pytest.importorskip("rawpy")

TAKEN, GPS = "2021:07:04 12:30:00", (45.764, 4.8357)


def _exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[36867] = TAKEN
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (45.0, 45.0, 50.4), 3: "E", 4: (4.0, 50.0, 8.52)})
    return exif.tobytes()


@pytest.fixture(scope="module")
def photo(sample_dir) -> Image.Image:
    return Image.open(sample_dir / "coffee.png").convert("RGB")  # a cup of espresso (p 0.95), 600 x 400


def _probabilities(model, images) -> torch.Tensor:
    batch = torch.stack([model.transform(img) for img in images])
    with torch.inference_mode():
        return torch.softmax(model(batch).float(), dim=1)


def _classified_alike(model, original, copies, tolerance):
    """Each of ``copies`` has the JPEG ``original``'s top class, and its probabilities within ``tolerance``."""
    results = convscope.classify(model, [original, *copies], top=5)
    assert not results.errors, [c.error for c in results.errors]
    first = results[0].predictions[0]
    for c in results[1:]:
        assert c.predictions[0].index == first.index, (c.path, c.predictions[0].label, first.label)
        assert abs(c.predictions[0].probability - first.probability) < tolerance, (c.path, c.predictions[0], first)
    return results


def test_heic_is_read_and_classified_like_its_jpeg(tmp_path, photo, default_model):
    jpeg, heic = tmp_path / "IMG_0001.jpg", tmp_path / "IMG_0001.HEIC"
    photo.save(jpeg, quality=95)
    photo.save(heic, quality=95)  # pillow-heif, registered by convscope.data
    assert formats.register_heif() is True
    with Image.open(heic) as img:
        assert img.format == "HEIF"
    assert data.load_image(heic).size == photo.size
    _classified_alike(default_model, jpeg, [heic], tolerance=0.05)
    found, _ = data.expand_inputs([tmp_path])
    assert heic in found  # a folder gives its HEIC files


def test_heic_orientation_date_and_place_read_like_a_jpeg(tmp_path, photo):
    jpeg, heic = tmp_path / "turned.jpg", tmp_path / "turned.heic"
    photo.save(jpeg, quality=95, exif=_exif(6))
    photo.save(heic, quality=95, exif=_exif(6))
    a, b = data.load_photo(jpeg), data.load_photo(heic)
    assert a.image.size == b.image.size == (400, 600)  # turned upright, once
    assert (a.taken, a.gps) == (b.taken, b.gps) == ("2021-07-04T12:30:00", pytest.approx(GPS, abs=1e-4))
    diff = np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16)).mean()
    assert diff < 4, diff  # the same pixels, up to two codecs' losses
    small = data.load_photo(heic, target_size=100)  # reduced scale: a whole box factor, upright
    assert small.image.size == (100, 150) and small.size == (400, 600)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "demosaic"])
def test_raw_is_read_and_classified_like_its_jpeg(tmp_path, photo, default_model, preview):
    jpeg, dng = tmp_path / "DSC_0001.jpg", tmp_path / "DSC_0001.DNG"
    photo.save(jpeg, quality=95)
    write_dng(dng, np.asarray(photo), preview=photo if preview else None, taken=TAKEN, gps=GPS)
    _classified_alike(default_model, jpeg, [dng], tolerance=0.1)
    read = data.load_photo(dng)
    assert read.taken == "2021-07-04T12:30:00" and read.gps == pytest.approx(GPS, abs=1e-4)
    assert read.image.size == ((600, 400) if preview else (300, 200))  # the preview, or a half-size demosaic


def test_raw_uses_its_preview_only_when_large_enough(tmp_path, photo):
    """The mosaic holds one picture (grey), the preview another (the cup): which one is read shows which path ran."""
    grey = np.full((400, 600, 3), 128, np.uint8)
    dng = tmp_path / "IMG_0002.dng"
    write_dng(dng, grey, preview=photo.resize((300, 200)))
    cup = np.asarray(photo.resize((300, 200)), np.float64)
    small = np.asarray(data.load_image(dng, target_size=128), np.float64)  # preview 200 >= 128: the cup
    assert small.shape == cup.shape and np.abs(small - cup).mean() < 4
    large = np.asarray(data.load_image(dng, target_size=256), np.float64)  # preview too small: the grey mosaic
    assert large.shape == (200, 300, 3) and large.std() < 2
    assert np.abs(large[..., 0] - large[..., 2]).max() <= 2  # grey stays grey (white balance, colour matrix)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "demosaic"])
def test_raw_orientation_respected(tmp_path, photo, preview):
    upright = data.load_image(_turned_jpeg(tmp_path, photo))
    dng = tmp_path / "portrait.nef.dng"
    write_dng(dng, np.asarray(photo), orientation=6, preview=photo if preview else None)
    img = data.load_image(dng)
    expect = upright if preview else upright.resize(img.size)
    assert img.size == expect.size and img.size[1] > img.size[0]
    # the same way up: each picture correlates with the upright JPEG far better than with its mirror
    a, b = (np.asarray(x.convert("L"), np.float64).ravel() for x in (img, expect))
    mirrored = np.asarray(expect.transpose(Image.Transpose.ROTATE_180).convert("L"), np.float64).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9 > np.corrcoef(a, mirrored)[0, 1] + 0.2


def _turned_jpeg(tmp_path, photo):
    path = tmp_path / "turned.jpg"
    photo.save(path, quality=95, exif=_exif(6))
    return path


def _write_video(path, frames, codec, fps=5):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_image(img)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("codec,suffix", [("libx265", ".mov"), ("libvpx-vp9", ".webm")])
def test_video_frames_classified_like_the_jpeg(tmp_path, photo, default_model, codec, suffix):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV has no {codec} encoder")
    even = photo  # 600 x 400: 4:2:0 wants even sides
    clip = tmp_path / f"IMG_0003{suffix}"
    _write_video(clip, [even] * 10, codec)
    with av.open(str(clip)) as c:
        assert c.streams.video[0].codec_context.name == {"libx265": "hevc", "libvpx-vp9": "vp9"}[codec]
    frames = [img for _, img in video_frames(clip, fps=1.0)]
    assert len(frames) == 2 and frames[0].size == even.size
    jpeg = tmp_path / "still.jpg"
    even.save(jpeg, quality=95)
    p = _probabilities(default_model, [data.load_image(jpeg), frames[0]])
    assert p[0].argmax() == p[1].argmax()
    assert (p[0] - p[1]).abs().max() < 0.1


def test_other_formats_still_classified_like_the_jpeg(tmp_path, photo, default_model):
    jpeg = tmp_path / "cat.jpg"
    photo.save(jpeg, quality=95)
    copies = []
    for name, save in [
        ("cat.avif", lambda p: photo.save(p, quality=90)),
        ("cat.webp", lambda p: photo.save(p, quality=90)),
        ("cat16.png", lambda p: Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)).save(p)),
        ("cmyk.jpg", lambda p: photo.convert("CMYK").save(p, quality=95)),
    ]:
        save(tmp_path / name)
        copies.append(tmp_path / name)
    _classified_alike(default_model, jpeg, copies[:2] + copies[3:], tolerance=0.05)
    assert Image.open(copies[2]).mode.startswith("I;16")
    grey = convscope.classify(default_model, [copies[2]])[0]
    assert grey.ok  # a grey picture may be another class: read, not compared
    upright = tmp_path / "upright.jpg"
    photo.transpose(Image.Transpose.ROTATE_270).save(upright, quality=95)
    _classified_alike(default_model, upright, [_turned_jpeg(tmp_path, photo)], tolerance=0.05)


def test_bad_files_are_one_line_each_and_counted(tmp_path, photo):
    folder = tmp_path / "library"
    folder.mkdir()
    photo.save(folder / "good.jpg", quality=90)
    photo.save(tmp_path / "whole.heic", quality=90)
    whole = (tmp_path / "whole.heic").read_bytes()
    (folder / "cut.heic").write_bytes(whole[: len(whole) // 2])
    rng = np.random.default_rng(0)
    (folder / "IMG_0004.CR2").write_bytes(b"II*\0" + rng.bytes(20000))  # a TIFF magic, then garbage
    (folder / "DSC_0005.NEF").write_bytes(rng.bytes(20000))
    (folder / "clip.mov").write_bytes(b"")
    for name, reason in [("cut.heic", "corrupt image (truncated image file)"), ("IMG_0004.CR2", "not a RAW file LibRaw can read"),
                         ("DSC_0005.NEF", "not a RAW file LibRaw can read")]:
        with pytest.raises(ImageError) as caught:
            data.load_photo(folder / name)
        assert reason in caught.value.reason and "\n" not in caught.value.reason
    out = tmp_path / "lib.index"
    run = subprocess.run([sys.executable, "-m", "convscope", "index", str(folder), "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    skipped = sorted(line for line in run.stderr.splitlines() if line.startswith("skipped "))
    assert len(skipped) == 4, run.stderr
    for line, name in zip(skipped, ["DSC_0005.NEF", "IMG_0004.CR2", "clip.mov", "cut.heic"]):
        assert name in line
    assert "empty file (0 bytes)" in skipped[2]
    record = json.loads(run.stdout)
    assert record["skipped"] == 4 and record["photos"] == 1


MISSING = """
import sys
sys.modules["pillow_heif"] = None  # as on a machine without the package
sys.modules["rawpy"] = None
from convscope.data import load_image, load_image_bytes
from convscope.errors import ImageError
for path in sys.argv[1:]:
    try:
        if path.endswith("upload"):
            load_image_bytes(open(path, "rb").read(), "upload")
        else:
            load_image(path)
    except ImageError as exc:
        print(exc.reason)
"""


def test_a_format_this_machine_cannot_read_names_its_package(tmp_path, photo):
    heic, disguised, dng = tmp_path / "a.heic", tmp_path / "heic-named.jpg", tmp_path / "a.dng"
    photo.save(heic, quality=80)
    disguised.write_bytes(heic.read_bytes())
    write_dng(dng, np.asarray(photo))
    upload = tmp_path / "upload"  # an upload: no name, the DNG known by its bytes
    upload.write_bytes(dng.read_bytes())
    run = subprocess.run([sys.executable, "-c", MISSING, str(heic), str(disguised), str(dng), str(upload)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "HEIC/HEIF photo: install pillow-heif to read it (pip install pillow-heif)",
        "HEIC/HEIF photo: install pillow-heif to read it (pip install pillow-heif)",
        "camera RAW file: install rawpy to read it (pip install rawpy)",
        "camera RAW file: install rawpy to read it (pip install rawpy)",
    ]


def test_uploads_read_heic_and_raw_by_their_bytes(tmp_path, photo):
    """An upload has no file name: a HEIC and a DNG are known by their bytes, within the upload's budget."""
    heic, dng = tmp_path / "a.heic", tmp_path / "a.dng"
    photo.save(heic, quality=90)
    write_dng(dng, np.asarray(photo), orientation=6, preview=photo)
    assert data.load_image_bytes(heic.read_bytes(), "upload", target_size=100).size == (150, 100)
    assert formats.is_raw("upload", dng.read_bytes()) and not formats.is_raw("upload", heic.read_bytes())
    assert data.load_image_bytes(dng.read_bytes(), "upload", target_size=100).size == (100, 150)  # drafted 1/4, upright
    with pytest.raises(data.ImageTooLarge):
        data.load_image_bytes(dng.read_bytes(), "upload", max_pixels=100_000)  # the preview's 240,000 pixels
    bare = tmp_path / "bare.dng"
    write_dng(bare, np.asarray(photo))
    with pytest.raises(data.ImageTooLarge, match="too large to decode"):  # a demosaic's bytes: mosaic, work, file
        data.load_image_bytes(bare.read_bytes(), "upload", max_bytes=1 << 20)
