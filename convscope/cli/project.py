"""`convscope project`: one layer unit projected back to the pixels of one image."""
from __future__ import annotations

import collections
import warnings
from pathlib import Path

import click

from ..backproject import METHODS
from ._common import main, model_options


@main.command("project")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--layer", required=True, help="Layer by dotted name (see `convscope layers`).")
@click.option("--unit", required=True, type=int, help="Channel of the layer.")
@click.option("--y", type=int, default=None, help="Row on the layer's map (default: the unit's strongest position).")
@click.option("--x", type=int, default=None, help="Column on the layer's map (give with --y).")
@click.option("--method", type=click.Choice(list(METHODS)), default="deconvnet", show_default=True,
              help="; ".join(f"{name}: {rule.description}" for name, rule in METHODS.items()) + ".")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG of the projection with the unit's receptive field drawn "
                   "(default: IMAGE-LAYER-UNIT-METHOD.png here, unless only --npy is given).")
@click.option("--npy", type=click.Path(dir_okay=False), default=None,
              help="The raw projection, float32 (3, H, W) on the model input.")
@model_options
def project_cmd(image, layer, unit, y, x, method, out, npy, get_model):
    """Project one unit of a layer back to the input pixels of IMAGE.

    Takes the unit's strongest position in the image unless --y and --x are given, and writes
    the projection as a picture (centred at grey, see `convscope.backproject.to_image`) and,
    with --npy, as the raw array.

    \b
    Examples:
      convscope project cat.jpg --layer blocks.2 --unit 5
      convscope project cat.jpg --layer features.10 --unit 3 --y 4 --x 6 --method guided \\
          --model torchvision:alexnet --npy unit3.npy
    """
    from ..backproject import ActivationRuleWarning, ProjectionError, check_ranges, project_full
    from ..data import load_image

    if (y is None) != (x is None):
        raise ProjectionError("give both --y and --x, or neither (for the unit's strongest position)")
    if out is None and npy is None:
        out = f"{Path(image).stem}-{layer}-{unit}-{method}.png"
    pil = load_image(image)
    model = get_model()
    catalogue = model.layers
    shape = catalogue.shape(layer)  # an unknown layer raises the catalogue's one-line error
    check_ranges(layer, shape, [unit], None if y is None else [(y, x)])
    batch = model.preprocessing.transform()(pil).unsqueeze(0).to(model.device)
    with warnings.catch_warnings():
        # One summary line below instead of one warning per layer.
        warnings.simplefilter("ignore", ActivationRuleWarning)
        result = project_full(model, batch, layer, [unit], None if y is None else [(y, x)], method)
    py, px = result.positions[0]
    info = catalogue.get(layer)
    box = info.box(py, px, tuple(batch.shape[-2:]))
    pixels = result.pixels[0].float().cpu().numpy()
    written = []
    if npy is not None:
        _save_npy(npy, pixels)
        written.append(npy)
    if out is not None:
        _save_png(out, pixels, box)
        written.append(out)
    where = "peaked at" if y is None else "taken at"
    top, left, bottom, right = box
    click.echo(
        f"{layer} unit {unit} {where} y={py} x={px} of {shape[1]}x{shape[2]} "
        f"(activation {float(result.activations[0]):.4g}; input box rows {top}-{bottom - 1}, "
        f"cols {left}-{right - 1}); {method} projection written to {', '.join(written)}"
    )
    if result.notes:
        click.echo(f"note: {_summarize(result.notes)}", err=True)


def _summarize(notes: list[str]) -> str:
    """One line for many per-layer notes (EfficientNet-Lite0 has a ReLU6 in every block)."""
    if len(notes) == 1:
        return notes[0]
    types = collections.Counter(n.split(" is ", 1)[1].split(" ", 1)[0].rstrip(",") for n in notes if " is " in n)
    listed = ", ".join(f"{t} x{c}" for t, c in types.items())
    return f"{len(notes)} layers got a substitute rule ({listed}), e.g. {notes[0]}"


def _save_npy(path, pixels):
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pixels.astype("float32"))


def _save_png(path, pixels, box):
    from PIL import Image, ImageDraw

    from ..backproject import to_image

    img = Image.fromarray(to_image(pixels))
    top, left, bottom, right = box
    if bottom > top and right > left:
        ImageDraw.Draw(img).rectangle([left, top, right - 1, bottom - 1], outline=(255, 210, 0), width=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
