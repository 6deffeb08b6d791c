"""Time to the first picture (issue 24): seconds from starting ``convscope demo`` to its first
page, and to a layer page of the first layer with every unit's top patch, against the time
``convscope classify`` takes over the same photos; side by side in one run.

For each size the demo runs as a new user starts it, as a subprocess, in a fresh folder:
``convscope demo --out TMP --port P`` (its own 15 sample photos), or with ``--images DIR`` (DIR:
links to N - 15 dev photos, one per ``500 // (N - 15)`` of the sorted 500, so N photos in all; beyond
500, :func:`dev_folder` makes distinct photos of them: each dev photo, then a mirrored, a cropped and a
slightly rotated copy of each, re-encoded as JPEG, until there are N - 15). The
bench polls ``/api/atlas`` until it answers (the first page), then asks the first layer's top
patches as its layer page does (``POST /api/layers/L/fill``) and polls until every unit of the
layer has its patch; meanwhile a thread polls ``/api/search?q=cat`` for the first search answer. The demo is then stopped (the rest of its build is not timed: the pages
already show the atlas growing). ``classify`` runs over the same photos (``--samples`` and DIR).

    python bench/first_picture.py                    # 15 and 370 photos
    python bench/first_picture.py --sizes 15         # the demo's own photos only
    python bench/first_picture.py --sizes 15,370,2000
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
#: the dev photos: ../shared beside the checkout (or beside a worktree's parent folder)
DEV = next((d for d in (ROOT.parent / "shared/data/imagenet-samples", ROOT.parents[1] / "shared/data/imagenet-samples")
            if d.is_dir()), ROOT.parent / "shared/data/imagenet-samples")
SAMPLES = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CONVSCOPE_PROGRESS": "0"}


#: The copies that make more distinct photos than the dev set holds (:func:`dev_folder`), in order.
COPIES = ("mirrored", "cropped", "rotated")


def copy_of(photo: Path, kind: str, out: Path) -> None:
    """A distinct photo made of ``photo``: ``mirrored`` left to right, ``cropped`` to its central
    80 %, or ``rotated`` by 7 degrees (cropped to the inside of the turn); re-encoded as a JPEG
    (quality 90) in ``out``, so its bytes, hash and pixels are its own."""
    from PIL import Image, ImageOps

    with Image.open(photo) as opened:
        img = ImageOps.exif_transpose(opened).convert("RGB")
    w, h = img.size
    if kind == "mirrored":
        img = ImageOps.mirror(img)
    elif kind == "cropped":
        img = img.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    elif kind == "rotated":
        img = img.rotate(7, resample=Image.BICUBIC).crop((w // 8, h // 8, w - w // 8, h - h // 8))
    else:
        raise ValueError(f"unknown copy {kind!r}; one of {COPIES}")
    img.save(out, format="JPEG", quality=90)


def dev_folder(tmp: Path, n: int) -> Path | None:
    """A folder of ``n`` distinct photos, or None for none: links to ``n`` dev photos, one per
    ``len // n`` of them sorted; beyond the dev set's size, all of them, then their copies
    (:data:`COPIES`, each kind over every photo before the next kind), up to four per photo."""
    if n <= 0:
        return None
    photos = sorted(p for p in DEV.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if n > len(COPIES) * len(photos) + len(photos):
        raise SystemExit(f"{n} photos: the dev set's {len(photos)} make at most {(1 + len(COPIES)) * len(photos)}")
    chosen = photos[:: max(1, len(photos) // n)][:n]
    folder = tmp / f"dev{n}"
    folder.mkdir()
    for p in chosen:
        (folder / p.name).symlink_to(p)
    made = [(p, kind) for kind in COPIES for p in photos][: n - len(chosen)]
    for p, kind in made:
        copy_of(p, kind, folder / f"{p.stem}_{kind}.jpg")
    return folder


def first_search(url: str, started: float, timeout: float, result: dict) -> threading.Thread:
    """Poll ``/api/search?q=cat`` from the start until it finds a photo (chelsea, one of the
    demo's own photos, indexed first), on a thread; its seconds go to ``result["first_search_s"]``:
    when search answers from the index's first snapshot (issue 24)."""

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() - started < timeout:
                try:
                    r = http.get("/api/search", params={"q": "cat"})
                    if r.status_code == 200 and r.json().get("count"):
                        result["first_search_s"] = round(time.monotonic() - started, 1)
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.3)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread


def time_demo(tmp: Path, images: Path | None, timeout: float) -> dict:
    port = free_port()
    out = tmp / f"demo-{port}"
    cmd = [sys.executable, "-m", "convscope", "demo", "--out", str(out), "--port", str(port)]
    if images is not None:
        cmd += ["--images", str(images)]
    log = open(tmp / f"demo-{port}.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    result: dict = {"command": " ".join(cmd[1:])}
    searching = first_search(url, started, timeout, result)
    try:
        with httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as http:
            info = None
            while time.monotonic() - started < timeout and proc.poll() is None:
                try:
                    r = http.get("/api/atlas")
                    if r.status_code == 200:
                        info = r.json()
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            if info is None:
                raise RuntimeError(f"no page in {timeout} s; see {log.name}")
            result["first_page_s"] = round(time.monotonic() - started, 1)
            result["first_page_building"] = info["building"]
            layer = info["layers"][0]["name"]
            while time.monotonic() - started < timeout:
                page = http.get(f"/api/layers/{layer}").json()
                if page["units"] and all(u["patch"] for u in page["units"]):
                    break
                if page["missing_tops"]:
                    http.post(f"/api/layers/{layer}/fill")
                time.sleep(0.3)
            else:
                raise RuntimeError(f"no top patches of {layer} in {timeout} s; see {log.name}")
            result["first_layer_patches_s"] = round(time.monotonic() - started, 1)
            result["first_layer"] = layer
            result["units"] = len(page["units"])
            result["building_then"] = page["building"]
            searching.join(max(0.0, timeout - (time.monotonic() - started)))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return result


def time_classify(images: Path | None) -> float:
    cmd = [sys.executable, "-m", "convscope", "classify", "--samples", "--json"] + ([str(images)] if images else [])
    t = time.monotonic()
    subprocess.run(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return round(time.monotonic() - t, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="15,370", help="photos in all (the 15 sample photos included; up to 2,015)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="convscope-first-picture-") as tmp:
        for n in (int(v) for v in args.sizes.split(",")):
            images = dev_folder(Path(tmp), n - SAMPLES)
            row = {"photos": n, **time_demo(Path(tmp), images, args.timeout), "classify_s": time_classify(images)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| photos | first page | first layer's top patches | first search answer | classify the same photos |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['photos']} | {r['first_page_s']} s | {r['first_layer_patches_s']} s | "
              f"{r.get('first_search_s', '-')} s | {r['classify_s']} s |")


if __name__ == "__main__":
    main()
