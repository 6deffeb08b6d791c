"""The gallery server against a hostile but fair client, through the real server: uvicorn on
127.0.0.1 in its own process (as `convscope serve` runs it, after the CLI's keep_freed_memory),
reached over loopback sockets. Memory is the server's own, read from /proc/PID/status.

Bounded: every socket has a timeout, every loop a count, and the deadlines are ~2-3 s here.
"""
from __future__ import annotations

import html
import io
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from .test_web import tiny_model  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")

ROOT = Path(__file__).resolve().parents[1]
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
LIMIT = 16
SERVER = textwrap.dedent(
    """
    import sys
    from convscope import runtime
    runtime.keep_freed_memory()  # as the CLI's root group does at start-up
    from convscope.web import create_app, serve
    from tests.test_web import tiny_model
    atlas, port, header_timeout, body_timeout, limit = sys.argv[1:6]
    app = create_app(atlas, model=tiny_model(), body_timeout=float(body_timeout))
    serve(app, host="127.0.0.1", port=int(port), header_timeout=float(header_timeout),
          limit_concurrency=int(limit))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The gallery in a subprocess: its URL, its pid's memory, its log (stderr)."""

    def __init__(self, atlas: Path, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(atlas), str(self.port), str(HEADER_TIMEOUT), str(BODY_TIMEOUT), str(LIMIT)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.baseline = 0

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak since the last reset) of the server, in bytes."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def atlas_copy(web_atlas_dir, tmp_path_factory):
    """A copy of the tiny atlas that these tests may add links and files to."""
    copy = tmp_path_factory.mktemp("hardening") / "atlas"
    shutil.copytree(web_atlas_dir, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def server(atlas_copy, tmp_path_factory):
    srv = Server(atlas_copy, tmp_path_factory.mktemp("hardening-log") / "server.log")
    try:
        # the model loads on the first upload, and explanations import their modules: after
        # this one the server is as it stays, its post-load baseline
        r = post_image(srv.base, png_bytes(photo((300, 200))), explain=True, timeout=60)
        assert r.status_code == 200, r.text
        time.sleep(0.5)
        srv.baseline = srv.status()["VmRSS"]
        yield srv
    finally:
        srv.stop()


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth photo-like RGB image of ``size`` (W, H): scikit-image's astronaut, resized."""
    import skimage.data

    names = ("astronaut", "coffee", "chelsea", "rocket")
    return Image.fromarray(getattr(skimage.data, names[seed % len(names)])()).resize(size, Image.BILINEAR)


def png_bytes(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **options)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def grey16():
    """A 6300 x 6300 16-bit grey PNG (a smooth ramp: a ~300 KB file of 79 MB of pixels) and the
    8-bit picture it stands for, rounded as v / 65535 * 255."""
    n = 6300
    ramp = np.add.outer(np.arange(n, dtype=np.uint16) * 4, np.arange(n, dtype=np.uint16) * 6)
    data = png_bytes(Image.fromarray(ramp), compress_level=9)
    eight = np.rint(ramp / 65535 * 255).astype(np.uint8)
    return data, eight


def post_image(base: str, data: bytes, explain: bool = False, headers=None, timeout: float = 120) -> httpx.Response:
    """POST ``data`` to ``/api/image`` as the gallery's own page would (its Origin; ``headers``
    may replace it, ``None`` values leave a header out)."""
    headers = {"content-type": "application/octet-stream", "Origin": base, **(headers or {})}
    return httpx.post(f"{base}/api/image?explain={int(explain)}", content=data, timeout=timeout,
                      headers={k: v for k, v in headers.items() if v is not None})


# --------------------------------------------------------------------------- memory per upload


def test_four_concurrent_16bit_uploads_raise_the_peak_by_under_600mb(server, grey16):
    data, eight = grey16
    assert len(data) < 400_000  # a small file: 79 MB of pixels
    before = server.status()["VmRSS"]
    server.reset_peak()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_image(server.base, data), range(4)))
    peak = server.status()["VmHWM"]
    assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
    rise = peak - before
    print(f"peak RSS rise of four concurrent 6300x6300 16-bit uploads: {rise / 2**20:.0f} MiB")
    assert rise < 600 * 2**20
    results = [r.json() for r in answers]
    assert all(r["predictions"] == results[0]["predictions"] for r in results)
    # what the model saw is the picture, rounded from 16 bits, as the model's own transform
    # makes it from the full-size image (the server decoded a box-reduced one)
    model = tiny_model()
    x = model.transform(Image.fromarray(eight).convert("RGB")).unsqueeze(0)
    expected = (model.preprocessing.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    seen = np.asarray(Image.open(io.BytesIO(httpx.get(server.base + results[0]["image"]).content)), np.float64)
    assert seen.shape == expected.shape
    assert np.abs(seen - expected).max() <= 3 and np.abs(seen - expected).mean() < 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_photo_of_almost_40_megapixels_is_taken_as_the_docs_promise(server, mode):
    """docs/api.md: 40 megapixels. A 6300 x 6300 (39.7 MP) 8-bit PNG takes 152 MiB to decode,
    RGB or RGBA (4 bytes a pixel), within the 192 MiB budget the docs explain."""
    big = png_bytes(Image.new(mode, (6300, 6300), (90, 120, 200, 255)[:len(mode)]), compress_level=1)
    r = post_image(server.base, big)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5


def test_an_image_over_the_decoding_budget_is_413_with_its_reason(server):
    # a WebP's decoder keeps a second copy: the same 39.7 MP takes twice the memory
    big = io.BytesIO()
    Image.new("RGB", (6300, 6300), (90, 120, 200)).save(big, "WEBP", lossless=True, quality=0, method=0)
    big = big.getvalue()
    r = post_image(server.base, big)
    assert r.status_code == 413
    reason = r.json()["error"]
    assert reason == ("not a usable image: too large to decode (6300x6300 8-bit RGB takes 303 MiB, limit 192 MiB); "
                      "send a smaller image or a JPEG")
    r = httpx.post(server.base + "/image", files={"image": ("big.webp", big, "image/webp")}, timeout=60,
                   headers={"Origin": server.base})
    assert r.status_code == 413 and "too large to decode" in r.text
    # past 40 megapixels, whatever it would take
    r = post_image(server.base, png_bytes(Image.new("L", (6400, 6400)), compress_level=1))
    assert r.status_code == 413
    assert "too large (6400x6400 = 40,960,000 pixels, limit 40,000,000)" in r.json()["error"]
    # a JPEG of 36 MP is decoded at 1/8 scale by libjpeg: taken, and cheap
    before = server.status()["VmRSS"]
    server.reset_peak()
    r = post_image(server.base, jpeg_bytes(photo((6000, 6000))))
    assert r.status_code == 200, r.text
    assert server.status()["VmHWM"] - before < 60 * 2**20  # its full-size RGB alone is 144 MB


def test_the_docs_state_the_upload_limits_the_server_has():
    from convscope.web.upload import MAX_UPLOAD_BYTES
    from convscope.web.upload_pages import MAX_DECODE_BYTES, MAX_UPLOAD_PIXELS

    api = " ".join((ROOT / "docs" / "api.md").read_text().split())
    assert (f"limited to {MAX_UPLOAD_BYTES >> 20} MB (`--max-upload-mb`) and {MAX_UPLOAD_PIXELS // 10**6} "
            f"megapixels") in api
    assert f"within {MAX_DECODE_BYTES >> 20} MiB of decoding memory" in api


# --------------------------------------------------------------------------- memory comes back


def test_memory_returns_near_the_post_load_baseline_after_a_burst(server):
    sizes = [(1600, 1000), (1200, 1200), (1400, 900), (1000, 1500)]
    bodies = [(png_bytes if i % 2 else jpeg_bytes)(photo(sizes[i % 4], seed=i)) for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: post_image(server.base, body, explain=True), bodies))
    assert [r.status_code for r in answers] == [200] * 20, [r.text[:200] for r in answers if r.status_code != 200]
    assert all(r.json()["explanations"]["gradcam"]["url"] for r in answers)
    deadline = time.monotonic() + 5
    while True:
        rss = server.status()["VmRSS"]
        if rss <= 1.1 * server.baseline or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    print(f"RSS {rss / 2**20:.0f} MiB after the burst, baseline {server.baseline / 2**20:.0f} MiB")
    assert rss <= 1.1 * server.baseline


