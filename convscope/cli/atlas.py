"""`convscope atlas build | info | show | health`: the top images of every unit, on disk, and the
model's health read from them."""
from __future__ import annotations

import time
import warnings

import click

from ..choices import DECONVNET_MODES, RANK_BY
from ..files import printable_path
from ._common import LAYERS, UNITS, emit, model_options, note, photo_inputs, renamed, report_built, report_skipped
from ._ray import ray_options
from .health import health as health_command


@click.group()
def atlas():
    """Build and read atlases: each unit's top images, patches and projections.

    \b
    Examples:
      convscope atlas build photos/ --out atlas/ --top 9
      convscope atlas info atlas/
      convscope atlas show atlas/ --layers blocks.2 --units 7
      convscope atlas health atlas/
    """


atlas.add_command(health_command)


@atlas.command()
@click.argument("images", nargs=-1)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for the atlas.")
@click.option("--samples", is_flag=True, help="Also scan scikit-image's sample photos.")
@click.option("--layers", type=LAYERS, default=None, help="Dotted layer names (default: `convscope layers --default-only`).")
@click.option("--top", default=9, show_default=True, type=click.IntRange(1, 1000), help="Top images kept per unit.")
@click.option("--crops", default="1", show_default=True, metavar="LEVELS",
              help="Grid levels per photo, e.g. 1,2,3: the whole photo plus 2x2 and 3x3 overlapping crops (14 images per photo).")
@click.option("--project", "project", default=None, type=click.IntRange(0, 1000),
              help="Top examples per unit that get deconvnet and guided projections (default: all --top; 0: none).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Model inputs per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes (default: by input count).")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(1), help="Photos between saved checkpoints.")
@click.option("--resume", is_flag=True, help="Continue an interrupted build in --out (same arguments).")
@click.option("--overwrite", is_flag=True, help="Replace an atlas or unfinished build in --out.")
@click.option("--rank-by", "rank_by", type=click.Choice(RANK_BY), default="auto",
              show_default=True, help="What ranks the top images: the layer's output, or the input of a saturating "
              "activation that ends it (ReLU6 ties at 6.0); auto: the pre-activation where there is one.")
@click.option("--deconvnet", "deconvnet", type=click.Choice(DECONVNET_MODES), default="auto", show_default=True,
              help="auto: no deconvnet projections for layers where they cannot depend on the image (no max-pool "
              "below them); always: compute them everywhere.")
@click.option("--no-names", "no_names", is_flag=True,
              help="Do not name the units by WordNet at the end (one more read of the example photos); "
              "`convscope atlas name` does it later.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record for the atlas written: out, model, layers, units, images, named, seconds.")
@ray_options
@model_options
def build(images, out, samples, layers, top, crops, project, batch_size, workers, checkpoint_every, resume, overwrite,
          rank_by, deconvnet, no_names, as_json, ray, ray_workers, model_args):
    """Scan photos (files, folders, globs, @LIST files) and write an atlas to --out.

    One pass over the photos keeps each unit's --top images; then only those photos are read
    again to cut patches and compute projections. Bad files are skipped and counted. A build
    killed half-way continues with --resume and gives the same atlas. With --ray the scan and
    the projections run on Ray workers (the --out folder must be one they all see), and the
    atlas is the one a single process writes.

    \b
    Examples:
      convscope atlas build photos/ --out atlas/
      convscope atlas build --samples --crops 1,2,3 --out demo-atlas/
      convscope atlas build photos/ --out atlas/ --resume
      convscope atlas build photos/ --out atlas/ --rank-by output
      convscope atlas build @imagenet.txt --out atlas/ --ray auto
    """
    from ..atlas import build as build_atlas
    from ..atlas.builder import check_out

    inputs = photo_inputs(images, samples)
    check_out(out, resume=resume, overwrite=overwrite)  # before the model loads
    model = model_args.load()
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = build_atlas(
            model, inputs, out, layers=layers, top=top, crops=crops, batch_size=batch_size, workers=workers,
            resume=resume, overwrite=overwrite, checkpoint_every=checkpoint_every, project=project,
            on_skip=report_skipped, ray=ray, ray_workers=ray_workers, rank_by=rank_by, deconvnet=deconvnet,
            names=not no_names,
        )
    for w in caught:  # one line each, no source line
        note(str(w.message))
    info = result.info()
    images_info = info["images"]
    units = sum(layer["units"] for layer in info["layers"])
    naming = result.naming()
    named = sum(n["named"] for n in result.unit_names()) if naming and naming["available"] else None
    if naming and not naming["available"]:
        note(f"no unit names: {naming['reason']}")
    record = {"model": info["model"], "layers": [layer["name"] for layer in info["layers"]], "units": units,
              "images": images_info, "named": named}
    named_text = "" if named is None else f", {named} named"
    report_built(f"atlas of {len(info['layers'])} layers, {units} units{named_text} over {images_info['scanned']} photos "
                 f"({images_info['skipped']} skipped)", out, record, time.time() - started, as_json, images_info["scanned"])


