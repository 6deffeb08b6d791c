"""Projections before and after convscope.display: for every default layer of the default model,
a few units' top examples among the photos given (scikit-image's sample photos by default, each
also as four overlapping quarter crops), each shown as its receptive-field patch, the guided
projection as the atlas drew it (``backproject.to_image`` on the receptive-field box), the same
array drawn by :func:`convscope.display.to_picture` (percentile contrast, and the energy crop
where the field is the whole input), and the photo cut to that crop.

    python bench/display_before_after.py --out docs/projection-display.png
    python bench/display_before_after.py ../shared/data/imagenet-samples --out /tmp/display.png
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from convscope.backproject import project_methods
from convscope.display import crop_wanted, to_picture
from convscope.hooks import forward_layers
from convscope.models import load_model

CELL, GAP = 96, 6


def to_image(p) -> np.ndarray:
    """The drawing before convscope.display (``backproject.to_image`` until issue 19, which
    removed it), kept here as the "before" of this comparison: centred on the mean, five
    standard deviations to black or white."""
    p = np.asarray(p.detach().float().cpu() if hasattr(p, "detach") else p, np.float64)
    p = p - p.mean()
    std = p.std()
    img = np.full(p.shape, 0.5) if std == 0 else np.clip(0.5 + 0.1 * p / std, 0.0, 1.0)
    return np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
           "retina", "colorwheel", "stereo_motorcycle", "brick", "grass", "gravel", "camera", "coins", "clock")


def photos(paths: list[str]) -> list[Image.Image]:
    if not paths:
        import skimage.data

        out = []
        for name in SKIMAGE:
            a = getattr(skimage.data, name)()
            a = a[0] if isinstance(a, tuple) else a
            out.append(Image.fromarray(a).convert("RGB"))
        return out
    files = [f for p in map(Path, paths) for f in (sorted(p.iterdir()) if p.is_dir() else [p])]
    return [Image.open(f).convert("RGB") for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png")]


def views(image: Image.Image) -> list[Image.Image]:
    """The photo and its four overlapping quarter crops (as ``--crops 1,2``)."""
    w, h = image.size
    cw, ch = int(w * 0.6), int(h * 0.6)
    return [image] + [image.crop((x, y, x + cw, y + ch)) for x in (0, w - cw) for y in (0, h - ch)]


def tile(array: np.ndarray, size: int = CELL) -> Image.Image:
    im = Image.fromarray(array)
    scale = size / max(im.size)
    resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", help="photo files or folders (default: scikit-image's sample photos)")
    ap.add_argument("--out", default="docs/projection-display.png")
    ap.add_argument("--examples", type=int, default=4, help="units per layer")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = load_model()
    module, prep, size = model.module, model.preprocessing, model.input_size
    transform = prep.transform()
    x = torch.stack([transform(v) for p in photos(args.images) for v in views(p)])
    layers = model.layers.default
    with torch.no_grad():
        maps = {name: [] for name in layers}
        for s in range(0, len(x), 16):
            for name, out in forward_layers(module, x[s:s + 16], layers).items():
                maps[name].append(out)
        maps = {name: torch.cat(v) for name, v in maps.items()}
    pixels = (prep.denormalize(x).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = []
    for name in layers:
        info = model.layers.get(name)
        m = maps[name]
        best = m.flatten(2).max(2).values  # (N, C)
        top_values, top_images = best.max(0)
        # units spread over the layer's ranking by top value (the strongest alone are saturated alike)
        order = torch.argsort(top_values, descending=True)
        units = [int(order[int(i * len(order) / args.examples)]) for i in range(args.examples)]
        examples = []
        for u in units:
            n = int(top_images[u])
            flat = int(m[n, u].flatten().argmax())
            y, xx = divmod(flat, m.shape[3])
            examples.append((n, u, y, xx))
        proj = project_methods(module, x[[e[0] for e in examples]], name, [e[1] for e in examples],
                               [(e[2], e[3]) for e in examples], ("guided",))["guided"].pixels.numpy()
        cells = []
        for (n, u, y, xx), p in zip(examples, proj):
            t, l, b, r = info.box(y, xx, size)
            arr = p[:, t:b, l:r]  # what the atlas keeps for this example
            crop = crop_wanted((t, l, b, r), size)
            new, (ct, cl, cb, cr) = to_picture(arr, crop=crop)
            patch = pixels[n, t:b, l:r]
            cells.append((u, crop, [patch, to_image(arr), new, patch[ct:cb, cl:cr]]))
        rows.append((name, info, cells))
    font = ImageFont.load_default()
    group = 4 * CELL + 3 * 2 + GAP * 3
    label_w, head = 150, 34
    sheet = Image.new("RGB", (label_w + args.examples * group, head + len(rows) * (CELL + 22 + GAP)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k in range(args.examples):
        x0 = label_w + k * group
        for j, text in enumerate(("patch", "before", "after", "patch, cropped")):
            draw.text((x0 + j * (CELL + 2), 4), text, fill=(0, 0, 0), font=font)
    draw.text((4, 4), "guided backprop", fill=(0, 0, 0), font=font)
    draw.text((4, 18), "before: to_image; after: display", fill=(90, 90, 90), font=font)
    for i, (name, info, cells) in enumerate(rows):
        y0 = head + i * (CELL + 22 + GAP)
        draw.text((4, y0 + 30), name, fill=(0, 0, 0), font=font)
        draw.text((4, y0 + 46), f"field {info.receptive_field[0]} px", fill=(90, 90, 90), font=font)
        draw.text((4, y0 + 60), f"stride {info.stride[0]}", fill=(90, 90, 90), font=font)
        for k, (u, crop, arrays) in enumerate(cells):
            x0 = label_w + k * group
            for j, a in enumerate(arrays):
                im = tile(a)
                sheet.paste(im, (x0 + j * (CELL + 2) + (CELL - im.width) // 2, y0 + (CELL - im.height) // 2))
            draw.text((x0, y0 + CELL + 4), f"unit {u}" + (" (energy crop)" if crop else ""), fill=(60, 60, 60), font=font)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}: {len(rows)} layers x {args.examples} units from {len(x)} model inputs")


if __name__ == "__main__":
    main()