# --------------------------------------------------------------------------- host and origin


@pytest.mark.parametrize("path", ["/api/atlas", "/", "/static/style.css", "/atlas/x.png"])
def test_a_foreign_host_name_is_refused_with_a_reason(server, path):
    r = httpx.get(server.base + path, headers={"Host": "evil.example.com"}, timeout=10)
    assert r.status_code == 421
    text = r.json()["error"] if path.startswith("/api/") else html.unescape(r.text)
    assert "does not answer to the host name 'evil.example.com'" in text


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST", "127.0.0.1"])
def test_loopback_host_names_are_served(server, host):
    r = httpx.get(server.base + "/api/atlas", headers={"Host": host.format(port=server.port)}, timeout=10)
    assert r.status_code == 200


def test_a_malformed_host_header_is_400(server):
    r = httpx.get(server.base + "/api/atlas", headers={"Host": "127.0.0.1:99999"}, timeout=10)
    assert r.status_code == 400 and "bad Host header" in r.json()["error"]


@pytest.mark.parametrize(
    "headers, words",
    [
        ({"Origin": "http://evil.example.com"}, "its Origin 'http://evil.example.com' is not this gallery"),
        ({"Origin": "null"}, "its Origin 'null'"),
        ({"Origin": "http://127.0.0.1:1"}, "its Origin 'http://127.0.0.1:1'"),  # another local server's page
        ({"Origin": "https://127.0.0.1:{port}"}, "is not this gallery"),
        ({"Referer": "http://evil.example.com/page.html"}, "its Referer 'http://evil.example.com/page.html'"),
        # the fetch metadata alone: a browser that sends neither Origin nor Referer
        ({"Sec-Fetch-Site": "cross-site"}, "its Sec-Fetch-Site is cross-site"),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1:{port}"}, "its Sec-Fetch-Site is cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "neither Origin, Referer nor Sec-Fetch-Site: same-origin"),
        # no signal at all: refused, with the header that makes a script's write work
        ({}, "with the header Origin: http://127.0.0.1:{port}"),
    ],
)
def test_a_cross_site_upload_is_refused_with_a_reason(server, headers, words):
    headers = {k: v.format(port=server.port) for k, v in headers.items()}
    r = post_image(server.base, png_bytes(photo((80, 60))), headers={"Origin": None, **headers})
    assert r.status_code == 403
    assert "refused" in r.json()["error"] and words.format(port=server.port) in r.json()["error"]
    r = httpx.post(server.base + "/image", files={"image": ("x.png", png_bytes(photo((80, 60))), "image/png")},
                   headers=headers, timeout=30)
    assert r.status_code == 403 and "refused" in r.text