@atlas.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The info as one JSON record, with unreadable: [{path, reason}].")
def info(directory, as_json):
    """Model, preprocessing, images and layers of an atlas (with what ranks each layer and
    whether its deconvnet depends on the image), and the photos that could not be read again
    for their patches and projections (removed, changed or damaged since the scan). A build
    still running (or stopped) that publishes snapshots (`convscope demo`) shows its latest one,
    with how far it got: such an atlas is not complete ("complete": false, "building": ...).

    \b
    Example:
      convscope atlas info atlas/
    """
    from ..atlas import Atlas

    with Atlas.open(directory, building=True) as a:
        data = a.info()
        unreadable = a.unreadable()
    if as_json:
        emit({**data, "unreadable": [{"path": path, "reason": reason} for path, reason in unreadable]})
        return
    model = data["model"] or {}
    imgs = data["images"] or {}
    building = data.get("building")
    if building is not None:
        click.echo(f"NOT COMPLETE: a snapshot of a build in progress ({building['phase']}: {building['photos_done']} of "
                   f"{building['photos']} photos scanned, at {building['updated']}); finish it with "
                   "`convscope atlas build ... --resume` if it stopped")
    click.echo(f"model        {model.get('spec')} ({model.get('weights')})")
    prep = data["preprocessing"] or {}
    click.echo(f"input        {prep.get('input_size')} (resize {prep.get('resize')}, {prep.get('interpolation')})")
    click.echo(f"created      {data['created']}")
    click.echo(
        f"images       {imgs.get('scanned')} scanned, {imgs.get('skipped')} skipped, "
        f"{imgs.get('crops_per_photo')} crop(s) per photo"
    )
    click.echo(f"top          {data['top_k']} per unit; projections: {', '.join(data['projections']['methods'])} "
               f"for the top {data['projections']['per_unit']}")
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col, just in (("layer", "left"), ("shape", "right"), ("stride", "right"), ("receptive field", "right"), ("complete", "left")):
        table.add_column(col, justify=just)
    for layer in data["layers"]:
        table.add_row(
            layer["name"], "x".join(map(str, layer["shape"])), str(layer["stride"][0]),
            str(layer["receptive_field"][0]), "yes" if layer["complete"] else "no",
        )
    Console(width=max(100, Console().width)).print(table)
    for layer in data["layers"]:
        if layer.get("ranked_by") is None and layer.get("deconvnet") is None:
            continue  # an atlas from before these were recorded
        click.echo(f"{layer['name']}: ranked by {layer.get('ranked_by') or 'output'}")
        if layer.get("deconvnet") is not None:
            click.echo(f"  deconvnet: {layer['deconvnet']['note']}")
    if unreadable:
        click.echo(f"unreadable   {len(unreadable)} scanned photo(s) could not be read again, so their examples "
                   "have no patch or projection:")
        for path, reason in unreadable:
            click.echo(f"  {printable_path(path)}: {reason}")


@atlas.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--layers", type=LAYERS, default=None, help="Layers by dotted name (see `convscope atlas info`). Required.")
@renamed("--layer", "--layers", required=True, type=LAYERS)
@click.option("--units", type=UNITS, default=None, help="Channels: 7, 0-15, 3,7,9-11 or all. Required.")
@renamed("--unit", "--units", required=True, type=UNITS)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per unit: layer, unit, examples.")
def show(directory, layers, units, as_json):
    """The top examples of units: photo path, value, position on the layer's map, and box
    (top, left, bottom, right) on the model input.

    \b
    Example:
      convscope atlas show atlas/ --layers blocks.2 --units 7 --json
    """
    from ..atlas import Atlas

    with Atlas.open(directory) as a:
        wanted = [(layer, u) for layer in layers
                  for u in (range(a.layer(layer)["units"]) if units == "all" else units)]
        found = [(layer, u, a.examples(layer, u)) for layer, u in wanted]  # all checked before any output
        root = a.root
    for layer, unit, examples in found:
        rows = [
            {
                "path": e["path"], "value": e["value"], "y": e["y"], "x": e["x"], "box": e["box"],
                "rank": e["rank"], "box_original": e["box_original"],
                "patch": e["patch"], "deconvnet": e["deconvnet"], "guided": e["guided"],
            }
            for e in examples
        ]
        if as_json:
            emit({"layer": layer, "unit": unit, "examples": rows})
            continue
        click.echo(f"{layer} unit {unit}: {len(rows)} examples (files under {root})")
        for r in rows:
            click.echo(
                f"{r['rank']:3d}  {r['value']:10.4f}  y={r['y']:<3d} x={r['x']:<3d} box={r['box']}  {r['path']}"
            )


