"""Robust image reading: every kind of bad input is rejected with one line and counted."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.data import (
    MAX_BYTES,
    ImageTooLarge,
    decode_cost,
    expand_inputs,
    iter_batches,
    load_image,
    load_image_bytes,
    load_image_hashed,
    to_rgb,
)
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


# --------------------------------------------------------------------------- one bad input is its own problem


def _reason(path) -> str:
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "\n" not in err.value.reason
    return err.value.reason


def _without_hanging(fn, fifo, seconds=20.0):
    """Run ``fn`` in a thread; if it blocks (opening ``fifo`` blocks until a writer comes), open
    the FIFO's writing end to let it go, and fail."""
    import threading

    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def bad_inputs(tmp_path):
    """A good photo beside each kind of bad argument: {kind: argument}."""
    write_image(tmp_path / "good.png")
    os.mkfifo(tmp_path / "fifo.jpg")
    write_image(tmp_path / "new\nline.png")  # a good photo whose name holds a newline
    (tmp_path / "empty.jpg").write_bytes(b"")
    long = tmp_path / ("N" * 300 + ".jpg")
    return tmp_path, {
        "good": str(tmp_path / "good.png"),
        "fifo": str(tmp_path / "fifo.jpg"),
        "newline": str(tmp_path / "new\nline.png"),
        "empty": str(tmp_path / "empty.jpg"),
        "long": str(long),
        "long list": "@" + str(long),
        "device": "/dev/null",
        "missing": str(tmp_path / "missing.jpg"),
    }


REASONS = {
    "fifo": "not a regular file (a FIFO)",
    "empty": "empty file (0 bytes)",
    "long": "file name too long",
    "long list": "cannot read list file (file name too long)",
    "device": "not a regular file (a character device)",
    "missing": "no such file or folder",
}


def test_each_bad_argument_is_its_own_problem_with_a_true_reason(bad_inputs):
    d, inputs = bad_inputs
    paths, errors = _without_hanging(lambda: expand_inputs(list(inputs.values())), inputs["fifo"])
    listed = {str(p) for p in paths}
    # named on their own, special files are passed on (and refused unopened by the decoder);
    # what names nothing that can be looked at is an error of expand_inputs, one line each
    assert listed == {inputs[k] for k in ("good", "fifo", "newline", "empty", "device")}
    assert {e.path: e.reason for e in errors} == {inputs[k]: REASONS[k] for k in ("long", "long list", "missing")}
    for kind in ("fifo", "empty", "device", "long", "missing"):
        reason = _without_hanging(lambda: _reason(inputs[kind]), inputs["fifo"])
        expected = "cannot read (No such file or directory)" if kind == "missing" else REASONS[kind]
        assert reason == expected, kind
    assert load_image(inputs["newline"]).size == (64, 48)
    img, _ = load_image_hashed(inputs["newline"])
    assert img.size == (64, 48)
    with pytest.raises(ImageError, match=r"not a regular file \(a FIFO\)"):
        _without_hanging(lambda: load_image_hashed(inputs["fifo"]), inputs["fifo"])


def test_classify_classifies_the_good_photo_beside_each_bad_argument(bad_inputs):
    from convscope.classify import classify

    from .test_atlas import tiny_model

    d, inputs = bad_inputs
    model = tiny_model()
    result = _without_hanging(lambda: classify(model, list(inputs.values()), top=2, workers=0), inputs["fifo"])
    by_path = {c.path: c for c in result}
    assert len(result) == len(inputs) and by_path.keys() == set(inputs.values())
    for kind in ("good", "newline"):
        assert by_path[inputs[kind]].ok and len(by_path[inputs[kind]].predictions) == 2, kind
    for kind, reason in REASONS.items():
        assert by_path[inputs[kind]].error == reason, kind


def test_unreadable_file_is_permission_denied(tmp_path, monkeypatch):
    """Root reads any file whatever its mode, so a real check drops to user nobody in a forked
    child (the test runs as root here); an injected EACCES from os.open covers the rest."""
    import errno

    path = write_image(tmp_path / "secret.png")
    real_open = os.open

    def denied(p, flags, *args, **kwargs):
        if os.fspath(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(p, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    assert _reason(path) == "permission denied"
    with pytest.raises(ImageError, match="^.*: permission denied$"):
        load_image_hashed(path)
    monkeypatch.undo()

    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="convscope-perm-"))  # in /tmp: others may pass through
    try:
        os.chmod(folder, 0o755)
        secret = write_image(folder / "secret.png")
        os.chmod(secret, 0)
        if os.geteuid() != 0:
            assert _reason(secret) == "permission denied"
        else:
            _check_as_nobody(secret)
    finally:
        shutil.rmtree(folder)


