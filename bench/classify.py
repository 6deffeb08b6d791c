"""Top-1 accuracy of the default model on labelled photos, and end-to-end classify throughput as a
ratio to the bare forward pass on already-decoded tensors, measured in one run.

    python bench/classify.py --images ../shared/data/imagenet-samples \
        --labels ../shared/data/imagenet-samples-labels.tsv
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

import convscope
from convscope.classify import iter_classify
from convscope.data import expand_inputs, load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--labels", required=True, help="TSV with columns file, class_index")
    ap.add_argument("--model", default=convscope.DEFAULT_MODEL)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    truth = {}
    with open(args.labels) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            truth[row["file"]] = int(row["class_index"])
    model = convscope.load_model(args.model, device=args.device)
    paths, _ = expand_inputs([args.images])
    paths = [p for p in paths if p.name in truth]
    n = len(paths)

    # 1) end-to-end: files -> decoded in workers -> model -> labels
    t0 = time.perf_counter()
    results = list(iter_classify(model, paths, top=1, batch_size=args.batch_size, workers=args.workers, progress=False))
    e2e = time.perf_counter() - t0
    correct = sum(1 for r in results if r.ok and r.predictions[0].index == truth[Path(r.path).name])
    errors = sum(1 for r in results if not r.ok)

    # 2) the bare forward pass on tensors decoded beforehand (same batch size, same threads)
    tensors = torch.stack([model.transform(load_image(p)) for p in paths])
    with torch.inference_mode():
        model.module(tensors[: args.batch_size].to(model.device))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, args.batch_size):
            model.module(tensors[i : i + args.batch_size].to(model.device))
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        bare = time.perf_counter() - t0

    print(f"model {model.spec}, {n} images, batch {args.batch_size}, threads {args.threads}, device {args.device}")
    print(f"top-1 accuracy: {correct / n:.3f} ({correct}/{n}, {errors} unreadable)")
    print(f"end-to-end classify: {n / e2e:.1f} images/s")
    print(f"bare forward on decoded tensors: {n / bare:.1f} images/s")
    print(f"ratio end-to-end / bare forward: {bare / e2e:.2f}")


if __name__ == "__main__":
    main()
