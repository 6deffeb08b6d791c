"""`convscope featvis`: feature visualization by optimization (thin: parses and calls the library)."""
from __future__ import annotations

import contextlib
import math

import click

from ..choices import PARAMS
from ._common import LAYERS, UNITS, emit, model_options, renamed


@click.command()
@click.option("--layers", type=LAYERS, default=None, help="Layers by their PyTorch names (run `convscope layers`). Required.")
@renamed("--layer", "--layers", required=True, type=LAYERS)
@click.option("--units", type=UNITS, default=None, help="Channels of each layer: 7, 0-15, 3,7,9-11 or all [default: the first 16].")
@click.option("--steps", default=512, show_default=True, type=click.IntRange(min=1), help="Optimization steps.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(min=16), help="Image side in pixels.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Units optimized together [default: 16].")
@renamed("--batch", "--batch-size", type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--param", "param", default="fourier", show_default=True, type=click.Choice(PARAMS),
              help="Image parameterization.")
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for <layer>_<unit>.png and <layer>_sheet.png.")
@click.option("--atlas", "atlas_dir", type=click.Path(file_okay=False), default=None,
              help="Atlas folder to add the images to (DIR/featvis/<layer>/).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per unit (layer, unit, file, objective) on stdout.")
@model_options
def featvis(model_args, layers, units, steps, size, batch_size, seed, param, lr, out_dir, atlas_dir, as_json):
    """Render images that maximize units (channels) of layers.

    \b
    Example:
      convscope featvis --layers blocks.2 --units 0-7 --steps 256 --out featvis/
    """
    import numpy as np

    from ..featvis import render, resolve_units
    from ..featvis.export import close_atlas, open_atlas, save_pngs, save_to_atlas
    from ..featvis.render import DEFAULT_BATCH
    from ..progress import Bar

    if out_dir is None and atlas_dir is None:
        raise click.UsageError("give --out DIR (and/or --atlas DIR) for the images")
    model = model_args.load()
    # Check every layer, and the atlas, before minutes of rendering.
    total = None
    if len(layers) > 1:
        total = 0
        for layer in layers:
            n = len(resolve_units(units, model.layers.shape(layer)[0], layer))
            total += steps * math.ceil(n / min(batch_size or DEFAULT_BATCH, n))
    opened = open_atlas(atlas_dir, model, layers[0]) if atlas_dir is not None else None
    try:
        for layer in layers[1:] if opened is not None else ():
            opened.layer(layer)  # a layer the atlas does not hold: its error, with its layers
        # Several layers: one bar for the phase, each layer's render counts its steps into it.
        with Bar(total, f"featvis {len(layers)} layers") if total else contextlib.nullcontext():
            for layer in layers:
                result = render(model, layer, units, steps=steps, size=size, batch=batch_size, seed=seed,
                                param=param, lr=lr)
                files = sheet = None
                if out_dir is not None:
                    files, sheet = save_pngs(result, out_dir)
                if opened is not None:
                    atlas_files = save_to_atlas(result, atlas_dir, opened)
                    files = files or atlas_files
                if as_json:
                    for u, path, value in zip(result.units, files, result.objective):
                        emit({"layer": layer, "unit": int(u), "file": str(path), "objective": round(float(value), 6)})
                    continue
                obj = result.objective
                click.echo(
                    f"{layer}: {len(result)} units, {steps} steps at {size} px in {result.seconds:.1f} s "
                    f"({len(result) / max(result.seconds, 1e-9):.2f} units/s); objective median {float(np.median(obj)):.3g} "
                    f"(min {obj.min():.3g}, max {obj.max():.3g})"
                )
                if sheet is not None:
                    click.echo(f"wrote {len(files)} images to {out_dir}, contact sheet {sheet}")
                if opened is not None:
                    click.echo(f"added {len(result)} images to the atlas {atlas_dir}")
    finally:
        close_atlas(opened)
