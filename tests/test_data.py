"""Robust image reading: every kind of bad input is rejected with one line and counted."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convscope.data import expand_inputs, iter_batches, load_image, load_image_hashed
from convscope.errors import ImageError

from .conftest import write_image


def _jpeg_bytes(size=(80, 60)):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A folder with one file of every kind; returns (dir, {kind: path})."""
    d = tmp_path_factory.mktemp("zoo")
    files = {}
    files["good"] = write_image(d / "good.png")
    files["grayscale"] = write_image(d / "gray.png", mode="L")
    files["palette"] = write_image(d / "palette.gif", mode="P")
    files["cmyk"] = write_image(d / "cmyk.jpg", mode="CMYK")
    arr16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(arr16).save(d / "deep16.png")  # 16-bit grayscale PNG (mode I;16)
    files["16bit"] = d / "deep16.png"
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :32, 3] = 0  # left half transparent
    rgba[:, 32:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    files["alpha"] = d / "alpha.png"
    files["odd path"] = write_image(d / "ünïcode name with spaces #1.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    files["corrupt"] = d / "corrupt.jpg"
    full = _jpeg_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    files["truncated"] = d / "truncated.jpg"
    (d / "empty.png").write_bytes(b"")
    files["empty"] = d / "empty.png"
    (d / "notes.png").write_text("this is text, not a picture\n")
    files["non-image"] = d / "notes.png"
    Image.new("1", (12000, 9000)).save(d / "bomb.png")  # 108 megapixels, a few kB on disk
    files["huge"] = d / "bomb.png"
    return d, files


BAD = {
    "corrupt": "corrupt image",
    "truncated": "truncated",
    "empty": "empty file",
    "non-image": "not an image",
    "huge": "too large",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_raise_one_line(zoo, kind):
    _, files = zoo
    with pytest.raises(ImageError) as err:
        load_image(files[kind])
    assert BAD[kind] in err.value.reason
    assert "\n" not in str(err.value)
    with pytest.raises(ImageError) as hashed:  # decoded from the bytes read for the hash
        load_image_hashed(files[kind])
    assert hashed.value.reason == err.value.reason


def test_hashed_loading_decodes_the_same_pixels_and_hashes_those_bytes(zoo, tmp_path):
    import hashlib

    _, files = zoo
    for kind in ("good", "palette", "cmyk", "16bit", "alpha", "odd path"):
        img, sha256 = load_image_hashed(files[kind])
        assert np.array_equal(np.asarray(img), np.asarray(load_image(files[kind]))), kind
        assert sha256 == hashlib.sha256(files[kind].read_bytes()).hexdigest()
    with pytest.raises(ImageError, match="cannot read"):
        load_image_hashed(tmp_path / "missing.png")


def test_conversions(zoo):
    _, files = zoo
    for kind in ("good", "grayscale", "palette", "cmyk", "16bit", "alpha", "odd path"):
        img = load_image(files[kind])
        assert img.mode == "RGB" and img.size == (64, 48), kind
    deep = np.asarray(load_image(files["16bit"]))
    # 16-bit data scaled by 65535, not clipped at 255: a smooth ramp from 0 to 255
    assert deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 255 and 100 < deep[24, 32, 0] < 160
    alpha = np.asarray(load_image(files["alpha"]))
    assert tuple(alpha[10, 5]) == (255, 255, 255)  # transparent -> white
    assert tuple(alpha[10, 50]) == (255, 0, 0)
    gray = np.asarray(load_image(files["grayscale"]))
    assert (gray[..., 0] == gray[..., 1]).all()
    cmyk = np.asarray(load_image(files["cmyk"])).astype(int)
    assert abs(cmyk[40, 40, 0] - 200) < 12 and cmyk[40, 40, 1] < 60  # the red survives CMYK


def test_exif_orientation(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)  # upright: portrait
    a = np.asarray(out)
    assert a[5, 10, 0] > 200 and a[35, 10, 0] < 60  # red (was left) is now on top


def test_expand_inputs_folders_globs_lists(zoo, tmp_path):
    d, files = zoo
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "a.png")
    write_image(tmp_path / "b.jpg")
    (tmp_path / "readme.txt").write_text("not listed from folders")
    (tmp_path / "list.txt").write_text("b.jpg\n# comment\n\nsub/a.png\n")
    paths, errors = expand_inputs([str(tmp_path)])
    assert [p.name for p in paths] == ["b.jpg", "a.png"] and not errors
    paths, errors = expand_inputs([f"@{tmp_path / 'list.txt'}", str(tmp_path / "*.jpg"), str(tmp_path / "nothing*.png"), "/no/such/file.png"])
    assert [p.name for p in paths] == ["b.jpg", "a.png"]  # duplicate b.jpg kept once
    assert [e.reason for e in errors] == ["no file matches this pattern", "no such file or folder"]


def test_iter_batches_skips_and_counts_in_workers(zoo):
    d, files = zoo
    from convscope.models import Preprocessing

    prep = Preprocessing((32, 32), 36, "bilinear", (0.5,) * 3, (0.5,) * 3)
    paths = [files[k] for k in sorted(files)]
    seen, errors, hashes = [], [], []
    for batch in iter_batches(paths, prep.transform(), batch_size=4, workers=2, sha256=True):
        assert batch.tensors.shape[1:] == (3, 32, 32) or not batch.indices
        seen += batch.indices
        errors += batch.errors
        hashes += batch.hashes
    assert len(seen) == 7 and len(errors) == 5
    assert seen == sorted(seen)
    assert hashes == [load_image_hashed(paths[i])[1] for i in seen]
    assert all(b.hashes == [] for b in iter_batches(paths[:2], prep.transform(), batch_size=4, workers=0))
    assert {os.path.basename(e.path) for e in errors} == {os.path.basename(files[k]) for k in BAD}


def test_classify_cli_bad_inputs_each_reported(zoo):
    d, files = zoo
    out = subprocess.run(
        [sys.executable, "-m", "convscope", "classify", str(d), str(d / "missing.jpg"), "--json", "--top", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert len(rows) == 13
    for kind, word in BAD.items():
        row = by_name[os.path.basename(files[kind])]
        assert word in row["error"] and "predictions" not in row
    assert "no such file" in by_name["missing.jpg"]["error"]
    good = [r for r in rows if "predictions" in r]
    assert len(good) == 7
    for r in good:
        assert len(r["predictions"]) == 2
        p = [x["probability"] for x in r["predictions"]]
        assert p[0] >= p[1] > 0 and isinstance(r["predictions"][0]["label"], str)
    err_lines = [l for l in out.stderr.splitlines() if l.startswith("skipped ")]
    assert len(err_lines) == 6
    assert out.stderr.strip().splitlines()[-1] == "7 classified, 6 skipped"


def test_classify_cli_nothing_readable_exits_1(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "convscope", "classify", str(tmp_path / "x.jpg")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "empty file" in out.stderr and "Traceback" not in out.stderr
    usage = subprocess.run([sys.executable, "-m", "convscope", "classify"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2