@pytest.mark.parametrize("headers, host", [
    ({"Origin": "http://127.0.0.1:{port}"}, None),
    ({"Origin": "http://localhost:{port}"}, "localhost:{port}"),
    ({"Referer": "http://127.0.0.1:{port}/image"}, None),  # a browser that sends no Origin
    ({"Sec-Fetch-Site": "same-origin"}, None),  # nor a Referer (Referrer-Policy: no-referrer)
])
def test_a_same_origin_upload_works(server, headers, host):
    headers = {"Origin": None, **{k: v.format(port=server.port) for k, v in headers.items()}}
    if host:
        headers["Host"] = host.format(port=server.port)
    r = post_image(server.base, png_bytes(photo((80, 60))), headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5


# --------------------------------------------------------------------------- files served


def test_only_regular_image_files_inside_the_atlas_are_served(server, atlas_copy):
    patch = httpx.get(server.base + "/api/layers/features.1", timeout=10).json()["units"][0]["patch"]
    r = httpx.get(f"{server.base}/atlas/{patch}", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (atlas_copy / patch).read_bytes()
    db = (atlas_copy / "atlas.sqlite").read_bytes()
    (atlas_copy / "inside_db.png").symlink_to("atlas.sqlite")
    (atlas_copy / "layers" / "db.jpg").symlink_to("../atlas.sqlite")
    (atlas_copy / "patch_link.png").symlink_to(patch)  # even a link to an image: links are not served
    (atlas_copy / "linked").symlink_to("layers", target_is_directory=True)
    shutil.copy(atlas_copy / "atlas.sqlite", atlas_copy / "copy_of_db.png")
    (atlas_copy / "state.gif").write_bytes(b"\x80\x02not a gif")
    for name, words in [
        ("inside_db.png", "links are not served"),
        ("layers/db.jpg", "links are not served"),
        ("patch_link.png", "links are not served"),
        (f"linked/{patch.removeprefix('layers/')}", "links are not served"),
        ("copy_of_db.png", "the file is not a PNG image"),
        ("state.gif", "the file is not a GIF image"),
        ("atlas.sqlite", "no such atlas image"),
        ("layers", "no such atlas image"),
    ]:
        r = httpx.get(f"{server.base}/atlas/{name}", timeout=10)
        assert r.status_code == 404, name
        assert words in html.unescape(r.text), (name, r.text[:300])
        assert db[:16] not in r.content


# --------------------------------------------------------------------------- slow and aborted clients


def _trickle(port: int, head: bytes, body: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``head`` at once, then ``body`` a byte a second (or, with no body, ``head`` itself a
    byte a second) until the server answers or closes; (seconds it took, what it sent)."""
    start = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(1.0)
        slow = body if body else head
        if body:
            s.sendall(head)
        for byte in slow:
            if time.monotonic() - start > limit_s:
                break
            try:
                s.send(bytes([byte]))
            except OSError:  # closed by the server
                break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            s.settimeout(2.0)
            try:
                while chunk:  # the rest of the answer, then the close
                    chunk = s.recv(65536)
                    got += chunk
            except OSError:
                pass
            break
    return time.monotonic() - start, got


def test_slow_clients_are_cut_at_their_deadlines_while_others_are_served(server):
    head = b"GET /api/atlas HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n"
    post = (b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Sec-Fetch-Site: same-origin\r\nContent-Length: 100\r\n\r\n")
    with ThreadPoolExecutor(2) as pool:
        slow_head = pool.submit(_trickle, server.port, head, b"", 15)
        slow_body = pool.submit(_trickle, server.port, post, b"x" * 100, 15)
        time.sleep(0.5)
        served = []
        for _ in range(3):  # others are served meanwhile, at once
            t = time.monotonic()
            r = httpx.get(server.base + "/api/layers/features", timeout=10)
            served.append((r.status_code, time.monotonic() - t))
            time.sleep(0.3)
        head_s, head_answer = slow_head.result(timeout=30)
        body_s, body_answer = slow_body.result(timeout=30)
    assert [s for s, _ in served] == [200] * 3 and max(t for _, t in served) < HEADER_TIMEOUT
    assert HEADER_TIMEOUT - 0.5 <= head_s <= HEADER_TIMEOUT + 2.5, head_s
    assert head_answer.startswith(b"HTTP/1.1 408 ") and b"request head was not complete within 2 s" in head_answer
    assert BODY_TIMEOUT - 0.5 <= body_s <= BODY_TIMEOUT + 2.5, body_s
    assert body_answer.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 3 s" in body_answer
    assert b"connection: close" in body_answer.lower()


def test_connections_beyond_the_cap_get_503(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(LIMIT)]
    try:
        time.sleep(0.2)
        r = httpx.get(server.base + "/api/atlas", timeout=10)
        assert r.status_code == 503
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert httpx.get(server.base + "/api/atlas", timeout=10).status_code == 200


def test_an_aborted_upload_logs_one_line(server):
    before = server.log().splitlines()
    head = (b"POST /api/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Sec-Fetch-Site: same-origin\r\nContent-Length: 200000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head + png_bytes(photo((300, 200)))[:1000] + b"\0" * 99_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while len(server.log().splitlines()) == len(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # anything more it would write
    new = server.log().splitlines()[len(before):]
    assert len(new) == 1, new
    assert "upload aborted by 127.0.0.1:" in new[0] and "of 200,000 bytes" in new[0]
    assert httpx.get(server.base + "/api/atlas", timeout=10).status_code == 200


# --------------------------------------------------------------------------- the decoder itself


def _encoded(mode: str, orientation: int | None = None) -> tuple[bytes, str]:
    """A 320 x 240 picture in ``mode``, as the bytes of a file of a format that keeps that mode."""
    base = photo((320, 240), seed=1)
    if mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257 + np.arange(320, dtype=np.uint16)))
    elif mode in ("I", "F"):
        grey = np.asarray(base.convert("L"), np.float64)
        img = Image.fromarray((grey * 1000 - 5000).astype(np.int32 if mode == "I" else np.float32))
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        img.info["transparency"] = 3
    else:
        img = base.convert(mode)
    assert img.mode == mode
    buf = io.BytesIO()
    fmt = {"I": "TIFF", "F": "TIFF", "CMYK": "JPEG"}.get(mode, "JPEG" if orientation else "PNG")
    options = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if mode == "P":
        options["transparency"] = 3
    img.save(buf, fmt, **options)
    return buf.getvalue(), fmt


@pytest.mark.parametrize("mode, orientation", [
    ("RGB", None), ("RGBA", None), ("LA", None), ("L", None), ("1", None), ("P", None), ("I;16", None),
    ("I", None), ("F", None), ("CMYK", None), ("RGB", 6), ("L", 8), ("RGB", 3),
])
def test_the_budgeted_decoder_sees_what_load_image_sees(tmp_path, mode, orientation):
    """An upload is decoded by convscope.data's decoder (load_image_bytes, as the server calls
    it): what load_image sees at full size, and box-reduced by 4 at the scale the model needs (a
    JPEG by libjpeg's own scaling, within JPEG's error)."""
    from convscope.data import load_image, load_image_bytes

    data, fmt = _encoded(mode, orientation)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    expected = load_image(path)
    full = load_image_bytes(data, "upload")
    assert full.mode == "RGB" and full.size == expected.size
    assert np.array_equal(np.asarray(full), np.asarray(expected))
    reduced = load_image_bytes(data, "upload", target_size=60)  # 240 // 60: reduced by 4
    assert reduced.size == (expected.size[0] // 4, expected.size[1] // 4)
    diff = np.abs(np.asarray(reduced, np.int16) - np.asarray(expected.reduce(4), np.int16))
    if fmt == "JPEG":  # libjpeg's DCT scaling, not a box filter
        assert diff.mean() < 3
    else:
        assert diff.max() <= 1


def test_the_decoder_refuses_by_bytes_not_pixels():
    """The same pixel count costs 1, 2 or 4 bytes a pixel by mode: the upload's budget counts bytes."""
    from convscope.data import ImageTooLarge, load_image_bytes

    grey = png_bytes(Image.new("L", (2000, 2000)))
    rgb = png_bytes(Image.new("RGB", (2000, 2000)))
    budget = dict(max_bytes=10_000_000, target_size=500)  # grey: 4 MB + 1 MB result; RGB: 16 + 1 MB
    assert load_image_bytes(grey, "upload", **budget).size == (500, 500)
    with pytest.raises(ImageTooLarge, match=r"too large to decode \(2000x2000 8-bit RGB takes 16 MiB, limit 10 MiB\)"):
        load_image_bytes(rgb, "upload", **budget)
    with pytest.raises(ImageTooLarge, match="4,000,000 pixels, limit 1,000,000"):
        load_image_bytes(grey, "upload", max_pixels=1_000_000)


def test_release_memory_gives_the_freed_heap_back():
    """Under keep_freed_memory a freed 256 MiB block stays resident; release_memory hands it back."""
    script = textwrap.dedent(
        """
        import torch
        from convscope import runtime
        def rss():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
        assert runtime.keep_freed_memory()
        t = torch.ones(256 * 2**20 // 4)
        del t
        kept = rss()
        print(kept, runtime.release_memory(), rss())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True,
                         env={k: v for k, v in os.environ.items() if k != "CONVSCOPE_KEEP_FREED_MEMORY"})
    kept, released, after = out.stdout.split()
    assert released == "True" and int(kept) - int(after) >= 250, out.stdout


# --------------------------------------------------------------------------- ids in URLs


BIG = "9223372036854775808"  # 2**63: one past SQLite's and numpy's integers


@pytest.fixture(scope="module")
def both(web_atlas_dir, tmp_path_factory):
    """The tiny atlas and the search tests' index behind one real server (uvicorn on 127.0.0.1)."""
    from convscope.web import create_app

    from .served import serving
    from .test_web_search import search_library

    library = search_library(tmp_path_factory)
    app = create_app(web_atlas_dir, model=tiny_model(), index=library / "index", fill=False)
    with serving(app) as base:
        yield base


@pytest.mark.parametrize("url, words", [
    (f"/files/{BIG}/x.jpg", f"there is no file {BIG}; no file is that large"),
    (f"/files/{'9' * 5000}/x.jpg", "there is no file 99999999999999999999... (5000 digits)"),
    ("/files/-1/x.jpg", "there is no file -1; files start at 0"),
    ("/files/123456/x.jpg", "there is no file 123456 in this index"),
    (f"/thumbs/{BIG}.jpg", f"there is no entry {BIG}; entries run from 0 to "),
    ("/thumbs/-1.jpg", "there is no entry -1; entries start at 0"),
    (f"/explain/{BIG}.jpg?class=0", f"there is no entry {BIG}; entries run from 0 to "),
    (f"/explain/{'1' * 5000}.jpg?class=0", "there is no entry 11111111111111111111... (5000 digits)"),
    (f"/api/layers/features.1/units/{BIG}", f"there is no unit {BIG}; no unit is that large"),
    (f"/layers/features.1/units/{'7' * 5000}", "there is no unit 77777777777777777777... (5000 digits)"),
    (f"/api/layers/features.1/units/0/examples/{BIG}", f"there is no rank {BIG}; no rank is that large"),
    (f"/sources/features.1/{BIG}/0.jpg", f"there is no unit {BIG}"),
    (f"/sources/features.1/0/{BIG}.jpg", f"there is no rank {BIG}"),
], ids=lambda value: value[:48])
def test_every_id_in_a_url_is_range_checked(both, url, words):
    r = httpx.get(both + url, timeout=30)
    assert r.status_code == 404, (url, r.status_code, r.text[-300:])
    text = r.json()["error"] if url.startswith("/api/") else html.unescape(r.text)
    assert words in text
    assert "\n" not in (r.json()["error"] if url.startswith("/api/") else words)