def _check_as_nobody(secret):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os and PIL calls, then _exit
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_image(secret)
                answer = "read it"
            except ImageError as exc:
                answer = exc.reason
            paths, errors = expand_inputs([str(secret)])
            answer += "|" + ",".join(str(p) for p in paths) + "|" + ",".join(e.reason for e in errors)
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    assert answer == f"permission denied|{secret}|", answer


def test_unlistable_subfolder_is_one_error_and_the_rest_is_found(tmp_path, monkeypatch):
    import errno

    write_image(tmp_path / "a.png")
    (tmp_path / "locked").mkdir()
    write_image(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(p="."):
        if os.fspath(p).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    paths, errors = expand_inputs([str(tmp_path)])
    assert [p.name for p in paths] == ["a.png"]
    assert [(e.path, e.reason) for e in errors] == [(str(tmp_path / "locked"), "cannot list folder (permission denied)")]


def test_printable_path_escapes_control_characters():
    from convscope.files import printable_path

    assert printable_path("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable_path("x\x1b[31mred\x7f\x85\x00") == "x\\x1b[31mred\\x7f\\x85\\x00"
    assert printable_path("gpj.\u202eexe\u2028") == "gpj.\\u202eexe\\u2028"  # bidi override, line separator
    assert printable_path("Zürich/été/東京 café.jpg") == "Zürich/été/東京 café.jpg"
    assert printable_path(os.fsdecode(b"bad\xffbyte.jpg")) == "bad\\xffbyte.jpg"
    assert printable_path(b"bad\xffbyte.jpg") == "bad\\xffbyte.jpg"
    assert printable_path(Path("a\\b c.jpg")) == "a\\b c.jpg"  # backslash and space kept
    for s in ("a\nb", "\x9b2J", "\u2029"):
        assert printable_path(s).isprintable() and "\n" not in printable_path(s)


# --------------------------------------------------------------------------- the decoder's budget


def _png_header_only(width, height):
    """A PNG whose header says width x height 1-bit grey, with one tiny IDAT: opening it reads
    only the header, so any size can be tried without the memory."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decode_cost_counts_bytes_by_mode_and_bit_depth():
    w, h = 300, 200
    expected = {"1": 1 + 4, "L": 1 + 4, "P": 1 + 4, "I;16": 2 + 4, "I": 4 + 4, "F": 4 + 4, "RGBA": 4 + 4,
                "CMYK": 4 + 4, "RGB": 4}
    for mode, per_pixel in expected.items():
        img = Image.new(mode, (w, h))
        assert decode_cost(img) == w * h * per_pixel, mode
    rgb = Image.new("RGB", (w, h))
    assert decode_cost(rgb, rotated=True) == 2 * w * h * 4  # the upright copy
    assert decode_cost(rgb, factor=2) == w * h * 4 + 150 * 100 * 4
    assert MAX_BYTES >= decode_cost(Image.new("RGB", (12_000, 8_333)), rotated=True)  # 100 Mpx, upright


def test_over_budget_is_refused_in_one_line_before_decoding(tmp_path):
    arr = (np.arange(2000 * 1500, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1500, 2000)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)  # 16-bit grey: 2 bytes a pixel, and 4 for its RGB copy
    need = 2000 * 1500 * 6
    with pytest.raises(ImageTooLarge) as err:
        load_image(path, max_bytes=16 * 2**20)
    assert err.value.reason == "too large to decode (2000x1500 16-bit I;16 takes 17 MiB, limit 16 MiB)"
    with pytest.raises(ImageTooLarge):
        load_image(path, max_bytes=need - 1)
    assert isinstance(err.value, ImageError) and "\n" not in str(err.value)
    assert load_image(path, max_bytes=need).size == (2000, 1500)
    # at reduced scale the RGB copy is small: admitted under a budget the full decode is not
    small = load_image(path, max_bytes=2000 * 1500 * 2 + 400 * 300 * 4, target_size=300)
    assert small.size == (400, 300)  # reduced by 1500 // 300 = 5
    with pytest.raises(ImageTooLarge, match=r"too large \(2000x1500 = 3,000,000 pixels, limit 2,999,999\)"):
        load_image(path, max_pixels=2_999_999)
    data = path.read_bytes()  # bytes in memory count too
    with pytest.raises(ImageTooLarge, match="too large to decode"):
        load_image_bytes(data, "upload", max_bytes=need + len(data) - 1)
    assert np.array_equal(np.asarray(load_image_bytes(data, "upload")), np.asarray(load_image(path)))
    with pytest.raises(ImageError, match="^upload: empty file"):
        load_image_bytes(b"", "upload")
    with pytest.raises(ValueError, match="max_bytes"):
        load_image(path, max_bytes=0)


def test_pil_own_bomb_limit_is_handled_directly(tmp_path):
    import warnings

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 20_000))  # 400 Mpx: over twice PIL's limit
    filters = list(warnings.filters)
    with pytest.raises(ImageTooLarge) as err:
        load_image(path, max_pixels=10**9, max_bytes=10**12)
    assert err.value.reason == "too large (400,000,000 pixels, over PIL's limit); possible decompression bomb"
    assert warnings.filters == filters  # the decoder leaves the process's warning filters alone
    # between PIL's warning and its error: PIL warns (through the process's filters, untouched
    # here), then our limit refuses, from the header
    path.write_bytes(_png_header_only(15_000, 10_000))
    with pytest.warns(Image.DecompressionBombWarning):
        assert _reason(path) == "too large (15000x10000 = 150,000,000 pixels, limit 100,000,000); possible decompression bomb"
    with warnings.catch_warnings():  # a process that runs with -W error
        warnings.simplefilter("error")
        assert _reason(path) == "too large (over PIL's Image.MAX_IMAGE_PIXELS, and warnings are errors here)"
    import inspect

    import convscope.data

    assert "catch_warnings" not in inspect.getsource(convscope.data)


def test_sixteen_bit_float_and_alpha_conversions_equal_the_float64_ones(monkeypatch):
    """The old whole-image float64 conversion, written out here, against the new integer and
    strip-wise one (strips forced small, so the seams are crossed)."""
    import convscope.data as data

    def old(img):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 65535.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if img.mode == "I" and lo >= 0 and hi <= 65535:
                arr = arr / (255.0 if hi <= 255 else 65535.0)
            elif hi > lo:
                arr = (arr - lo) / (hi - lo)
            else:
                arr = np.zeros_like(arr)
        return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)

    monkeypatch.setattr(data, "STRIP_BYTES", 4096)
    rng = np.random.default_rng(0)
    every16 = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # each 16-bit value once
    cases = [
        Image.fromarray(every16), Image.fromarray(every16.astype(">u2")),
        Image.fromarray(rng.integers(0, 256, (90, 70)).astype(np.int32), "I"),
        Image.fromarray(rng.integers(0, 65536, (90, 70)).astype(np.int32), "I"),
        Image.fromarray(rng.integers(-70_000, 900_000, (90, 70)).astype(np.int32), "I"),
        Image.fromarray(rng.normal(size=(90, 70)).astype(np.float32), "F"),
        Image.fromarray(np.full((9, 7), 3.0, np.float32), "F"),
    ]
    assert [c.mode for c in cases[:2]] == ["I;16", "I;16B"]
    for img in cases:
        new = np.asarray(to_rgb(img))
        assert new.shape == (*img.size[::-1], 3) and (new[..., 0] == new[..., 2]).all()
        assert np.array_equal(new[..., 0], old(img)), img.mode  # equal, not merely within a grey level
    rgba = Image.fromarray(rng.integers(0, 256, (90, 70, 4)).astype(np.uint8), "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(Image.alpha_composite(white, rgba).convert("RGB")))
    # reduced by a factor, strip by strip: the same as reducing the whole converted image
    grey = Image.fromarray(rng.integers(0, 65536, (101, 77)).astype(np.uint16))
    assert np.array_equal(np.asarray(to_rgb(grey, 3)), np.asarray(to_rgb(grey).reduce(3)))


def test_target_size_decodes_at_reduced_scale_and_none_is_every_pixel(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(2)
    for (w, h), target in [((1100, 700), 256), ((2600, 1300), 256), ((4100, 3000), 224), ((700, 520), 256), ((300, 200), 256)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        jpg = tmp_path / f"p{w}.jpg"
        Image.fromarray(arr).save(jpg, quality=90)
        png = tmp_path / f"p{w}.png"
        Image.fromarray(arr).save(png, compress_level=1)
        full = load_image(jpg)  # the default: every pixel, as a full decode gives
        with Image.open(jpg) as ref:
            assert np.array_equal(np.asarray(full), np.asarray(ImageOps.exif_transpose(ref).convert("RGB")))
        for path in (jpg, png):
            small = load_image(path, target_size=target)
            assert min(small.size) >= min(target, w, h), (path.name, small.size)
            factor = max(1, min(w, h) // target)
            if factor >= 2:  # libjpeg's 1/2, 1/4, 1/8 (JPEG), then a whole box-filter factor
                assert min(small.size) < 2 * target, (path.name, small.size)
            else:
                assert small.size == (w, h)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    arr = rng.integers(0, 256, (900, 1600, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "turned.jpg", exif=exif, quality=90)
    turned = load_image(tmp_path / "turned.jpg", target_size=256)
    assert turned.size[0] < turned.size[1] and min(turned.size) >= 256  # upright, and big enough


def test_decoding_a_16_bit_image_stays_within_its_byte_budget(tmp_path):
    """Peak memory of one decode, in a fresh process: the 16-bit grey PNG of the issue, scaled
    down (3000 x 3000), takes its decode_cost (2 + 4 bytes a pixel), not the float64 copies."""
    path = tmp_path / "grey16.png"
    arr = (np.arange(3000 * 3000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(3000, 3000)
    Image.fromarray(arr).save(path, compress_level=1)
    code = f"""
import gc, resource, sys
from convscope.data import load_image
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image({str(path)!r})
rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
small = load_image({str(path)!r}, target_size=256)
print(rise * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base * 1024, img.size, small.size)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rise, _after_small, *_ = out.stdout.split()
    cost = 3000 * 3000 * 6
    assert int(rise) <= 1.15 * cost + 8 * 2**20, (int(rise) / 2**20, cost / 2**20)  # the old way: about 4.5x


def test_load_photo_reads_the_file_once_for_pixels_size_date_and_hash(tmp_path, monkeypatch):
    """What an index keeps of a photo comes from one open and one read of its file: the pixels
    at reduced scale, its upright full size, its EXIF date and the sha256 of those bytes."""
    import hashlib

    from convscope.data import load_photo

    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6  # turned a quarter: the upright size is (height, width)
    exif.get_ifd(0x8769)[36867] = "2021:07:04 12:30:00"
    path = tmp_path / "turned.jpg"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (900, 1600, 3), dtype=np.uint8)).save(path, exif=exif)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(os.fspath(p)), real_open(p, *a, **k))[1])
    photo = load_photo(path, target_size=256)
    assert opened == [str(path)]
    assert photo.size == (900, 1600) and photo.image.size[0] < photo.image.size[1] and min(photo.image.size) >= 256
    assert photo.taken == "2021-07-04T12:30:00"
    assert photo.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    plain = tmp_path / "plain.png"
    Image.new("RGB", (30, 20)).save(plain)
    assert load_photo(plain).taken is None and load_photo(plain).size == (30, 20)
    with pytest.raises(ImageError, match="empty"):
        (tmp_path / "empty.jpg").write_bytes(b"")
        load_photo(tmp_path / "empty.jpg")


def test_video_frames_go_through_the_photo_budget(tmp_path):
    """A video frame larger than data's budget is refused in one line, as a photo would be."""
    import av

    from convscope.data import ImageTooLarge
    from convscope.index import media

    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert len(list(media.video_frames(path, fps=5.0))) == 5
    with pytest.raises(ImageTooLarge, match="too large"):
        list(media.video_frames(path, fps=5.0, max_pixels=64 * 48 - 1))
    with pytest.raises(ImageTooLarge, match="too large to decode"):
        list(media.video_frames(path, fps=5.0, max_bytes=64 * 48 * 4 - 1))
