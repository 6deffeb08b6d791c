"""Load test of the gallery server over loopback: 200 concurrent requests against the JSON
endpoints, then 200 concurrent photo uploads, with p50 / p99 latency and the error count; the
search pages of an index served beside the atlas (JSON, HTML, thumbnails); then the HTML pages
alone and while ten uploads are in flight, with the server's memory before, during and after
those uploads; last, the latency of a Grad-CAM hover, a unit search and a first /health while
the fill queue is full.

The server runs in its own process, started as `python -m convscope serve ATLAS --index INDEX`
(uvicorn, 127.0.0.1, a free port: the CLI's keep_freed_memory at start-up, then
convscope.web.serve with its deadlines, connection cap and memory given back); the atlas (the
default model over four scikit-image photos, two layers, top 3) and the index (the first
``--search-photos`` dev photos) are built by `convscope atlas build` and `convscope index`. The
client is httpx's async client. A sequential pass (one request at a time) is measured first, so
the concurrent numbers can be read against it. Memory is the server's resident size from
/proc/PID/status (Linux): its peak during the uploads is VmHWM, reset just before them.

    python bench/serve.py                      # builds a small atlas and index first
    python bench/serve.py --atlas demo-atlas/  # or use an existing atlas
    python bench/serve.py --explain            # uploads also compute occlusion and Grad-CAM (slow)

Two checkouts side by side (``bench/_trees.py``): ``--before DIR`` starts a server of DIR and one
of this checkout (or ``--after DIR``), each with PYTHONPATH set to its checkout and its own atlas
and index built by its own command line, and runs every phase against both in turn, the order
swapped from one phase to the next, each phase with a fresh client and once both servers are
idle; it prints each server's report, then every figure for both with the ratio after / before.

    python bench/serve.py --before /work/wt/base                 # about 3 minutes on 2 idle CPU cores

The fills phase (``--only fills`` runs it alone): ``--fill-units`` unit fills (8) queued on a
server (units whose projections or feature visualization its atlas lacks: the small atlas is
built with ``--project 1``), then, once the first one is at work, a first ``/health``, then
``--fill-probes`` uncached Grad-CAM hovers (``/explain/ROW.jpg?class=C``, as the search pages
ask for them) and as many unit searches (``/api/search?unit=L:U``), one probe every
``--fill-gap`` s, each waiting at most ``--fill-timeout`` s (120: a timeout counts as a failure
with that latency; where the model thread takes fills first to last, a probe waits for the
queue ahead of it, so its latency is capped there). Each server is measured on its own and
stopped right after (its fills left queued stop with it), so they never burden the other
tree. Every layer's geometry is probed and cached first (``convscope layers``, the default
model; with ``--atlas`` cache it yourself), so the first ``/health`` does not probe it (minutes
on 2 busy cores the first time on a machine). The before tree's timeouts are what the phase shows: only the after tree's failures make
the exit status 1.

    python bench/serve.py --before /work/wt/pre20 --only fills   # about 6 minutes on 2 loaded cores

Only 127.0.0.1 is contacted; every loop is bounded. Exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _trees import Figure, Tree, Trees, dev_photos_dir, print_table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def write_atlas_photos(folder: Path) -> Path:
    """Four scikit-image photos as PNG files (the atlas's photos)."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    return folder


def build_small_atlas(tree: Tree, photos: Path, out: Path, cwd: Path) -> Path:
    """The default model (EfficientNet-Lite0) over four scikit-image photos, two layers, top 3,
    built by ``tree``'s command line."""
    tree.run("atlas", "build", str(photos), "--out", str(out), "--layers", "bn1,blocks.2", "--top", "3",
             "--project", "1", "--workers", "0", cwd=cwd)
    return out


def build_small_index(tree: Tree, photos: list[Path], out: Path, cwd: Path) -> int:
    """An index of ``photos`` built by ``tree``'s command line; returns its entries."""
    listing = cwd / f"index-photos-{tree.label}.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    res = tree.run("index", f"@{listing}", "--out", str(out), "--workers", "1", "--json", cwd=cwd)
    return int(json.loads(res.stdout.strip().splitlines()[-1])["entries"])


def start_server(tree: Tree, atlas: Path, index: Path | None, port: int, cwd: Path, log) -> subprocess.Popen:
    """``convscope serve`` of ``tree`` (its keep_freed_memory at start-up, then
    convscope.web.serve: deadlines, the connection cap, memory given back)."""
    args = ["serve", str(atlas), "--host", "127.0.0.1", "--port", str(port)]
    if index is not None:
        args += ["--index", str(index)]
    return subprocess.Popen(tree.command(*args), env=tree.env(), cwd=cwd, stdout=log, stderr=log)


def wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/api", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not start in time:\n{log.read_text()[-3000:]}")


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

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server process so far (all its threads)."""
        try:
            fields = self.path.with_name("stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


@dataclasses.dataclass
class Server:
    """One running ``convscope serve`` (of one tree) and what was measured on it."""

    label: str
    base: str
    memory: Memory
    proc: subprocess.Popen | None = None
    client: object = None
    result: dict = dataclasses.field(default_factory=lambda: {"failures": []})


def make_plan(args, info: dict, entries: int | None, unit_layers: list[dict] | None = None) -> dict:
    """The requests of every phase (the same for both trees): JSON endpoints, uploads, HTML
    pages, and with an index the search requests and (``unit_layers``: the layers its unit
    search offers) those of the fills phase."""
    rng = random.Random(0)
    layers = [(layer["name"], layer["channels"]) for layer in info["layers"]]
    json_urls, page_urls = [], []
    for i in range(args.requests):
        name, channels = layers[i % len(layers)]
        unit = rng.randrange(channels)
        json_urls.append(["/api/atlas", f"/api/layers/{name}", f"/api/layers/{name}/units/{unit}",
                          f"/api/layers/{name}/units/{unit}/examples/0"][i % 4])
    for i in range(args.pages):
        name, channels = layers[i % len(layers)]
        unit = rng.randrange(channels)
        page_urls.append(["/", f"/layers/{name}", f"/layers/{name}/units/{unit}",
                          f"/layers/{name}/units/{unit}/examples/0"][i % 4])
    explain = "1" if args.explain else "0"
    bodies = [photo_bytes(i) for i in range(4)]
    plan = {
        "model": info["model"].get("spec") if isinstance(info.get("model"), dict) else info.get("model"),
        "layers": layers, "explain": explain,
        "json": [("GET", u, None) for u in json_urls],
        "uploads": [("POST", f"/api/image?explain={explain}", bodies[i % 4]) for i in range(args.requests)],
        "pages": [("GET", u, None) for u in page_urls],
        "phone": [photo_bytes(i, (4032, 3024)) for i in range(4)],  # 12 Mpx JPEGs, as a phone takes them
        "search": [],
    }
    if entries:
        words = ("dog", "cat", "bird", "vehicle", "fruit", "furniture", "tool", "building")
        plan["search"] = [("GET", [f"/api/search?q={words[i % len(words)]}", f"/search?q={words[i % len(words)]}",
                                   f"/thumbs/{(7 * i) % entries}.jpg"][i % 3], None) for i in range(args.search_requests)]
    if entries and unit_layers and args.fill_units:
        # fills in the deepest layer first (the slowest), then the others; hovers on distinct
        # (entry, class) pairs and searches for distinct units, the first of each to warm up
        plan["fill_candidates"] = [(name, u) for name, channels in layers[::-1] for u in range(channels)]
        pairs = [(i % entries, (97 * i + 13) % 1000) for i in range(args.fill_probes + 1)]
        search_layer = unit_layers[-1]
        units = [f"{search_layer['name']}:{i % search_layer['units']}" for i in range(args.fill_probes + 1)]
        plan["hovers"] = [f"/explain/{row}.jpg?class={cls}" for row, cls in pairs[1:]]
        plan["unit_searches"] = [f"/api/search?unit={u}" for u in units[1:]]
        plan["fill_warm"] = [("POST", "/api/image?explain=0", bodies[0]),
                             ("GET", f"/explain/{pairs[0][0]}.jpg?class={pairs[0][1]}", None),
                             ("GET", f"/api/search?unit={units[0]}", None)]
    return plan


async def phase_warm(server: Server, plan: dict, args) -> None:
    """Not measured: fills the server's page caches and loads the model."""
    c = server.client
    await run_batch(c, list(dict.fromkeys(plan["json"])), 8)
    await run_batch(c, plan["uploads"][:2], 1)
    await run_batch(c, list(dict.fromkeys(plan["pages"])), 8)
    await run_batch(c, list(dict.fromkeys(plan["search"])), 8)


