"""Benchmark: deconvnet projections per second, convscope (batched) vs captum (one at a time).

Both project the same examples: random crops of scikit-image's sample photos, each with its own
unit of one layer of the default model (EfficientNet-Lite0, 224x224) at that unit's strongest
position. convscope runs them ``--batch-size`` at a time (one forward cut at the layer and one
backward per batch); captum's ``NeuronDeconvolution`` takes one neuron selector per call, so it
runs them one at a time (full forward and backward each).

captum overrides only ``nn.ReLU`` modules, and with full backward hooks that fail on in-place
modules; it gets a copy of the model whose ``ReLU6`` modules are replaced by an ``nn.ReLU``
subclass computing ``relu6``, not in place, so both compute the same deconvnet (checked: the
maximum absolute difference is printed and must be tiny).

    python bench/backproject.py                 # 64 examples, batch size 32, layer blocks.2
    python bench/backproject.py --examples 16 --layer blocks.4
"""
from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class _ClampedReLU(nn.ReLU):
    """ReLU6 as an nn.ReLU subclass, so that captum's ReLU hooks take it."""

    def forward(self, x):
        return F.relu6(x)


def captum_copy(module: nn.Module) -> nn.Module:
    ref = copy.deepcopy(module)
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, _ClampedReLU())
            elif hasattr(child, "inplace"):
                child.inplace = False
    return ref


def examples(model, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random crops (a quarter to all of the shorter side) of the skimage photos, as model input."""
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(f()).convert("RGB") for f in (data.chelsea, data.coffee, data.astronaut, data.rocket)]
    rng = np.random.default_rng(seed)
    transform = model.preprocessing.transform()
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        side = int(rng.uniform(0.25, 1.0) * min(w, h))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        out.append(transform(img.crop((left, top, left + side, top + side))))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layer", default="blocks.2")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from captum.attr import NeuronDeconvolution

    from convscope import load_model
    from convscope.backproject import ActivationRuleWarning, project_full

    warnings.simplefilter("ignore", ActivationRuleWarning)
    model = load_model(device="cpu")
    x = examples(model, args.examples)
    channels = model.layers.shape(args.layer)[0]
    units = np.random.default_rng(1).integers(0, channels, size=args.examples).tolist()

    def ours():
        pixels, positions = [], []
        for i in range(0, len(x), args.batch_size):
            res = project_full(model, x[i : i + args.batch_size], args.layer, units[i : i + args.batch_size])
            pixels.append(res.pixels)
            positions += res.positions
        return torch.cat(pixels), positions

    ref_model = captum_copy(model.module)
    deconv = NeuronDeconvolution(ref_model, dict(ref_model.named_modules())[args.layer])

    def theirs(positions):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum warns on every call that it sets hooks
            return torch.cat([
                deconv.attribute(x[i : i + 1].clone(), neuron_selector=(units[i], *positions[i])) for i in range(len(x))
            ])

    # warm-up (first calls allocate and pick kernels)
    project_full(model, x[:2], args.layer, units[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deconv.attribute(x[:1].clone(), neuron_selector=(units[0], 0, 0))

    t0 = time.perf_counter()
    pixels, positions = ours()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = theirs(positions)
    t_theirs = time.perf_counter() - t0

    diff = float((pixels - ref).abs().max())
    scale = float(ref.abs().max())
    n = len(x)
    print(f"model efficientnet_lite0 (224x224), layer {args.layer}, {n} examples (random crops of 4 skimage photos), "
          f"deconvnet, {args.threads} threads")
    print(f"convscope project (batch size {args.batch_size}): {t_ours:7.2f} s  {n / t_ours:7.1f} projections/s")
    print(f"captum NeuronDeconvolution (one at a time):  {t_theirs:7.2f} s  {n / t_theirs:7.1f} projections/s")
    print(f"max abs difference {diff:.3g} (largest value {scale:.3g}, relative {diff / scale:.2g})")
    print(f"speed-up: {t_theirs / t_ours:.1f}x")
    if not diff <= 1e-4 * scale:
        raise SystemExit("projections differ from captum's")


if __name__ == "__main__":
    main()
