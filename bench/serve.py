"""Load test of the gallery server over loopback: 200 concurrent requests against the JSON
endpoints, then 200 concurrent photo uploads, with p50 / p99 latency and the error count.

The server runs in its own process (uvicorn, 127.0.0.1, a free port), as `convscope serve` runs
it; the client is httpx's async client, every request in flight at once. A sequential pass
(one request at a time) is measured first, so the concurrent numbers can be read against it.

    python bench/serve.py                      # builds a small atlas of the default model first
    python bench/serve.py --atlas demo-atlas/  # or use an existing atlas
    python bench/serve.py --explain            # uploads also compute occlusion and Grad-CAM (slow)

Only 127.0.0.1 is contacted; every loop is bounded. Exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_small_atlas(out: Path) -> Path:
    """The default model (EfficientNet-Lite0) over four scikit-image photos, two layers, top 3."""
    from convscope.atlas import build
    from convscope.data import sample_photos
    from convscope.models import load_model

    import warnings

    photos = [str(p) for p in sample_photos()[:4]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notes about ReLU6 in the projections: not what is measured
        build(load_model(device="cpu"), photos, out, layers=["bn1", "blocks.2"], top=3, project=1, progress=False)
    return out


def start_server(atlas: Path, port: int) -> subprocess.Popen:
    code = (
        "import uvicorn; from convscope.web import create_app; "
        f"uvicorn.run(create_app({str(atlas)!r}), host='127.0.0.1', port={port}, log_level='warning')"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(base + "/api", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")


def photo_bytes(seed: int) -> bytes:
    import skimage.data
    from PIL import Image

    names = ["chelsea", "coffee", "astronaut", "rocket"]
    arr = getattr(skimage.data, names[seed % len(names)])()
    img = Image.fromarray(arr).resize((320, 240))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def run_batch(client, requests, concurrency: int) -> tuple[list[float], list[str]]:
    """Send ``requests`` (method, url, body) with at most ``concurrency`` in flight; returns the
    latencies (s) of the good ones and a line per failure."""
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(method, url, body):
        async with sem:
            t = time.perf_counter()
            try:
                if method == "GET":
                    r = await client.get(url)
                else:
                    r = await client.post(url, content=body, headers={"content-type": "image/jpeg"})
                took = time.perf_counter() - t
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {url}: {r.text[:120]}")
                else:
                    r.json()
                    latencies.append(took)
            except Exception as exc:  # a timeout or a dropped connection counts as an error
                errors.append(f"{type(exc).__name__} {url}: {exc}")

    await asyncio.gather(*(one(*req) for req in requests))
    return latencies, errors


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[k]


async def main_async(args) -> int:
    import httpx

    base = f"http://127.0.0.1:{args.port}"
    rng = random.Random(0)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=limits) as client:
        info = (await client.get("/api/atlas")).json()
        layers = [(layer["name"], layer["channels"]) for layer in info["layers"]]
        json_urls = []
        for i in range(args.requests):
            name, channels = layers[i % len(layers)]
            unit = rng.randrange(channels)
            json_urls.append(
                ["/api/atlas", f"/api/layers/{name}", f"/api/layers/{name}/units/{unit}",
                 f"/api/layers/{name}/units/{unit}/examples/0"][i % 4]
            )
        explain = "1" if args.explain else "0"
        bodies = [photo_bytes(i) for i in range(4)]
        upload_reqs = [("POST", f"/api/image?explain={explain}", bodies[i % 4]) for i in range(args.requests)]
        json_reqs = [("GET", u, None) for u in json_urls]

        # warm-up (not measured): fills the server's page caches and loads the model
        await run_batch(client, [("GET", u, None) for u in dict.fromkeys(json_urls)], 8)
        await run_batch(client, upload_reqs[:2], 1)

        rows = []
        failures: list[str] = []
        for label, reqs in (("JSON endpoints", json_reqs), ("upload /api/image", upload_reqs)):
            seq_n = min(args.sequential, len(reqs))
            seq, err_seq = await run_batch(client, reqs[:seq_n], 1)
            t = time.perf_counter()
            conc, err_conc = await run_batch(client, reqs, args.concurrency)
            wall = time.perf_counter() - t
            failures += err_seq + err_conc
            rows.append((label, seq, conc, len(err_seq) + len(err_conc), wall, len(reqs)))

    print(f"atlas: {info['model'].get('spec') if isinstance(info.get('model'), dict) else info.get('model')}, "
          f"{len(layers)} layers; uploads {'with' if args.explain else 'without'} occlusion/Grad-CAM; "
          f"server: uvicorn, 1 process, 127.0.0.1; cores: {os.cpu_count()}")
    print(f"{'endpoint group':20s} {'seq p50':>9s} {'conc p50':>9s} {'conc p99':>9s} {'p50 ratio':>9s} "
          f"{'req/s':>7s} {'requests':>8s} {'errors':>6s}")
    for label, seq, conc, nerr, wall, n in rows:
        s50, c50, c99 = pct(seq, 50), pct(conc, 50), pct(conc, 99)
        print(f"{label:20s} {s50 * 1e3:7.1f}ms {c50 * 1e3:7.1f}ms {c99 * 1e3:7.1f}ms {c50 / s50:8.1f}x "
              f"{n / wall:7.1f} {n:8d} {nerr:6d}")
    print(f"({args.concurrency} in flight at once; 'seq' = {args.sequential} requests one at a time; "
          "ratio = concurrent p50 / sequential p50)")
    for line in failures[:10]:
        print("error:", line)
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atlas", type=Path, default=None, help="an existing atlas (default: build a small one)")
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint group")
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    ap.add_argument("--sequential", type=int, default=20, help="requests in the one-at-a-time baseline")
    ap.add_argument("--explain", action="store_true", help="uploads also compute occlusion and Grad-CAM")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request before it counts as an error")
    args = ap.parse_args()
    args.requests = max(1, min(args.requests, 5000))
    args.concurrency = max(1, min(args.concurrency, 1000))
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        atlas = args.atlas
        if atlas is None:
            t = time.perf_counter()
            atlas = build_small_atlas(Path(tmp) / "atlas")
            print(f"built a small atlas in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        args.port = free_port()
        proc = start_server(atlas, args.port)
        try:
            wait_ready(f"http://127.0.0.1:{args.port}", proc)
            return asyncio.run(main_async(args))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
