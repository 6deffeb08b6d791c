"""What the multi-crop scan buys (issue 24): the same photos scanned as whole photos only
(``crops=1``) and as 14 crops each (``crops="1,2,3"``), the default model, top 9; per layer, how
many units' top-9 examples change and how many of the top-9 photos differ, and the time of each
scan. A top example is counted by its photo (a crop's example is its photo's), so "changed"
means another photo among the unit's top 9, not only another window of the same photo.

    python bench/crops.py --photos 150      # 150 dev photos, every third (classes spread), about 5 minutes on 2 shared cores
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's convscope first

import torch  # noqa: E402

from convscope.models import load_model  # noqa: E402
from convscope.scan import scan  # noqa: E402

LAYERS = ["bn1", "blocks.1", "blocks.2", "blocks.4", "bn2"]


def top_photos(result, layer: str) -> list[list[int]]:
    _keys, ids, _ys, _xs = result.state.top(layer)
    count = result.crops.count
    return [[int(i) // count for i in row if i >= 0] for row in ids.tolist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", default=str(Path(__file__).resolve().parents[3] / "shared/data/imagenet-samples"))
    ap.add_argument("--photos", type=int, default=150)
    ap.add_argument("--top", type=int, default=9)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    paths = sorted(str(p) for p in Path(args.dev).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    paths = paths[:: max(1, len(paths) // args.photos)][: args.photos]  # spread over the classes
    model = load_model(device="cpu")
    results, seconds = {}, {}
    for crops in ("1", "1,2,3"):
        t = time.perf_counter()
        results[crops] = scan(model, paths, LAYERS, args.top, crops=crops, batch_size=32, progress=False)
        seconds[crops] = time.perf_counter() - t
    rows = []
    for layer in LAYERS:
        one, many = top_photos(results["1"], layer), top_photos(results["1,2,3"], layer)
        units = len(one)
        changed_units = sum(1 for a, b in zip(one, many) if a != b)
        changed_sets = sum(1 for a, b in zip(one, many) if set(a) != set(b))
        # photos in the 14-crop top 9 that are not in the whole-photo top 9 (a photo counted once)
        new = sum(len(set(b) - set(a)) for a, b in zip(one, many))
        shown = sum(len(set(b)) for b in many)
        # the 14-crop top 9 holds a photo several times (several of its windows)
        repeats = sum(len(b) - len(set(b)) for b in many)
        rows.append({"layer": layer, "units": units, "order_or_photos_changed": changed_units,
                     "photo_set_changed": changed_sets, "new_photos": new, "distinct_photos_14": shown,
                     "repeated_photo_slots_14": repeats, "slots": units * args.top})
    out = {"photos": len(paths), "top": args.top, "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "layers": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
