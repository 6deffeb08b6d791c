"""Load test of the gallery server over loopback: 200 concurrent requests against the JSON
endpoints, then 200 concurrent photo uploads, with p50 / p99 latency and the error count; then
the HTML pages alone and while ten uploads are in flight, with the server's memory before,
during and after those uploads.

The server runs in its own process (uvicorn, 127.0.0.1, a free port), as `convscope serve` runs
it: the CLI's keep_freed_memory at start-up, then convscope.web.serve (deadlines, the connection
cap, memory given back). The client is httpx's async client. A sequential pass (one request at
a time) is measured first, so the concurrent numbers can be read against it. Memory is the
server's resident size from /proc/PID/status (Linux): its peak during the uploads is VmHWM,
reset just before them.

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
        "from convscope.runtime import keep_freed_memory; keep_freed_memory(); "  # as the CLI does
        "from convscope.web import create_app, serve; "
        f"serve(create_app({str(atlas)!r}), host='127.0.0.1', port={port})"
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


def photo_bytes(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    import skimage.data
    from PIL import Image

    names = ["chelsea", "coffee", "astronaut", "rocket"]
    arr = getattr(skimage.data, names[seed % len(names)])()
    img = Image.fromarray(arr).resize(size)
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
                    if url.startswith("/api"):
                        r.json()
                    latencies.append(took)
            except Exception as exc:  # a timeout or a dropped connection counts as an error
                errors.append(f"{type(exc).__name__} {url}: {exc}")

    await asyncio.gather(*(one(*req) for req in requests))
    return latencies, errors


class Memory:
    """The server's resident memory (MiB) from /proc/PID/status; ``None`` off Linux."""

    def __init__(self, pid: int):
        self.path = Path(f"/proc/{pid}/status")
        self.clear = Path(f"/proc/{pid}/clear_refs")

    def read(self, key: str = "VmRSS") -> float | None:
        try:
            for line in self.path.read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def reset_peak(self) -> None:
        try:
            self.clear.write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass


async def pages_under_uploads(client, page_reqs, bodies, explain: str, in_flight: int, page_concurrency: int,
                              memory: Memory) -> dict:
    """The HTML pages alone, then again while ``in_flight`` uploads are kept in flight (each
    worker posts the next as soon as its last is answered); the server's RSS before, its peak
    during, and at 1, 3 and 5 s after the last upload is answered."""
    idle, idle_err = await run_batch(client, page_reqs, page_concurrency)
    before = memory.read()
    memory.reset_peak()
    stop = asyncio.Event()
    uploads: list[float] = []
    upload_errors: list[str] = []
    started = asyncio.Event()
    running = 0

    async def uploader(i: int):
        nonlocal running
        k = i
        while not stop.is_set() and len(uploads) + len(upload_errors) < 10_000:
            running += 1
            if running >= in_flight:
                started.set()
            lat, err = await run_batch(client, [("POST", f"/api/image?explain={explain}", bodies[k % len(bodies)])], 1)
            running -= 1
            uploads.extend(time.perf_counter() for _ in lat)  # when each was answered
            upload_errors.extend(err)
            k += in_flight

    workers = [asyncio.create_task(uploader(i)) for i in range(in_flight)]
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(0.5)  # every upload past its start
    t = time.perf_counter()
    loaded, loaded_err = await run_batch(client, page_reqs, page_concurrency)
    wall = time.perf_counter() - t
    stop.set()
    await asyncio.gather(*workers)
    peak = memory.read("VmHWM")
    done = time.monotonic()
    after = {}
    for s in (1, 3, 5):
        await asyncio.sleep(max(0.0, done + s - time.monotonic()))
        after[s] = memory.read()
    answered = sum(1 for when in uploads if t <= when <= t + wall)
    return {"idle": idle, "loaded": loaded, "errors": idle_err + loaded_err + upload_errors, "uploads": answered,
            "wall": wall, "before": before, "peak": peak, "after": after}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[k]


async def main_async(args, memory: Memory) -> int:
    import httpx

    base = f"http://127.0.0.1:{args.port}"
    rng = random.Random(0)
    # idle connections are dropped before the server's 5 s keep-alive ends, so no request is sent
    # on a connection the server is closing at that moment
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency,
                          keepalive_expiry=3.0)
    # Origin: the gallery takes writes (uploads) only from its own origin, as its pages send them
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=limits,
                                 headers={"Origin": base}) as client:
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

        loaded_rss = memory.read()
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
        after_bursts = memory.read()

        page_urls = []
        for i in range(args.pages):
            name, channels = layers[i % len(layers)]
            unit = rng.randrange(channels)
            page_urls.append(["/", f"/layers/{name}", f"/layers/{name}/units/{unit}",
                              f"/layers/{name}/units/{unit}/examples/0"][i % 4])
        await run_batch(client, [("GET", u, None) for u in dict.fromkeys(page_urls)], 8)  # warm the caches
        phone = [photo_bytes(i, (4032, 3024)) for i in range(4)]  # 12 Mpx JPEGs, as a phone takes them
        under = await pages_under_uploads(client, [("GET", u, None) for u in page_urls], phone, explain,
                                          args.in_flight, args.page_concurrency, memory)
        failures += under["errors"]

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
    print()
    idle, loaded = under["idle"], under["loaded"]
    print(f"HTML pages (home, layer, unit, example), {args.page_concurrency} in flight, {len(page_urls)} requests:")
    print(f"  alone:                      p50 {pct(idle, 50) * 1e3:7.1f} ms  p99 {pct(idle, 99) * 1e3:7.1f} ms")
    print(f"  while {args.in_flight} uploads (12 Mpx JPEG) in flight:  p50 {pct(loaded, 50) * 1e3:7.1f} ms  "
          f"p99 {pct(loaded, 99) * 1e3:7.1f} ms  ({len(loaded) / under['wall']:.1f} pages/s; "
          f"{under['uploads']} uploads answered in that time)")

    def mib(v):
        return "n/a" if v is None else f"{v:.0f} MiB"

    print("server RSS: "
          f"after model load {mib(loaded_rss)}; after the 200+200 bursts {mib(after_bursts)}; "
          f"before the {args.in_flight} uploads {mib(under['before'])}; peak during {mib(under['peak'])}; "
          + "; ".join(f"{s} s after {mib(v)}" for s, v in under["after"].items()))
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
    ap.add_argument("--pages", type=int, default=1000, help="HTML page requests, alone and under upload load")
    ap.add_argument("--page-concurrency", type=int, default=8, help="page requests in flight at once")
    ap.add_argument("--in-flight", type=int, default=10, help="uploads kept in flight while pages are measured")
    args = ap.parse_args()
    args.requests = max(1, min(args.requests, 5000))
    args.concurrency = max(1, min(args.concurrency, 1000))
    args.pages = max(4, min(args.pages, 5000))
    args.page_concurrency = max(1, min(args.page_concurrency, 100))
    args.in_flight = max(1, min(args.in_flight, 100))
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
            return asyncio.run(main_async(args, Memory(proc.pid)))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
