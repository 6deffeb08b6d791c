"""Feature visualization: convscope.featvis against Lucent, side by side in one run.

Same model (the default, load_model()), layer, units, steps, image size, parameterization
(Fourier, 1/f, decorrelated colour, sigmoid), transforms (Lucid's standard set), Adam at 0.05
and the model's own normalization. Lucent renders one unit at a time (its usual use); convscope
renders the units as one batch. Printed:

* units/s of each, wall clock and CPU time (the machine may be shared), and their ratio;
  convscope runs before and after Lucent, and its time is the mean of the two;
* the final objective of each unit, measured the same way for both: the mean activation of the
  unit's channel at the layer, on the final image saved as uint8, without transforms, at the
  render size; the ratio of the medians over the units.

Lucent is not a dependency of convscope; for this benchmark only:

    pip install torch-lucent --no-deps      # 0.1.8; its imports also need:
    pip install kornia kornia-rs --no-deps  # kornia 0.9 (tqdm, decorator: already there)

(kornia 0.9 moved two functions Lucent calls; :func:`_kornia_shim` maps the old names.)

Run (a few minutes on 2 cores):

    python bench/featvis.py                       # blocks.2, units 0-7, 128 steps, 128 px
    python bench/featvis.py --layer blocks.4 --units 0-3 --steps 64

Differences that remain, on purpose: Lucent's jitter translates with a black fill and its scale
changes the image size (so it cannot batch), convscope's jitter crops (as Lucid's does) and its
scale keeps the size; Lucent runs the whole network and computes weight gradients at every
step, convscope cuts the forward pass at the layer and turns weight gradients off. Lucent would
upsample a 128 px image to 224 px before the model; ``fixed_image_size=0`` turns that off, so
both optimize at the same size.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

# Idle OpenMP threads sleep instead of spinning: on a shared machine two spinning threads per
# process made both libraries 10-20x slower here (it affects both sides alike). Set before torch
# loads its OpenMP runtime; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from convscope import featvis  # noqa: E402
from convscope.featvis.render import layer_channels  # noqa: E402
from convscope.hooks import forward_layers  # noqa: E402
from convscope.models import load_model  # noqa: E402


def lucent_name(module: torch.nn.Module, dotted: str) -> str:
    """Lucent's name for the module with PyTorch name ``dotted``: its ``hook_model`` joins the
    path with underscores. Checks that the name is unambiguous and reaches the same module."""
    names: dict[str, list[torch.nn.Module]] = {}

    def walk(net, prefix):  # the same walk as lucent.optvis.render.hook_model
        for name, layer in net._modules.items():
            if layer is None:
                continue
            names.setdefault("_".join(prefix + [name]), []).append(layer)
            walk(layer, prefix + [name])

    walk(module, [])
    key = dotted.replace(".", "_")
    target = dict(module.named_modules())[dotted]
    found = names.get(key, [])
    if len(found) != 1 or found[0] is not target:
        raise SystemExit(f"Lucent's name {key!r} does not reach {dotted!r} unambiguously; pick another layer")
    return key


def measure(model, layer: str, images_uint8: np.ndarray, units) -> np.ndarray:
    """Mean activation of each unit's channel at ``layer`` on uint8 images (N, H, W, 3), untransformed."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        act = forward_layers(model.module, model.preprocessing.normalize(x.to(model.device)), [layer])[layer]
    return np.array([act[i, u].mean().item() for i, u in enumerate(units)])


def _kornia_shim() -> None:
    """Lucent 0.1.8 calls ``kornia.get_rotation_matrix2d`` and ``kornia.warp_affine``, which newer
    kornia (0.7+) keeps only under ``kornia.geometry.transform``; point the old names there."""
    import kornia
    import kornia.geometry.transform as kgt

    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))


