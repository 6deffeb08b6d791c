"""How fast the gallery cuts the patches of an atlas built without them (issue 24: "the demo's
patch cutting runs at about 35 patches/s"): a unit at a time, as a unit page asks
(:meth:`convscope.atlas.fill.Filler.fill`'s patch step: each photo of the unit read again), against
layer by layer, as the server's background cutting does (:meth:`Filler.cut_layer`: each photo
read once per layer), on copies of one atlas, side by side in one run.

The atlas is the demo's serving build over N photos (the demo's recipe: its seven layers, top 6,
whole photos beyond 50; ``build(..., project=0, patches=False)``: no patch cut). A unit at a time
is timed over the first ``--units`` units of each layer (cutting them all would take minutes);
layer by layer over every patch. Then the two copies' patch files are compared where both have
them (the same bytes).

    python bench/cut_patches.py --photos 370
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from first_picture import dev_folder  # noqa: E402

from convscope.atlas import Atlas, build  # noqa: E402
from convscope.atlas.fill import Filler  # noqa: E402
from convscope.models import load_model  # noqa: E402
from convscope.web.demo import RECIPE  # noqa: E402


def patch_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("patches/*/*.png")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=370)
    ap.add_argument("--units", type=int, default=40, help="units per layer cut a unit at a time")
    args = ap.parse_args()
    model = load_model(RECIPE["model"], device="cpu")
    with tempfile.TemporaryDirectory(prefix="convscope-cut-") as tmp:
        tmp = Path(tmp)
        photos = dev_folder(tmp, args.photos)
        t = time.monotonic()
        build(model, [str(photos)], tmp / "atlas", layers=RECIPE["layers"], top=RECIPE["top"], crops="1", project=0,
              patches=False, names=False, progress=False)
        scanned = time.monotonic() - t
        shutil.copytree(tmp / "atlas", tmp / "by-unit")
        row = {"photos": args.photos, "scan_s": round(scanned, 1), "load_start": os.getloadavg()[0]}

        with Atlas.open(tmp / "by-unit") as atlas:  # a unit at a time, as unit pages ask
            filler = Filler(atlas, model, featvis=False)
            cut, t = 0, time.monotonic()
            for layer in atlas.layers:
                for unit, ranks in list(atlas.lacking_patches(layer).items())[: args.units]:
                    filler._patches(layer, {unit: ranks}, None)
                    cut += len(ranks)
            row["by_unit"] = {"patches": cut, "seconds": round(time.monotonic() - t, 1)}

        with Atlas.open(tmp / "atlas") as atlas:  # layer by layer, as the background does
            filler = Filler(atlas, model, featvis=False)
            cut, t = 0, time.monotonic()
            for layer in atlas.layers:
                cut += filler.cut_layer(layer)["patches"]
            row["by_layer"] = {"patches": cut, "seconds": round(time.monotonic() - t, 1)}
        row["load_end"] = os.getloadavg()[0]
        for key in ("by_unit", "by_layer"):
            row[key]["per_s"] = round(row[key]["patches"] / max(row[key]["seconds"], 1e-9), 1)
        a, b = patch_files(tmp / "by-unit"), patch_files(tmp / "atlas")
        row["same_files"] = all(b.get(k) == v for k, v in a.items()) and len(a) > 0
        print(json.dumps(row), flush=True)
    print("| cutting | patches | seconds | patches/s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| a unit at a time (the first {args.units} units of each layer) | {row['by_unit']['patches']:,} | "
          f"{row['by_unit']['seconds']} | {row['by_unit']['per_s']} |")
    print(f"| layer by layer (every patch) | {row['by_layer']['patches']:,} | {row['by_layer']['seconds']} | "
          f"{row['by_layer']['per_s']} |")


if __name__ == "__main__":
    main()
