"""The full atlas build, before and after a change, side by side in one run (issue 24: "the full
build gets faster too"), and whether the two atlases are the same.

Each build is ``python -m convscope atlas build PHOTOS --out TMP/NAME`` (the default settings:
every unit's top 9 patches and their projections, then the unit names) as a subprocess with
``CONVSCOPE_PROGRESS=1``, so each phase's bar ends with a line ``PHASE N/N in H:MM:SS``: the
scan, the patches and projections, the names. ``--before REV`` builds with the tree of ``REV``
(``git archive`` into a temporary folder) first, then with this checkout; ``--repeat`` alternates
them. Then the two atlases are compared: every table of ``atlas.sqlite`` (less the meta's
``created`` and ``build_seconds``, and the naming record's time) and the bytes of every PNG file.

    python bench/atlas_build.py ../shared/data/imagenet-samples --before fc0ce62
    python bench/atlas_build.py photos/ --before HEAD~3 --repeat 2 --keep /tmp/builds
    python bench/atlas_build.py --compare /tmp/builds/before-0 /tmp/builds/after-0
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PHASE = re.compile(r"^(?P<phase>[a-z ,]+?) (?P<done>\d+)/(?P<total>\d+) in (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)$")


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` (this repository's) in ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_build(tree: Path, photos: list[str], out: Path, extra: list[str]) -> dict:
    """One build with the code in ``tree``: its wall seconds, each phase's, the load before and after."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CONVSCOPE_PROGRESS": "1"}
    where = subprocess.run([sys.executable, "-c", "import convscope; print(convscope.__file__)"], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(tree)):
        raise SystemExit(f"the build would import {where}, not the tree in {tree}")
    cmd = [sys.executable, "-m", "convscope", "atlas", "build", *photos, "--out", str(out), *extra]
    load = os.getloadavg()[0]
    started = time.monotonic()
    # run in the tree itself: `python -m` puts the working folder first on sys.path, before PYTHONPATH
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    phases = {}
    for line in done.stderr.splitlines():
        m = PHASE.match(line.strip())
        if m:
            phases[m["phase"]] = {"seconds": int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"]),
                                  "count": int(m["total"])}
    return {"wall_s": round(wall, 1), "phases": phases, "load": [round(load, 2), round(os.getloadavg()[0], 2)]}


def tables(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            rows = conn.execute(f"SELECT * FROM {name}").fetchall()
            if name == "meta":
                rows = [r for r in rows if r[0] not in ("created", "build_seconds", "naming")]
            out[name] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def compare(a: Path, b: Path) -> dict:
    """The two atlases' tables, and their PNG files: the same bytes, else the same pixels, else
    how far apart (the largest difference of one channel of one pixel, in levels of 255, and the
    share of the files' pixels that differ at all)."""
    ta, tb = tables(a / "atlas.sqlite"), tables(b / "atlas.sqlite")
    fa, fb = files(a), files(b)
    names = sorted(fa.keys() | fb.keys())
    missing = [k for k in names if k not in fa or k not in fb]
    other_bytes = [k for k in names if k in fa and k in fb and fa[k] != fb[k]]
    other_pixels, largest, differ, total = [], 0, 0, 0
    for k in other_bytes:
        pa, pb = pixels(a / k), pixels(b / k)
        if pa.shape != pb.shape:
            other_pixels.append(k)
            continue
        d = np.abs(pa - pb).max(axis=-1)
        total += d.size
        if d.any():
            other_pixels.append(k)
            largest, differ = max(largest, int(d.max())), differ + int((d > 0).sum())
    return {"tables_equal": ta == tb, "tables_differing": sorted(k for k in ta.keys() | tb.keys() if ta.get(k) != tb.get(k)),
            "png_files": len(fb), "png_equal": fa == fb, "png_missing": missing[:20],
            "png_other_bytes": len(other_bytes), "png_other_pixels": len(other_pixels),
            "largest_pixel_difference": largest, "pixels_differing_share": round(differ / total, 6) if total else 0.0,
            "png_differing": other_pixels[:20]}


def examples(out: Path) -> dict:
    """What the render step made: examples (each with its patch), distinct patch files, projections."""
    conn = sqlite3.connect(out / "atlas.sqlite")
    try:
        n, patches, guided, deconvnet = conn.execute(
            "SELECT count(*), count(DISTINCT patch), count(guided), count(deconvnet) FROM examples").fetchone()
    finally:
        conn.close()
    return {"examples": n, "patch_files": patches, "projections": guided + deconvnet}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="*", help="what `atlas build` takes")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="only compare two atlases built before")
    ap.add_argument("--before", help="the git revision to compare with (its tree, exported)")
    ap.add_argument("--repeat", type=int, default=1, help="before/after pairs, alternating")
    ap.add_argument("--keep", type=Path, default=None, help="keep the atlases in this folder")
    ap.add_argument("--build-args", default="", help="more `atlas build` options, as one string")
    args = ap.parse_args()
    if args.compare:
        print(json.dumps(compare(*args.compare), indent=1))
        return
    if not args.photos or not args.before:
        ap.error("give the photos and --before REV (or --compare A B)")
    extra = args.build_args.split()
    photos = [p if p.startswith("@") else os.path.abspath(p) for p in args.photos]  # the builds run in their trees
    rows = []
    with tempfile.TemporaryDirectory(prefix="convscope-bench-build-") as tmp:
        tmp = Path(args.keep or tmp).resolve()
        before = export(args.before, Path(tempfile.mkdtemp(prefix="convscope-before-")))
        try:
            for r in range(args.repeat):
                for name, tree in (("before", before), ("after", ROOT)):
                    out = tmp / f"{name}-{r}"
                    if out.exists():
                        shutil.rmtree(out)
                    row = {"build": name, "rev": args.before if name == "before" else "this checkout", "round": r,
                           **run_build(tree, photos, out, extra)}
                    row.update(examples(out))
                    render = next((v for k, v in row["phases"].items() if k.startswith("cutting patches")), None)
                    if render:
                        row["render_s"] = render["seconds"]
                        row["patches_per_s"] = round(row["examples"] / max(render["seconds"], 1), 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            same = compare(tmp / "before-0", tmp / "after-0")
            print(json.dumps({"compare": same}), flush=True)
        finally:
            shutil.rmtree(before, ignore_errors=True)
    print("| build | wall | scan | patches and projections | the rest (model load, names, writing) "
          "| examples cut and projected per s | load (start, end) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        scan = r["phases"].get("scanning", {}).get("seconds", 0)
        rest = round(r["wall_s"] - scan - r.get("render_s", 0))
        print(f"| {r['build']} ({r['rev']}) | {r['wall_s']} s | {scan} s | {r.get('render_s', '')} s | {rest} s | "
              f"{r.get('patches_per_s', '')} | {r['load'][0]}, {r['load'][1]} |")
    print(f"same atlas: tables {same['tables_equal']}, {same['png_files']} PNG files byte for byte {same['png_equal']}; "
          f"{same['png_other_bytes']} with other bytes, {same['png_other_pixels']} with other pixels "
          f"(largest difference {same['largest_pixel_difference']}/255), {len(same['png_missing'])} missing")


if __name__ == "__main__":
    main()