def run_lucent(model, layer: str, units, steps: int, size: int, seed: int):
    from lucent.optvis import objectives, param, render, transform

    _kornia_shim()

    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    transforms = list(transform.standard_transforms) + [lambda x: (x - mean) / std]
    name = lucent_name(model.module, layer)
    images, wall, cpu = [], 0.0, 0.0
    for u in units:
        # Lucent's hooks stay on the model after render_vis returns; a fresh copy per unit keeps
        # them from piling up (and off convscope's model). The copy is not timed.
        net = copy.deepcopy(model.module).eval()
        np.random.seed(seed + u)
        torch.manual_seed(seed + u)
        t0, c0 = time.perf_counter(), time.process_time()
        out = render.render_vis(
            net, objectives.channel(name, u), lambda: param.image(size), transforms=transforms,
            thresholds=(steps,), preprocess=False, progress=False, show_image=False, fixed_image_size=0,
        )
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        images.append((np.clip(out[-1][0], 0, 1) * 255).round().astype(np.uint8))
        del net
    return np.stack(images), wall, cpu


def run_convscope(model, layer: str, units, steps: int, size: int, seed: int):
    t0, c0 = time.perf_counter(), time.process_time()
    result = featvis.render(model, layer, units, steps=steps, size=size, batch=len(units), seed=seed, progress=False)
    return result, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", default=None, help="default: the middle default layer of the model (blocks.2)")
    ap.add_argument("--units", default="0-7")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        import lucent  # noqa: F401
        from lucent.optvis import render  # noqa: F401  (imports kornia)
    except ImportError as exc:
        raise SystemExit(
            f"cannot import Lucent ({exc}); pip install torch-lucent kornia kornia-rs --no-deps"
        ) from None

    model = load_model(device="cpu")
    default = model.layers.default
    layer = args.layer or default[len(default) // 2]
    channels = layer_channels(model.module, layer, (args.size, args.size), model.device)
    units = featvis.resolve_units(args.units, channels, layer)
    print(f"model {model.spec} ({model.weights}); layer {layer}; units {units[0]}-{units[-1]} ({len(units)}); "
          f"{args.steps} steps; {args.size} px; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"lucent {getattr(lucent, '__version__', '0.1.8')}")

    # Warm-up (allocator, oneDNN kernels), untimed, for both.
    featvis.render(model, layer, units[:1], steps=2, size=args.size, progress=False)
    run_lucent(model, layer, units[:1], 2, args.size, args.seed)

    # convscope, Lucent, convscope again: on a shared machine the load drifts, and the mean of the
    # two convscope runs sees about the load that Lucent's run saw. The second run must also give
    # the same images (seeded rendering).
    ours, wall_a, cpu_a = run_convscope(model, layer, units, args.steps, args.size, args.seed)
    theirs_images, theirs_wall, theirs_cpu = run_lucent(model, layer, units, args.steps, args.size, args.seed)
    again, wall_b, cpu_b = run_convscope(model, layer, units, args.steps, args.size, args.seed)
    ours_wall, ours_cpu = (wall_a + wall_b) / 2, (cpu_a + cpu_b) / 2
    same = bool(np.array_equal(ours.images, again.images))

    ours_obj = measure(model, layer, ours.images, units)
    theirs_obj = measure(model, layer, theirs_images, units)
    n = len(units)
    print(f"{'unit':>6} {'convscope':>10} {'lucent':>10}")
    for u, a, b in zip(units, ours_obj, theirs_obj):
        print(f"{u:>6} {a:>10.3f} {b:>10.3f}")
    print(f"convscope: {n / ours_wall:.3f} units/s wall (mean of {wall_a:.1f} s and {wall_b:.1f} s), "
          f"{n / ours_cpu:.3f} units/cpu-s; the two runs give identical images: {same}")
    print(f"lucent:    {n / theirs_wall:.3f} units/s wall ({theirs_wall:.1f} s), {n / theirs_cpu:.3f} units/cpu-s")
    speed = theirs_wall / ours_wall
    speed_cpu = theirs_cpu / ours_cpu
    quality = float(np.median(ours_obj) / np.median(theirs_obj))
    print(f"speed ratio (units/s, convscope / lucent): {speed:.2f}x wall, {speed_cpu:.2f}x cpu (target >= 3)")
    print(f"objective ratio (median, convscope / lucent): {quality:.3f} (target >= 0.9)")
    print(f"  medians: convscope {np.median(ours_obj):.3f}, lucent {np.median(theirs_obj):.3f}; "
          f"convscope's own report {np.median(ours.objective):.3f}")


if __name__ == "__main__":
    main()
