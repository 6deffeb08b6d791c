"""`convscope project`: units of layers projected back to the pixels of one image."""
from __future__ import annotations

import collections
import warnings
from pathlib import Path

import click

from ..choices import PROJECTION_METHODS
from ._common import LAYERS, UNITS, emit, model_options, note, renamed
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CHUNK = 8  # projections per backward pass: one image, several units


@click.command("project")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--layers", type=LAYERS, default=None, help="Layers by dotted name (see `convscope layers`). Required.")
@renamed("--layer", "--layers", required=True, type=LAYERS)
@click.option("--units", type=UNITS, default=None, help="Channels: 7, 0-15, 3,7,9-11 or all. Required.")
@renamed("--unit", "--units", required=True, type=UNITS)
@click.option("--y", type=int, default=None, help="Row on the layer's map (default: each unit's strongest position).")
@click.option("--x", type=int, default=None, help="Column on the layer's map (give with --y).")
@click.option("--method", type=click.Choice(list(PROJECTION_METHODS)), default="deconvnet", show_default=True,
              help="; ".join(f"{name}: {text}" for name, text in PROJECTION_METHODS.items()) + ".")
@click.option("--out", "out", type=click.Path(), default=None,
              help="Folder for IMAGE-LAYER-UNIT-METHOD.png, the projection with the unit's receptive field "
                   "drawn (default: the current folder, unless only --npy FILE is given).")
@click.option("--npy", is_flag=False, flag_value="", default=None, metavar="[FILE]",
              help="Also the raw projection, float32 (3, H, W) on the model input: as .npy beside each PNG, "
                   "or in FILE (one projection only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per projection instead of a line.")
@model_options
def project(image, layers, units, y, x, method, out, npy, as_json, model_args):
    """Project units of layers back to the input pixels of IMAGE.

    Takes each unit's strongest position in the image unless --y and --x are given, and writes
    the projection as a picture (zero at grey, robust contrast: `convscope.display.to_picture`,
    as the atlas draws it) and, with --npy, as the raw array. Where the deconvnet cannot depend
    on the image (no max-pool or other routing below the layer), guided backprop is projected
    instead, as in the atlas, and a note says why.

    \b
    Examples:
      convscope project cat.jpg --layers blocks.2 --units 5 --out proj/
      convscope project cat.jpg --layers features.10 --units 3 --y 4 --x 6 --method guided \\
          --model torchvision:alexnet --npy --out proj/
    """
    if (y is None) != (x is None):
        raise click.UsageError("give both --y and --x, or neither (for each unit's strongest position)")
    out_file = None
    if out is not None and Path(out).suffix.lower() in IMAGE_SUFFIXES and not Path(out).is_dir():
        note("--out FILE is deprecated and goes in the next release; --out is a folder")
        out_file, out = out, None
    npy_file = npy or None
    write_png = out is not None or out_file is not None or npy_file is None
    out_dir = Path(out if out is not None else ".")

    from ..backproject import ActivationRuleWarning, check_ranges, layer_methods, project_full
    from ..data import load_image
    from ..progress import Bar

    pil = load_image(image)
    model = model_args.load()
    catalogue = model.layers
    batch = model.preprocessing.transform()(pil).unsqueeze(0).to(model.device)
    plan = []
    for layer in layers:
        shape = catalogue.shape(layer)  # an unknown layer raises the catalogue's one-line error
        wanted = list(range(shape[0])) if units == "all" else list(units)
        check_ranges(layer, shape, wanted, None if y is None else [(y, x)])
        plan.append((layer, shape, wanted))
    # guided backprop stands in for the deconvnet where it cannot depend on the image, as in the atlas
    chosen = layer_methods(model, [layer for layer, _, _ in plan], (method,), input_size=tuple(batch.shape[-2:]))
    count = sum(len(w) for _, _, w in plan)
    if count > 1 and (out_file is not None or npy_file is not None):
        raise click.UsageError(f"{count} projections asked for: give --out a folder and --npy without a file name")

    notes: list[str] = []
    with Bar(count, "projecting", disable=True if count <= CHUNK else None) as bar:
        for layer, shape, wanted in plan:
            info = catalogue.get(layer)
            drawn = chosen[layer].methods[0]
            if chosen[layer].note is not None:
                note(f"{layer}: {chosen[layer].note}")
            for start in range(0, len(wanted), CHUNK):
                chunk = wanted[start:start + CHUNK]
                with warnings.catch_warnings():
                    # One summary line at the end instead of one warning per activation.
                    warnings.simplefilter("ignore", ActivationRuleWarning)
                    result = project_full(model, batch.expand(len(chunk), -1, -1, -1), layer, chunk,
                                          None if y is None else [(y, x)] * len(chunk), drawn)
                notes += [n for n in result.notes if n not in notes]
                for i, unit in enumerate(chunk):
                    py, px = result.positions[i]
                    box = info.box(py, px, tuple(batch.shape[-2:]))
                    pixels = result.pixels[i].float().cpu().numpy()
                    stem = out_dir / f"{Path(image).stem}-{layer}-{unit}-{drawn}"
                    written = []
                    if npy is not None:
                        written.append(_save_npy(npy_file or f"{stem}.npy", pixels))
                    if write_png:
                        written.append(_save_png(out_file or f"{stem}.png", pixels, box))
                    record = {
                        "image": image, "layer": layer, "unit": unit, "method": drawn, "y": py, "x": px,
                        "position": "strongest" if y is None else "given",
                        "activation": float(result.activations[i]), "box": list(box), "files": written,
                    }
                    if as_json:
                        emit(record)
                    else:
                        click.echo(_line(record, shape))
                bar.advance(len(chunk))
    if notes:
        note(_summarize(notes))


def _line(record: dict, shape) -> str:
    top, left, bottom, right = record["box"]
    where = "peaked at" if record["position"] == "strongest" else "taken at"
    return (
        f"{record['layer']} unit {record['unit']} {where} y={record['y']} x={record['x']} of {shape[1]}x{shape[2]} "
        f"(activation {record['activation']:.4g}; input box rows {top}-{bottom - 1}, cols {left}-{right - 1}); "
        f"{record['method']} projection written to {', '.join(record['files'])}"
    )


def _summarize(notes: list[str]) -> str:
    """One line for many per-layer notes (EfficientNet-Lite0 has a ReLU6 in every block)."""
    if len(notes) == 1:
        return notes[0]
    types = collections.Counter(n.split(" is ", 1)[1].split(" ", 1)[0].rstrip(",") for n in notes if " is " in n)
    listed = ", ".join(f"{t} x{c}" for t, c in types.items())
    return f"{len(notes)} layers got a substitute rule ({listed}), e.g. {notes[0]}"


def _save_npy(path, pixels) -> str:
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pixels.astype("float32"))
    return str(path)


def _save_png(path, pixels, box) -> str:
    from PIL import Image, ImageDraw

    from ..display import to_picture

    img = Image.fromarray(to_picture(pixels)[0])
    top, left, bottom, right = box
    if bottom > top and right > left:
        ImageDraw.Draw(img).rectangle([left, top, right - 1, bottom - 1], outline=(255, 210, 0), width=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return str(path)