def pooled(old: tuple | None, new: tuple) -> tuple:
    """Two rounds of one group (label, sequential latencies, concurrent latencies, errors, wall
    seconds, requests) as one."""
    if old is None:
        return new
    return (new[0], old[1] + new[1], old[2] + new[2], old[3] + new[3], old[4] + new[4], old[5] + new[5])


async def phase_bursts(server: Server, plan: dict, args) -> None:
    """The JSON endpoints, then the uploads: ``--sequential`` one at a time, then all of them
    with ``--concurrency`` in flight."""
    r = server.result
    r.setdefault("loaded_rss", server.memory.read())
    rows = r.setdefault("groups", {})
    for label, reqs in (("JSON endpoints", plan["json"]), ("upload /api/image", plan["uploads"])):
        seq, err_seq = await run_batch(server.client, reqs[:min(args.sequential, len(reqs))], 1)
        t = time.perf_counter()
        conc, err_conc = await run_batch(server.client, reqs, args.concurrency)
        wall = time.perf_counter() - t
        r["failures"] += err_seq + err_conc
        rows[label] = pooled(rows.get(label), (label, seq, conc, len(err_seq) + len(err_conc), wall, len(reqs)))
    r["rows"] = list(rows.values())
    r["after_bursts"] = server.memory.read()