@atlas.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Model inputs per forward pass.")
@model_options(own="atlas")
def name(directory, batch_size, model_args):
    """Name the units of an atlas by WordNet: each unit gets the class that most of its top
    examples' images are (by the classifier), with the share, where that share is unlikely by
    luck (docs/atlas.md, *Unit names*). `atlas build` does this itself; run it for an atlas built
    before names existed, or with another rule. The model is the atlas's own unless --model says
    otherwise.

    \b
    Example:
      convscope atlas name atlas/
    """
    from ..atlas import Atlas
    from ..atlas.names import name_atlas
    from ..models import load_recorded

    with Atlas.open(directory) as a:
        if not model_args.names_a_model:
            model = load_recorded(a.info()["model"], device=model_args.device,
                                  hint="pass the model with --model (and --weights)")
        else:
            model = model_args.load((a.info()["model"] or {}).get("spec"))
        record = name_atlas(a, model, batch_size)
        names = a.unit_names(source="wordnet")
    if not record["available"]:
        note(f"no unit names: {record['reason']}")
        return
    for p in record["unreadable"]:
        note(f"could not read {printable_path(p['path'])} again: {p['reason']} (its examples count as unnamed)")
    for layer, total, named in _named_per_layer(names):
        click.echo(f"{layer}: {named} of {total} units named")


def _named_per_layer(names: list[dict]) -> list[tuple[str, int, int]]:
    """(layer, units, named units) in network order."""
    out: dict[str, list[int]] = {}
    for n in names:
        counts = out.setdefault(n["layer"], [0, 0])
        counts[0] += 1
        counts[1] += n["named"]
    return [(layer, total, named) for layer, (total, named) in out.items()]


def _share(count: int, total: int, base: float | None, odds: float | None) -> str:
    luck = "" if base is None else f" ({base:.0%} of the atlas's images; by luck {odds:.0e})"
    return f"{count} of {total}{luck}"


@atlas.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--word", default=None, help="A WordNet word (dog, retrievers, vehicle): the units whose top examples are mostly one.")
@click.option("--layer", default=None, help="Only this layer (see `convscope atlas info`).")
@click.option("--all", "show_all", is_flag=True, help="Unnamed units too, with their closest label.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON record per unit: layer, unit, named, name, key, count, total, base, chance "
                   "(with --word: word, count, total, base, chance and the unit's name record).")
def units(directory, word, layer, show_all, as_json):
    """The units of an atlas by name: what most of each unit's top examples are (a WordNet
    class, with the share), or with --word the units whose top examples are mostly that word.
    A name is the photo's class, not the part of it the unit sees: in layers with a small
    receptive field it is weak evidence (docs/atlas.md, *Unit names*).

    \b
    Examples:
      convscope atlas units atlas/
      convscope atlas units atlas/ --word dog
      convscope atlas units atlas/ --layer blocks.4 --all --json
    """
    from ..atlas import Atlas
    from ..atlas.names import word_units
    from ..errors import ConvscopeError

    with Atlas.open(directory) as a:
        if layer is not None:
            a.layer(layer)  # an unknown layer: one line with close matches
        record = a.naming()
        if record is None:
            raise ConvscopeError(f"the atlas {directory} has no unit names (it was built before they existed): "
                                 f"run `convscope atlas name {directory}`")
        if not record["available"]:
            raise ConvscopeError(f"the atlas {directory} has no unit names: {record['reason']}")
        if word is not None:
            found = word_units(a, word, layer)
            for r in found:
                if as_json:
                    emit(r)
                else:
                    own = r["name"]
                    named = f"  named {own['name']}" if own and own["named"] else ""
                    click.echo(f"{r['layer']}:{r['unit']}  {word}, {_share(r['count'], r['total'], r['base'], r['chance'])}{named}")
            if not found:
                note(f"no unit of {layer or 'this atlas'} has top examples that are mostly {word!r}")
            return
        names = a.unit_names(layer)
    for n in names:
        if not (n["named"] or show_all):
            continue
        if as_json:
            emit(n)
        elif n["named"]:
            click.echo(f"{n['layer']}:{n['unit']}  {n['name']}, {_share(n['count'], n['total'], n['base'], n['chance'])}")
        else:
            closest = f"closest {n['name']}, {n['count']} of {n['total']}" if n["name"] else "no shared class"
            click.echo(f"{n['layer']}:{n['unit']}  unnamed ({closest})")
    for name_, total, named in _named_per_layer(names):
        note(f"{name_}: {named} of {total} units named")
