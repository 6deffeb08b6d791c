"""When `convscope demo` should start its index (issue 24, "search answers as soon as the index
holds entries"): for each choice of :data:`convscope.web.demo.INDEX_STARTS`, side by side in one
run, seconds from starting the demo's build to its first atlas page, to the first search answer
(``/api/search?q=cat`` finds chelsea, one of the demo's own photos, indexed first), to the
finished atlas and to the finished index.

Each run builds in a fresh folder, in this process, as ``convscope demo`` does (``DemoBuild``,
the gallery app following the index): the demo's 15 sample photos plus ``N - 15`` dev photos
(one per ``500 // (N - 15)`` of the sorted 500).

    python bench/index_start.py --sizes 15,100
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from first_picture import SAMPLES, dev_folder  # noqa: E402


def run(out: Path, images: Path | None, start: str, timeout: float) -> dict:
    from starlette.testclient import TestClient

    from convscope.web import create_app
    from convscope.web.demo import DemoBuild

    began = time.monotonic()
    build = DemoBuild(out, [images] if images else [], echo=lambda line: None, index_start=start)
    row = {"index_start": start}
    atlas = build.wait_servable(timeout)
    row["first_page_s"] = round(time.monotonic() - began, 1)
    app = create_app(atlas, index=build.servable_index(), fill=False)
    build.follow(app)
    events = (("atlas_done_s", build.atlas_done), ("index_done_s", build.index_done))
    with TestClient(app) as client:
        while time.monotonic() - began < timeout and not all(k in row for k in ("first_search_s", *dict(events))):
            now = round(time.monotonic() - began, 1)
            for name, event in events:
                if event.is_set() and name not in row:
                    row[name] = now
            if "first_search_s" not in row and client.get("/api/search", params={"q": "cat"}).json()["count"]:
                row["first_search_s"] = now
            time.sleep(0.1)
    build.thread.join(timeout)
    build.index_thread.join(timeout)
    if build.error:
        row["error"] = build.error
    return row


def warm_up() -> None:
    """Imports and a first forward pass, so that no choice pays them (the first run would)."""
    import torch

    from convscope import atlas, index  # noqa: F401
    from convscope.models import load_model
    from convscope.web import app  # noqa: F401

    model = load_model()
    with torch.inference_mode():
        model.module(torch.zeros(1, 3, *model.preprocessing.input_size))


def main() -> None:
    from convscope.web.demo import INDEX_STARTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="15,100", help="photos in all (the 15 sample photos included)")
    ap.add_argument("--starts", default=",".join(INDEX_STARTS))
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    warm_up()
    rows = []
    with tempfile.TemporaryDirectory(prefix="convscope-index-start-") as tmp:
        for n in (int(v) for v in args.sizes.split(",")):
            images = dev_folder(Path(tmp), n - SAMPLES)
            for start in args.starts.split(","):
                row = {"photos": n, **run(Path(tmp) / f"demo-{n}-{start}", images, start, args.timeout)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("| photos | index starts | first page | first search answer | atlas done | index done |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['photos']} | {r['index_start']} | {r['first_page_s']} s | {r.get('first_search_s', '-')} s | "
              f"{r.get('atlas_done_s', '-')} s | {r.get('index_done_s', '-')} s |")


if __name__ == "__main__":
    main()