async def phase_search(server: Server, plan: dict, args) -> None:
    """The search requests (JSON, HTML, thumbnails): one at a time, then ``--page-concurrency``
    in flight."""
    reqs = plan["search"]
    seq, err_seq = await run_batch(server.client, reqs[:min(args.sequential, len(reqs))], 1)
    t = time.perf_counter()
    conc, err_conc = await run_batch(server.client, reqs, args.page_concurrency)
    wall = time.perf_counter() - t
    server.result["failures"] += err_seq + err_conc
    old = server.result.get("search")
    new = (seq, conc, len(err_seq) + len(err_conc), wall, len(reqs))
    server.result["search"] = new if old is None else tuple(a + b for a, b in zip(old, new))


async def phase_pages(server: Server, plan: dict, args) -> None:
    under = await pages_under_uploads(server.client, plan["pages"], plan["phone"], plan["explain"], args.in_flight,
                                      args.page_concurrency, server.memory)
    server.result["failures"] += under["errors"]
    old = server.result.get("under")
    if old is not None:  # pooled with the rounds before; memory: the first before, the highest peak, the last after
        under = {**under, "idle": old["idle"] + under["idle"], "loaded": old["loaded"] + under["loaded"],
                 "uploads": old["uploads"] + under["uploads"], "wall": old["wall"] + under["wall"],
                 "before": old["before"], "peak": max(old["peak"] or 0, under["peak"] or 0) or None}
    server.result["under"] = under


def fill_url(layer: str, unit: int) -> str:
    return f"/api/layers/{layer}/units/{unit}/fill"


