"""Contact sheets of feature visualizations at three depths of the default model, for the docs.

Renders units of an early, a middle and a late layer of the default selection
(``model.layers.default``) of the default model and writes ``docs/featvis-early.png``,
``docs/featvis-middle.png`` and ``docs/featvis-late.png``. Early layers should show colours and
edges, later ones textures and object parts.

    python bench/featvis_sheets.py                   # 8 units per layer, 512 steps, 128 px
    python bench/featvis_sheets.py --steps 256 --units 0-3 --out /tmp/sheets
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/featvis.py

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from convscope import featvis  # noqa: E402
from convscope.models import load_model  # noqa: E402


def pick_layers(default: list[str]) -> dict[str, str]:
    """Early: the second default layer (the first is the stem); middle: the middle one; late: the
    last block before the classifier head."""
    return {"early": default[1], "middle": default[len(default) // 2], "late": default[-2]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", default="0-7")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs"))
    ap.add_argument("--only", choices=["early", "middle", "late"], action="append", help="render only these depths")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(device="cpu")
    layers = pick_layers(model.layers.default)
    os.makedirs(args.out, exist_ok=True)
    for depth, layer in layers.items():
        if args.only and depth not in args.only:
            continue
        t0 = time.perf_counter()
        r = featvis.render(model, layer, args.units, steps=args.steps, size=args.size, seed=args.seed)
        labels = [f"unit {u}: {v:.2f}" for u, v in zip(r.units, r.objective)]
        title = f"{model.spec} {layer} ({depth}), {args.steps} steps, {args.size} px; mean channel activation"
        sheet = featvis.contact_sheet(r.images, labels, columns=min(len(r.units), 8), title=title)
        path = os.path.join(args.out, f"featvis-{depth}.png")
        sheet.save(path)
        print(f"{depth:>6} {layer:>10}: {len(r.units)} units in {time.perf_counter() - t0:.0f} s -> {path}")


if __name__ == "__main__":
    main()
