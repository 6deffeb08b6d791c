"""Albums and the timeline at 10k, 100k and 1M entries: time and peak memory, before and after.

Each size gets one synthetic index (``tests/synthetic.py``: random top classes whose first holds
0.4 of the probability, random unit embeddings with a 40th of the files look-alikes of 40
centres, a date taken on three files in four, a city on one in three), written once under
``--dir`` by this checkout and read by both trees. Each measure runs in a fresh process with
``PYTHONPATH`` set to its tree (``--before DIR``, ``--after DIR``, default this checkout):
``Index.albums()`` (which is ``organize.albums`` in both), and for the timeline
``period_tree`` plus the first page and a page 500,000 files deep of the busiest year
(``period_files``). Peak memory is the process's peak RSS less its RSS just before the call
(the index open, its imports done). A measure that passes ``--timeout`` seconds is killed and
shown as such.

    git archive 3999dbf | (mkdir -p /tmp/albums-before && tar -x -C /tmp/albums-before)
    python bench/albums.py --before /tmp/albums-before                    # 10k, 100k, 1M
    python bench/albums.py --before /tmp/albums-before --sizes 10000 100000 --dim 1280
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of this process, in MB: read from /proc, since
    ``ru_maxrss`` keeps the peak of the parent that forked it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(what: str, index: str) -> dict:
    """In the worker process: measure ``what`` ("albums" or "timeline") on ``index``."""
    from convscope.index import Index, browse

    with Index.open(index) as idx:
        if what == "albums":
            import sklearn.cluster  # noqa: F401  (imports before the baseline)

            base = _status_mb("VmRSS")
            t = time.perf_counter()
            albums = idx.albums()
            seconds = time.perf_counter() - t
            other = sum(len(a["paths"]) for a in albums if a["album"] == "other")
            out = {"seconds": seconds, "albums": len(albums), "other": other}
        else:
            base = _status_mb("VmRSS")
            t = time.perf_counter()
            tree = browse.period_tree(idx)
            tree_s = time.perf_counter() - t
            year = max(tree, key=lambda y: y.count)
            t = time.perf_counter()
            first = browse.period_files(idx, year.key, limit=60)
            first_s = time.perf_counter() - t
            deep = min(500_000, year.count - 60)
            t = time.perf_counter()
            page = browse.period_files(idx, year.key, offset=max(deep, 0), limit=60)
            deep_s = time.perf_counter() - t
            out = {"seconds": tree_s, "first_page_s": first_s, "deep_page_s": deep_s, "deep_offset": max(deep, 0),
                   "years": len(tree), "files": sum(y.count for y in tree), "page": len(page.files) + len(first.files)}
    out["peak_mb"] = _status_mb("VmHWM") - base
    return out


def measure(tree: Path, what: str, index: Path, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "CONVSCOPE_PROGRESS": "0"}
    t = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, __file__, "--worker", what, str(index)], env=env, capture_output=True,
                             text=True, timeout=timeout, cwd=tree)
    except subprocess.TimeoutExpired:
        return {"killed": True, "seconds": time.perf_counter() - t}
    if run.returncode != 0:
        raise SystemExit(f"{what} on {index} with {tree} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def cell(r: dict | None, key: str = "seconds", unit: str = "s") -> str:
    if r is None:
        return "-"
    if r.get("killed"):
        return f"> {r['seconds']:.0f} s (killed)"
    return f"{r[key]:.2f} {unit}" if unit == "s" else f"{r[key]:.0f} {unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="a checkout to measure beside this one (albums only)")
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=1280, help="embedding dimensions (EfficientNet-Lite0's: 1280)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/albums-bench"))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--before-max", type=int, default=10**9, help="measure --before only up to this many entries")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    sys.path.insert(0, str(ROOT))
    from tests.synthetic import synthetic_index

    rows = []
    for n in args.sizes:
        index = args.dir / f"n{n}-d{args.dim}"
        if not (index / "index.sqlite").exists() and not any(index.glob("*.sqlite")):
            import shutil

            shutil.rmtree(index, ignore_errors=True)
            t = time.perf_counter()
            synthetic_index(index, n, dim=args.dim, groups=40)
            print(f"wrote {index} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        before = measure(args.before, "albums", index, args.timeout) if args.before and n <= args.before_max else None
        after = measure(args.after, "albums", index, args.timeout)
        timeline = measure(args.after, "timeline", index, args.timeout)
        rows.append((n, before, after, timeline))
        print(json.dumps({"n": n, "before": before, "after": after, "timeline": timeline}), file=sys.stderr)
    print(f"\nalbums and timeline on synthetic indexes ({args.dim}-dimension embeddings); peak = RSS above the open index")
    print(f"{'entries':>9} | {'albums before':>22} | {'peak before':>12} | {'albums after':>14} | {'peak after':>10} | "
          f"{'other after':>11} | {'timeline tree':>13} | {'first page':>10} | {'deep page':>9} | {'peak':>7}")
    for n, before, after, timeline in rows:
        print(f"{n:>9,} | {cell(before):>22} | {cell(before, 'peak_mb', 'MB') if before and not before.get('killed') else '-':>12} | "
              f"{cell(after):>14} | {cell(after, 'peak_mb', 'MB'):>10} | {after.get('other', '-'):>11} | "
              f"{cell(timeline):>13} | {cell(timeline, 'first_page_s'):>10} | {cell(timeline, 'deep_page_s'):>9} | "
              f"{cell(timeline, 'peak_mb', 'MB'):>7}")
    for (n0, b0, a0, t0), (n1, b1, a1, t1) in zip(rows, rows[1:]):
        grow = lambda r0, r1, k="seconds": (f"{r1[k] / r0[k]:.1f}x" if r0 and r1 and not r0.get("killed") and not r1.get("killed")
                                           and r0[k] > 0 else "-")
        print(f"growth {n0:,} -> {n1:,} ({n1 / n0:.0f}x entries): albums before {grow(b0, b1)}, after {grow(a0, a1)} "
              f"(peak {grow(a0, a1, 'peak_mb')}); timeline tree {grow(t0, t1)}, deep page {grow(t0, t1, 'deep_page_s')}")


if __name__ == "__main__":
    main()