async def probe(client, url: str, at: float, timeout: float) -> tuple[float, str | None]:
    """GET ``url`` at ``at`` (perf_counter): its latency (s) and None, or on a failure the
    latency so far (``timeout`` for a timeout) and a line."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    t = time.perf_counter()
    try:
        r = await asyncio.wait_for(client.get(url, timeout=timeout), timeout)
    except asyncio.TimeoutError:
        return timeout, f"timed out after {timeout:.0f} s: {url}"
    except Exception as exc:  # a dropped connection
        return time.perf_counter() - t, f"{type(exc).__name__} {url}: {exc}"
    took = time.perf_counter() - t
    return took, None if r.status_code == 200 else f"{r.status_code} {url}: {r.text[:120]}"


async def phase_fills(server: Server, plan: dict, args) -> None:
    """Interactive work while the fill queue is full: ``--fill-units`` unit fills queued (units
    whose projections or feature visualization this server's atlas lacks), then, once the first
    one runs, the first ``/health``, ``--fill-probes`` uncached Grad-CAM hovers
    (``/explain/ROW.jpg?class=C``, distinct pairs) and as many unit searches
    (``/api/search?unit=L:U``), sent one every ``--fill-gap`` seconds as a person hovers, each
    with ``--fill-timeout`` (a timeout counts as that many seconds and a failure). The server is
    stopped afterwards: the fills left queued must not fall on the other tree's measurement."""
    c, out = server.client, {"errors": []}
    for method, url, body in plan["fill_warm"]:  # not measured: both models loaded, geometry probed
        r = await (c.get(url, timeout=args.fill_timeout) if method == "GET" else
                   c.post(url, content=body, headers={"content-type": "image/jpeg"}, timeout=args.fill_timeout))
        if r.status_code != 200:
            raise SystemExit(f"[{server.label}] warming up for the fills: {r.status_code} {url}: {r.text[:200]}")
    chosen, tiles = [], {}
    for layer, unit in plan["fill_candidates"]:
        body = (await c.get(fill_url(layer, unit))).json()
        if body.get("status") == "missing" and body.get("missing", {}).get("any"):
            chosen.append((layer, unit))
            tiles[(layer, unit)] = len(body.get("files", {}))
            if len(chosen) == args.fill_units:
                break
    if len(chosen) < args.fill_units:
        raise SystemExit(f"[{server.label}] the atlas lacks pictures for {len(chosen)} units, not --fill-units "
                         f"{args.fill_units}: give an atlas built with --project 1 (the default small one is)")
    for layer, unit in chosen:
        r = await c.post(fill_url(layer, unit))
        if r.status_code != 202:
            raise SystemExit(f"[{server.label}] POST {fill_url(layer, unit)}: {r.status_code} {r.text[:200]}")
    # the first fill is at work on the model thread once it wrote a tile (its projections come
    # first) or is done; both trees say "running" for it (the before tree for every queued one)
    first, t = chosen[0], time.perf_counter()
    while time.perf_counter() - t < args.fill_timeout:
        body = (await c.get(fill_url(*first))).json()
        if body["status"] in ("done", "error") or (body["status"] == "running" and len(body.get("files", {})) > tiles[first]):
            break
        await asyncio.sleep(0.2)
    else:
        print(f"[{server.label}] note: the first fill wrote nothing in {args.fill_timeout:.0f} s; measured anyway",
              file=sys.stderr)
    out["waited"] = time.perf_counter() - t
    start = time.perf_counter()
    kinds = ["health"] + [k for pair in zip(["hover"] * len(plan["hovers"]), ["unit"] * len(plan["unit_searches"]))
                          for k in pair]
    urls = ["/health"] + [u for pair in zip(plan["hovers"], plan["unit_searches"]) for u in pair]
    results = await asyncio.gather(*(probe(c, url, start + i * args.fill_gap, args.fill_timeout)
                                     for i, url in enumerate(urls)))
    out["window"] = time.perf_counter() - start
    for kind, (took, error) in zip(kinds, results):
        out.setdefault(kind, []).append(took)
        if error:
            out["errors"].append(error)
    states = [(await c.get(fill_url(*key))).json().get("status") for key in chosen]
    out["done"] = sum(s == "done" for s in states)
    out["fills"] = len(chosen)
    server.result["fills"] = out
    await asyncio.to_thread(stop, server.proc)  # its fills left queued stop with it


async def settle(servers: list[Server], quiet: float = 0.05, timeout: float = 60.0) -> None:
    """Wait until every server is idle (under ``quiet`` CPU seconds in half a second): work a
    server still does after its last answer (the uploads' own after-work, memory handed back)
    must not fall on the next measurement, its own or the other tree's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [s.memory.cpu_seconds() for s in servers]
        await asyncio.sleep(0.5)
        after = [s.memory.cpu_seconds() for s in servers]
        if all(a is None or b is None or a - b < quiet for a, b in zip(after, before)):
            return


async def measure(args, servers: list[Server], plan: dict) -> None:
    """Each phase on every server in turn, the order swapped from one phase to the next, each
    once both servers are idle; the measured phases ``--rounds`` times, their samples pooled."""
    import httpx

    # idle connections are dropped before the server's 5 s keep-alive ends, so no request is sent
    # on a connection the server is closing at that moment
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency,
                          keepalive_expiry=3.0)
    only = set(args.only.split(",")) if args.only else {"bursts", "search", "pages", "fills"}
    measured = [phase for name, phase in (("bursts", phase_bursts), ("search", phase_search), ("pages", phase_pages))
                if name in only and (name != "search" or plan["search"])]
    # the fills phase last, once per server: it stops the server (its fills left queued with it)
    fills = [phase_fills] if "fills" in only and "hovers" in plan else []
    phases = ([phase_warm] if measured else []) + measured * args.rounds + fills
    for k, phase in enumerate(phases):
        for server in servers if k % 2 == 0 else servers[::-1]:
            # a fresh client per phase: the previous phase's hundreds of keep-alive connections
            # are closed now, not while the next phase is measured (on either server)
            # Origin: the gallery takes writes (uploads) only from its own origin, as its pages send them
            async with httpx.AsyncClient(base_url=server.base, timeout=args.timeout, limits=limits,
                                         headers={"Origin": server.base}) as client:
                server.client = client
                await settle(servers)
                await phase(server, plan, args)
            server.client = None


def mib(v):
    return "n/a" if v is None else f"{v:.0f} MiB"


def report(args, server: Server, plan: dict) -> None:
    r = server.result
    print(f"[{server.label}] atlas: {plan['model']}, {len(plan['layers'])} layers; uploads "
          f"{'with' if args.explain else 'without'} occlusion/Grad-CAM; server: uvicorn, 1 process, 127.0.0.1; "
          f"cores: {os.cpu_count()}")
    rows = list(r.get("rows", []))
    if "search" in r:
        seq, conc, nerr, wall, n = r["search"]
        rows.append((f"search ({args.page_concurrency} in flight)", seq, conc, nerr, wall, n))
    if rows:
        print(f"{'endpoint group':20s} {'seq p50':>9s} {'conc p50':>9s} {'conc p99':>9s} {'p50 ratio':>9s} "
              f"{'req/s':>7s} {'requests':>8s} {'errors':>6s}")
        for label, seq, conc, nerr, wall, n in rows:
            s50, c50, c99 = pct(seq, 50), pct(conc, 50), pct(conc, 99)
            print(f"{label:20s} {s50 * 1e3:7.1f}ms {c50 * 1e3:7.1f}ms {c99 * 1e3:7.1f}ms {c50 / s50:8.1f}x "
                  f"{n / wall:7.1f} {n:8d} {nerr:6d}")
        print(f"({args.concurrency} in flight at once; 'seq' = {args.sequential} requests one at a time; "
              + (f"{args.rounds} rounds pooled; " if args.rounds > 1 else "") +
              "ratio = concurrent p50 / sequential p50" + ("; search: /api/search, /search, thumbnails" if "search" in r else "") + ")")
    if "under" in r:
        under = r["under"]
        idle, loaded = under["idle"], under["loaded"]
        print(f"HTML pages (home, layer, unit, example), {args.page_concurrency} in flight, {len(plan['pages'])} requests"
              + (f" x {args.rounds} rounds, pooled" if args.rounds > 1 else "") + ":")
        print(f"  alone:                      p50 {pct(idle, 50) * 1e3:7.1f} ms  p99 {pct(idle, 99) * 1e3:7.1f} ms")
        print(f"  while {args.in_flight} uploads (12 Mpx JPEG) in flight:  p50 {pct(loaded, 50) * 1e3:7.1f} ms  "
              f"p99 {pct(loaded, 99) * 1e3:7.1f} ms  ({len(loaded) / under['wall']:.1f} pages/s; "
              f"{under['uploads']} uploads answered in that time)")
        print("server RSS: "
              + (f"after model load {mib(r['loaded_rss'])}; after the {args.requests}+{args.requests} bursts "
                 f"{mib(r['after_bursts'])}; " if "rows" in r else "")
              + f"before the {args.in_flight} uploads {mib(under['before'])}; peak during {mib(under['peak'])}; "
              + "; ".join(f"{s} s after {mib(v)}" for s, v in under["after"].items()))
    if "fills" in r:
        f = r["fills"]
        print(f"while {f['fills']} unit fills are queued (the first at work after {f['waited']:.1f} s; {f['done']} done "
              f"{f['window']:.0f} s later), one probe every {args.fill_gap:g} s, each waiting at most "
              f"{args.fill_timeout:.0f} s (a timeout counts as that):")
        for kind, label in FILL_PROBES:
            v = f.get(kind, [])
            print(f"  {label:34s} p50 {pct(v, 50):7.2f} s  p99 {pct(v, 99):7.2f} s  max {max(v, default=float('nan')):7.2f} s"
                  f"  ({len(v)} requests)")
        for line in f["errors"][:10]:
            print("  failed:", line)
    for line in r["failures"][:10]:
        print("error:", line)
    print(flush=True)


#: The fills phase's probes: (kind, label).
FILL_PROBES = (("hover", "Grad-CAM hover /explain/ROW.jpg"), ("unit", "unit search /api/search?unit="),
               ("health", "first /health"))


def figures(args, before: Server, after: Server) -> list[Figure]:
    """The figures of :func:`report`, both trees side by side."""
    out = []
    rb_, ra_ = before.result, after.result
    for rb, ra in zip(rb_.get("rows", []), ra_.get("rows", [])):
        label = rb[0]
        for name, fn in (("seq p50", lambda row: pct(row[1], 50)), ("conc p50", lambda row: pct(row[2], 50)),
                         ("conc p99", lambda row: pct(row[2], 99))):
            out.append(Figure(f"{label}: {name}, ms", fn(rb) * 1e3, fn(ra) * 1e3, "lower"))
        out.append(Figure(f"{label}: requests/s, {args.concurrency} in flight", rb[5] / rb[4], ra[5] / ra[4]))
    if "search" in ra_ and "search" in rb_:
        sb, sa = rb_["search"], ra_["search"]
        out += [Figure("search: seq p50, ms", pct(sb[0], 50) * 1e3, pct(sa[0], 50) * 1e3, "lower"),
                Figure(f"search: conc p50, ms ({args.page_concurrency} in flight)", pct(sb[1], 50) * 1e3, pct(sa[1], 50) * 1e3, "lower"),
                Figure("search: conc p99, ms", pct(sb[1], 99) * 1e3, pct(sa[1], 99) * 1e3, "lower"),
                Figure("search: requests/s", sb[4] / sb[3], sa[4] / sa[3])]
    if "under" in rb_ and "under" in ra_:
        ub, ua = rb_["under"], ra_["under"]
        out += [Figure("HTML pages alone: p50, ms", pct(ub["idle"], 50) * 1e3, pct(ua["idle"], 50) * 1e3, "lower"),
                Figure("HTML pages alone: p99, ms", pct(ub["idle"], 99) * 1e3, pct(ua["idle"], 99) * 1e3, "lower"),
                Figure(f"HTML pages, {args.in_flight} uploads in flight: p50, ms", pct(ub["loaded"], 50) * 1e3,
                       pct(ua["loaded"], 50) * 1e3, "lower"),
                Figure(f"HTML pages, {args.in_flight} uploads in flight: p99, ms", pct(ub["loaded"], 99) * 1e3,
                       pct(ua["loaded"], 99) * 1e3, "lower"),
                Figure("HTML pages under uploads: pages/s", len(ub["loaded"]) / ub["wall"], len(ua["loaded"]) / ua["wall"])]
        if "rows" in rb_ and "rows" in ra_:
            out += [Figure("server RSS after model load, MiB", rb_["loaded_rss"], ra_["loaded_rss"], "lower", digits=0),
                    Figure("server RSS after the bursts, MiB", rb_["after_bursts"], ra_["after_bursts"], "lower", digits=0)]
        out += [Figure("server RSS peak during the uploads, MiB", ub["peak"], ua["peak"], "lower", digits=0),
                Figure("server RSS 5 s after the uploads, MiB", ub["after"][5], ua["after"][5], "lower", digits=0)]
    if "fills" in rb_ and "fills" in ra_:
        fb, fa = rb_["fills"], ra_["fills"]
        for kind, label in FILL_PROBES:
            b, a = fb.get(kind, []), fa.get(kind, [])
            stats = (("p50", lambda v: pct(v, 50)), ("p99", lambda v: pct(v, 99)), ("max", max)) if kind != "health" \
                else (("", max),)
            for name, fn in stats:
                out.append(Figure(f"{fa['fills']} fills queued: {label}{', ' + name if name else ''}, s",
                                  fn(b) if b else None, fn(a) if a else None, "lower", digits=2))
        out.append(Figure(f"{fa['fills']} fills queued: probes failed or timed out ({args.fill_timeout:.0f} s)",
                          len(fb["errors"]), len(fa["errors"]), "lower", digits=0))
    out.append(Figure("failed requests (other phases)", len(rb_["failures"]), len(ra_["failures"]), "lower", digits=0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atlas", type=Path, default=None, help="an existing atlas (default: each tree builds a small one)")
    ap.add_argument("--requests", type=int, default=200, help="requests per endpoint group")
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    ap.add_argument("--sequential", type=int, default=20, help="requests in the one-at-a-time baseline")
    ap.add_argument("--explain", action="store_true", help="uploads also compute occlusion and Grad-CAM")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request before it counts as an error")
    ap.add_argument("--pages", type=int, default=1000, help="HTML page requests, alone and under upload load")
    ap.add_argument("--page-concurrency", type=int, default=8, help="page requests in flight at once")
    ap.add_argument("--in-flight", type=int, default=10, help="uploads kept in flight while pages are measured")
    ap.add_argument("--search-photos", type=int, default=60,
                    help="dev photos in the index served beside the atlas (its search pages measured too); 0: no index")
    ap.add_argument("--search-requests", type=int, default=300, help="search requests (JSON, HTML, thumbnails)")
    ap.add_argument("--dev", type=Path, default=dev_photos_dir(), help="the dev photos, for --search-photos")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times each measured phase runs (per server), the samples pooled (a noisy machine)")
    ap.add_argument("--only", default=None, metavar="PHASES",
                    help="run only these phases, comma-separated: bursts, search, pages, fills (default: all)")
    ap.add_argument("--fill-units", type=int, default=8, help="fills phase: unit fills queued; 0: no fills phase")
    ap.add_argument("--fill-probes", type=int, default=6,
                    help="fills phase: Grad-CAM hovers, and as many unit searches, timed while the fills run")
    ap.add_argument("--fill-gap", type=float, default=1.0, help="fills phase: seconds between one probe and the next")
    ap.add_argument("--fill-timeout", type=float, default=120.0,
                    help="fills phase: seconds a probe waits (a timeout counts as a failure of that latency)")
    Trees.add_arguments(ap)
    args = ap.parse_args()
    if args.only and not set(args.only.split(",")) <= {"bursts", "search", "pages", "fills"}:
        ap.error(f"--only {args.only}: give phases among bursts, search, pages, fills, comma-separated")
    args.fill_units = max(0, min(args.fill_units, 64))  # the fill queue's bound
    args.fill_probes = max(1, min(args.fill_probes, 7))  # all 15 probes within the model's queue of 16
    args.fill_gap = max(0.0, min(args.fill_gap, 60.0))
    args.fill_timeout = max(1.0, min(args.fill_timeout, 600.0))
    args.requests = max(1, min(args.requests, 5000))
    args.concurrency = max(1, min(args.concurrency, 1000))
    args.pages = max(4, min(args.pages, 5000))
    args.page_concurrency = max(1, min(args.page_concurrency, 100))
    args.in_flight = max(1, min(args.in_flight, 100))
    args.search_requests = max(3, min(args.search_requests, 5000))
    args.rounds = max(1, min(args.rounds, 20))
    trees = Trees.from_args(args)
    chosen = list(trees) if trees is not None else [Tree("this", args.after.resolve())]
    if trees is not None:
        print(f"gallery server benchmark, two trees side by side\n{trees.header()}", flush=True)
    dev = []
    if args.search_photos:
        dev = sorted(p for p in args.dev.glob("*.*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.search_photos]
        if not dev:
            raise SystemExit(f"--dev {args.dev}: no photos to index (or --search-photos 0)")
    fills = bool(dev) and args.fill_units > 0 and args.atlas is None and "fills" in (args.only or "fills")
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        photos = write_atlas_photos(tmp / "photos")
        servers, procs = [], []
        entries = None
        for tree in chosen:
            t = time.perf_counter()
            atlas = args.atlas or build_small_atlas(tree, photos, tmp / f"atlas-{tree.label}", tmp)
            index = None
            if dev:
                index = tmp / f"index-{tree.label}"
                entries = build_small_index(tree, dev, index, tmp)
            print(f"[{tree.label}] built {'an index and ' if dev else ''}{'a small atlas' if args.atlas is None else ''} "
                  f"in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            if fills:
                # every layer's geometry probed and cached ($CONVSCOPE_CACHE) before measuring: a
                # first /health would otherwise probe them all (minutes on 2 busy cores, a few
                # seconds once cached), in whichever tree came first
                t = time.perf_counter()
                tree.run("layers", "--json", cwd=tmp)
                print(f"[{tree.label}] layer geometry cached in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            port = free_port()
            log = stack.enter_context(open(tmp / f"server-{tree.label}.log", "w"))
            proc = start_server(tree, atlas, index, port, tmp, log)
            stack.callback(stop, proc)
            servers.append(Server(tree.label, f"http://127.0.0.1:{port}", Memory(proc.pid), proc))
            procs.append(proc)
        for server, proc in zip(servers, procs):
            wait_ready(server.base, proc, tmp / f"server-{server.label}.log")
        import httpx

        infos = [httpx.get(s.base + "/api/atlas", timeout=60).json() for s in servers]
        if len({json.dumps(i["layers"], sort_keys=True) for i in infos}) != 1:
            print("note: the two atlases list different layers; the requests follow the after tree's", file=sys.stderr)
        unit_layers = None
        if dev:
            unit_layers = httpx.get(servers[-1].base + "/api/search", timeout=60).json().get("layers")
        plan = make_plan(args, infos[-1], entries, unit_layers)
        if "fills" in (args.only or "fills") and args.fill_units and "hovers" not in plan:
            print("note: no fills phase (it needs an index: --search-photos)", file=sys.stderr)
        asyncio.run(measure(args, servers, plan))
    for server in servers:
        report(args, server, plan)
    if len(servers) == 2:
        print_table("gallery server: after / before", figures(args, *servers))
    # the before tree's probes may time out behind its fills (what the phase shows): only the
    # after tree's (or the one tree's) count
    failed = any(s.result["failures"] for s in servers) or servers[-1].result.get("fills", {}).get("errors")
    return 1 if failed else 0


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
