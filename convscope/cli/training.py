"""`convscope evolve` (units across the checkpoints of a training run, the paper's figure 4) and
`convscope probe` (per-layer linear probes on a labelled folder, the paper's section 5)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..choices import DEFAULT_UNITS, DRAWN_PROJECTIONS, POOLS
from ..model_names import BUILTIN, DEFAULT_MODEL
from ._common import LAYERS, UNITS, check_device, device_option, emit, model_options, note, report_skipped


def _checkpoints(values) -> list[str]:
    """--weights given once per checkpoint, or as comma lists (a name that is itself a file,
    commas and all, stays one)."""
    out = []
    for value in values:
        out += [value] if os.path.isfile(value) else [v.strip() for v in value.split(",") if v.strip()]
    return out


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model_spec", default=DEFAULT_MODEL, show_default=True, metavar="SPEC",
              help="The architecture the checkpoints are of: " + ", ".join(BUILTIN) + " (`convscope models`).")
@click.option("--weights", "weights", multiple=True, required=True, metavar="CKPT",
              help="Checkpoints in training order: repeat (--weights ep1.pt --weights ep5.pt) or a comma list "
                   "(--weights ep1.pt,ep5.pt,ep20.pt); .pt/.pth/.safetensors, bare or with a state_dict/model key.")
@click.option("--layers", type=LAYERS, default=None, help="Layers by dotted name (default: `convscope layers --default-only`).")
@click.option("--units", type=UNITS, default=None,
              help="Units drawn per layer: 7, 0-15, 3,7,9-11 or all (default: the --count strongest at the last checkpoint).")
@click.option("--count", default=DEFAULT_UNITS, show_default=True, type=click.IntRange(1, 4096),
              help="Units drawn per layer when --units is not given.")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000),
              help="Top images kept per unit, whose overlap between checkpoints is measured (give more photos than this).")
@click.option("--method", default="deconvnet", show_default=True, type=click.Choice(DRAWN_PROJECTIONS),
              help="Projection of each strongest example.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Model inputs per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes (default: by input count).")
@device_option
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for evolve-LAYER.png, evolve-changes.png, evolve.jsonl (every unit), and evolve.json with cells/ (for `serve --evolve`).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON record per layer and step (unit null: the layer's means), then per drawn unit and "
                   "step: layer, unit, from, to, overlap, correlation.")
def evolve(images, model_spec, weights, layers, units, count, top, method, batch_size, workers, device, out_dir, as_json):
    """How the units of a network change over the checkpoints of its training (Zeiler & Fergus,
    figure 4): one scan of the photos per checkpoint, then for each drawn unit its strongest
    patch and projection at every checkpoint, a grid per layer (units as rows, checkpoints as
    columns), and two numbers per unit and step that say how much it still changes: the
    overlap of its top images, and the correlation of its mean activation map (1: settled).

    \b
    Example:
      convscope evolve photos/ --model torchvision:resnet18 --weights ep01.pt,ep05.pt,ep20.pt \\
          --layers layer1,layer4 --out evolve/
    """
    from ..evolve import evolve as run_evolve

    checkpoints = _checkpoints(weights)
    if len(checkpoints) < 2:
        raise click.UsageError("give two or more checkpoints: --weights A.pt --weights B.pt, or --weights A.pt,B.pt")
    check_device(device)
    # "all": a count past every layer's channels draws all its units (in index order)
    result = run_evolve(model_spec, checkpoints, list(images), layers, None if units == "all" else units,
                        count=sys.maxsize if units == "all" else count, top=top, method=method, batch_size=batch_size,
                        workers=workers, device=device)
    for path, reason in result.skipped:
        report_skipped(path, reason)
    files = [str(p) for p in result.save(out_dir)]
    if as_json:
        for record in result.records():
            emit(record)
        click.echo(f"wrote {len(files)} files to {out_dir}", err=True)
        return
    for name in result.layers:
        for step in result.changes(name):
            corr = "n/a" if step["correlation"] is None else f"{step['correlation']:.3f}"
            click.echo(f"{name:16s} {step['from']} -> {step['to']}: overlap {step['overlap']:.3f}, correlation {corr}")
    for f in files:
        click.echo(f"wrote {f}")


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--layers", type=LAYERS, default=None, help="Layers by dotted name (default: `convscope layers --default-only`).")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 100),
              help="k of the stratified k-fold cross-validation (every class needs at least k photos).")
@click.option("--pool", default="avg", show_default=True, type=click.Choice(POOLS),
              help="Spatial pooling the results report (both are scored; a note says where the other is better).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for probe.png, accuracy against depth.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Model inputs per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes (default: by input count).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per layer: layer, accuracy, std, n.")
@model_options
def probe(folder, layers, folds, pool, out_dir, batch_size, workers, as_json, model_args):
    """How well each layer's features separate the classes of a labelled data set (Zeiler &
    Fergus, section 5): FOLDER holds one sub-folder of images per class; each layer's maps are
    pooled over space, and a linear classifier (scikit-learn's logistic regression) is scored by
    k-fold cross-validation: the mean accuracy, its spread over the folds, and the photos used.

    \b
    Example:
      convscope probe caltech101/ --layers blocks.2,blocks.4,bn2 --out probe/ --json
    """
    from ..probe import probe as run_probe

    model = model_args.load()
    result = run_probe(model, folder, layers, folds=folds, pool=pool, batch_size=batch_size, workers=workers)
    for path, reason in result.skipped:
        report_skipped(path, reason)
    plot = str(result.plot(Path(out_dir) / "probe.png")) if out_dir is not None else None
    if as_json:
        for record in result.records():
            emit(record)
    else:
        click.echo(f"{result.model}: {len(result.classes)} classes, {result.n} photos, {result.folds}-fold "
                   f"cross-validation, {result.pool} pooling; chance {result.chance:.3f}")
        for r in result.records():
            click.echo(f"{r['layer']:24s} {r['accuracy']:.3f} ± {r['std']:.3f}")
    for text in result.notes():
        note(text)
    if plot is not None:
        click.echo(f"wrote {plot}", err=as_json)
