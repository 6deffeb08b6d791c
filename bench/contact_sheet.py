"""A contact sheet of an atlas: a few units per layer, each as its best patch (cut to the box its
projections show, ``display_box``) beside its guided-backprop and deconvnet projections (and the
next patches, smaller), one row per layer. Where the atlas left the deconvnet out (it does not
depend on the image there: no max-pool below the layer) its cell says so.

    python bench/contact_sheet.py /tmp/atlas500 docs/atlas-contact-sheet.png --units 6
"""
from __future__ import annotations

import argparse

from PIL import Image, ImageDraw, ImageFont

from convscope.atlas import Atlas

CELL = 96  # pixels per patch or projection
GAP = 6


def pick_units(atlas: Atlas, layer: str, n: int) -> list[int]:
    """``n`` units spread over the layer's units ordered by top value (not only the strongest,
    which in ReLU6 layers are often saturated alike)."""
    units = [u for u in atlas.units(layer) if u["top"] is not None]
    units.sort(key=lambda u: -u["top"])
    if len(units) <= n:
        return [u["unit"] for u in units]
    step = len(units) / n
    return sorted(units[int(i * step)]["unit"] for i in range(n))


def tile(atlas: Atlas, relative: str | None, size: int, example: dict | None = None) -> Image.Image:
    """The picture at ``relative`` scaled to ``size``; a patch of ``example`` is cut to its
    ``display_box`` first, so that it shows what the projections beside it show."""
    if not relative:
        return Image.new("RGB", (size, size), (60, 60, 60))
    with Image.open(atlas.path(relative)) as im:
        im = im.convert("RGB")
        if example is not None and example.get("display_box"):
            t, l, _b, _r = example["box"]
            dt, dl, db, dr = example["display_box"]
            im = im.crop((dl - l, dt - t, dr - l, db - t))
        scale = size / max(im.size)
        return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST if scale >= 2 else Image.BILINEAR)


def sheet(atlas: Atlas, units_per_layer: int, extra: int) -> Image.Image:
    font = ImageFont.load_default()
    small = CELL // 2
    unit_w = 3 * CELL + 2 * GAP + 2 + -(-extra // 2) * (small + 2)
    label_w = 150
    width = label_w + units_per_layer * (unit_w + 3 * GAP)
    row_h = max(CELL + 22, 84)
    height = 30 + len(atlas.layers) * (row_h + GAP)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    info = atlas.info()
    draw.text((8, 8), f"{info['model']['spec']}: {info['images']['scanned']} photos, top {info['top_k']}; "
                      "per unit: best patch (cut as its projections) | its guided backprop | its deconvnet | next patches",
              fill=(0, 0, 0), font=font)
    y = 30
    for layer in atlas.info()["layers"]:
        name = layer["name"]
        draw.text((8, y + 4), name, fill=(0, 0, 0), font=font)
        draw.text((8, y + 20), f"{layer['shape'][0]} units, stride {layer['stride'][0]}", fill=(90, 90, 90), font=font)
        draw.text((8, y + 36), f"field {layer['receptive_field'][0]} px", fill=(90, 90, 90), font=font)
        ranked = layer.get("ranked_by") or "output"
        draw.text((8, y + 52), "ranked by " + ("pre-activation" if ranked.startswith("pre") else ranked),
                  fill=(90, 90, 90), font=font)
        dep = layer.get("deconvnet")
        if dep is not None:
            draw.text((8, y + 68), "deconvnet: " + ("depends on image" if dep["depends"] else "image-indep."),
                      fill=(90, 90, 90), font=font)
        x = label_w
        for u in pick_units(atlas, name, units_per_layer):
            ex = atlas.examples(name, u)
            if not ex:
                continue
            out.paste(tile(atlas, ex[0]["patch"], CELL, ex[0]), (x, y))
            out.paste(tile(atlas, ex[0]["guided"], CELL), (x + CELL + GAP, y))
            if ex[0]["deconvnet"] or dep is None or dep["computed"]:
                out.paste(tile(atlas, ex[0]["deconvnet"], CELL), (x + 2 * (CELL + GAP), y))
            else:  # left out: the same picture for every image here
                cx = x + 2 * (CELL + GAP)
                draw.rectangle((cx, y, cx + CELL - 1, y + CELL - 1), fill=(235, 235, 235))
                for k, line in enumerate(("deconvnet:", "image-", "independent", "(no max-pool)")):
                    draw.text((cx + 6, y + 24 + 14 * k), line, fill=(110, 110, 110), font=font)
            for k, e in enumerate(ex[1 : 1 + extra]):
                out.paste(tile(atlas, e["patch"], small, e), (x + 3 * CELL + 2 * GAP + 2 + (k // 2) * (small + 2), y + (k % 2) * (small + 2)))
            pre = ex[0]["pre"]
            label = f"unit {u}  top {ex[0]['value']:.2f}" + (f" (pre {pre:.2f})" if pre is not None else "")
            draw.text((x, y + CELL + 4), label, fill=(60, 60, 60), font=font)
            x += unit_w + 3 * GAP
        y += row_h + GAP
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("atlas")
    parser.add_argument("out")
    parser.add_argument("--units", type=int, default=6, help="units per layer")
    parser.add_argument("--extra", type=int, default=4, help="further patches per unit (small)")
    args = parser.parse_args()
    with Atlas.open(args.atlas) as atlas:
        img = sheet(atlas, args.units, args.extra)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.width}x{img.height})")


if __name__ == "__main__":
    main()
