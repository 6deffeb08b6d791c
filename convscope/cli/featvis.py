"""`convscope featvis`: feature visualization by optimization (thin: parses and calls the library)."""
from __future__ import annotations

import json

import click
import numpy as np

from ..featvis.param import PARAMS
from ._common import main, model_options


@main.command()
@click.option("--layer", required=True, help="Layer by its PyTorch name (run `convscope layers`).")
@click.option("--units", default=None, help="Channels: 0-15, 3,7,9-11 or all [default: the first 16].")
@click.option("--steps", default=512, show_default=True, type=click.IntRange(min=1), help="Optimization steps.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(min=16), help="Image side in pixels.")
@click.option("--batch", default=None, type=click.IntRange(min=1), help="Units optimized together [default: 16].")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Random seed.")
@click.option("--param", "param", default="fourier", show_default=True,
              type=click.Choice(list(PARAMS)), help="Image parameterization.")
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for <layer>_<unit>.png and <layer>_sheet.png.")
@click.option("--atlas", "atlas_dir", type=click.Path(file_okay=False), default=None,
              help="Atlas folder to add the images to (DIR/featvis/<layer>/).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per unit on stdout.")
@model_options
def featvis(get_model, layer, units, steps, size, batch, seed, param, lr, out_dir, atlas_dir, as_json):
    """Render images that maximize units (channels) of a layer.

    \b
    Example:
      convscope featvis --layer blocks.2 --units 0-7 --steps 256 --out featvis/
    """
    from ..featvis import render
    from ..featvis.export import close_atlas, open_atlas, save_pngs, save_to_atlas

    if out_dir is None and atlas_dir is None:
        raise click.UsageError("give --out DIR (and/or --atlas DIR) for the images")
    model = get_model()
    # Open the atlas first: a wrong folder, model or layer fails before minutes of rendering.
    opened = open_atlas(atlas_dir, model, layer) if atlas_dir is not None else None
    try:
        result = render(model, layer, units, steps=steps, size=size, batch=batch, seed=seed, param=param, lr=lr)
        files = sheet = None
        if out_dir is not None:
            files, sheet = save_pngs(result, out_dir)
        if atlas_dir is not None:
            meta = {"model": model.spec, "steps": steps, "size": size, "param": param, "lr": lr, "base_seed": seed}
            atlas_files = save_to_atlas(result, atlas_dir, meta, opened)
            files = files or atlas_files
    finally:
        close_atlas(opened)
    if as_json:
        for u, path, value in zip(result.units, files, result.objective):
            click.echo(json.dumps({"unit": int(u), "file": str(path), "objective": round(float(value), 6)}))
        return
    obj = result.objective
    click.echo(
        f"{layer}: {len(result)} units, {steps} steps at {size} px in {result.seconds:.1f} s "
        f"({len(result) / max(result.seconds, 1e-9):.2f} units/s); objective median {float(np.median(obj)):.3g} "
        f"(min {obj.min():.3g}, max {obj.max():.3g})"
    )
    if sheet is not None:
        click.echo(f"wrote {len(files)} images to {out_dir}, contact sheet {sheet}")
    if atlas_dir is not None:
        click.echo(f"added {len(result)} images to the atlas {atlas_dir}")
