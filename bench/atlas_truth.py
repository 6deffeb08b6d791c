"""Pictures that tell the truth (issue 13), measured on one machine in one run, default model and
layers:

(a) ties in the top-9: per layer, the share of top-9 examples whose ranking value equals another
    top-9 value of the same unit (or is exactly 6.0), for a scan ranked by the output (as before)
    and one ranked by ``rank_by="auto"`` (the pre-activation where a ReLU6 ends the layer);
(b) ``atlas build`` time with projections of the top ``--project`` examples, the deconvnet
    computed for every layer (``deconvnet="always"``, the old behaviour) vs only where it
    depends on the image (``"auto"``; none of EfficientNet-Lite0's layers has a max-pool below it).

    python bench/atlas_truth.py ../shared/data/imagenet-samples --project 3 --keep /tmp/atlas500

The machine's load average is printed before and after each step (a shared machine: other
jobs change the times).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def tie_share(values: torch.Tensor, ids: torch.Tensor) -> float:
    """Share of the filled top-K slots whose value equals another slot's of the same unit, or 6.0."""
    filled = ids >= 0
    v = torch.where(filled, values, torch.full_like(values, float("nan")))
    same = (v.unsqueeze(2) == v.unsqueeze(1)).sum(2) > 1  # NaN equals nothing
    tied = (same | (v == 6.0)) & filled
    return float(tied.sum()) / max(1, int(filled.sum()))


def ties(model, paths, layers, batch_size, workers) -> None:
    from convscope.scan import scan

    results = {}
    for how in ("output", "auto"):
        started = time.perf_counter()
        results[how] = scan(model, paths, layers, 9, rank_by=how, batch_size=batch_size, workers=workers, progress=False)
        print(f"scan rank_by={how}: {time.perf_counter() - started:.1f} s ({load()})", flush=True)
    print("\n(a) tied top-9 values (equal to another top-9 value of the unit, or exactly 6.0)")
    print(f"{'layer':16s} {'units':>5s}  {'by output':>9s}  {'auto':>7s}  {'auto ranks by':44s} {'auto: outputs at 6.0':>20s}")
    for name in results["auto"].state.layers:
        before = tie_share(*results["output"].state.top(name)[:2])
        keys, ids = results["auto"].state.top(name)[:2]
        after = tie_share(keys, ids)
        outputs = results["auto"].state.outputs(name)
        at_six = float(((outputs == 6.0) & (ids >= 0)).sum()) / max(1, int((ids >= 0).sum()))
        print(f"{name:16s} {ids.shape[0]:5d}  {before:9.1%}  {after:7.1%}  {results['auto'].ranked_by(name):44s} "
              f"{at_six:20.1%}", flush=True)


def builds(model, paths, layers, project, batch_size, workers, keep) -> None:
    from convscope.atlas import build

    times = {}
    root = Path(tempfile.mkdtemp(prefix="atlas_truth_"))
    try:
        for how in ("always", "auto"):
            out = root / how
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atlas = build(model, paths, out, layers, 9, project=project, batch_size=batch_size, workers=workers,
                              progress=False, deconvnet=how)
            times[how] = time.perf_counter() - started
            files = {m: sum(1 for _ in out.glob(f"layers/*/unit_*/top_*_{m}.png")) for m in ("deconvnet", "guided")}
            skipped = [n for n in atlas.layers if not atlas.layer(n)["deconvnet"]["computed"]]
            print(f"build deconvnet={how}: {times[how]:.1f} s, {files['deconvnet']} deconvnet + {files['guided']} "
                  f"guided pictures; deconvnet left out of {len(skipped)} of {len(atlas.layers)} layers ({load()})",
                  flush=True)
            atlas.close()
        print(f"\n(b) atlas build, top {project} projected per unit: deconvnet everywhere {times['always']:.1f} s, "
              f"only where it depends on the image {times['auto']:.1f} s: {times['always'] / times['auto']:.2f}x, "
              f"{times['always'] - times['auto']:.1f} s saved")
        if keep:
            if Path(keep).exists():
                shutil.rmtree(keep)
            shutil.move(str(root / "auto"), keep)
            print(f"kept the deconvnet=auto atlas in {keep}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="?", default="../shared/data/imagenet-samples")
    parser.add_argument("--project", type=int, default=3, help="top examples per unit projected (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", default=None, help="folder to keep the deconvnet=auto atlas in")
    parser.add_argument("--skip-builds", action="store_true", help="only (a)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from convscope.data import expand_inputs
    from convscope.models import load_model

    paths = [str(p) for p in expand_inputs([args.photos])[0]]
    model = load_model(device="cpu")
    layers = model.layers.default
    print(f"{model.spec}, {len(paths)} photos, layers {', '.join(layers)}, {args.threads} threads, "
          f"{os.cpu_count()} cores, {load()}", flush=True)
    ties(model, paths, layers, args.batch_size, args.workers)
    if not args.skip_builds:
        print()
        builds(model, paths, layers, args.project, args.batch_size, args.workers, args.keep)


if __name__ == "__main__":
    main()
