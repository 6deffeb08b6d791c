"""`convscope atlas health`: dead, saturated, constant and duplicate units of an atlas, and the
first layer's filters with their frequency content (:mod:`convscope.health`)."""
from __future__ import annotations

import json

import click

from ._common import emit, model_options, note

HEALTH_JSON = "health.json"
FILTERS_PNG = "filters.png"


@click.command()
@click.argument("atlas", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True,
              help="One JSON record per flagged unit: layer, unit, flags and the numbers behind them.")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help=f"Folder (made if missing) for {HEALTH_JSON} (every layer and flagged unit) and {FILTERS_PNG} "
                   "(the first layer's filters and their low/mid/high frequency shares).")
@click.option("--worst", default=5, show_default=True, type=click.IntRange(0, 10000),
              help="Flagged units listed per layer in the text report.")
@model_options(own="atlas")
def health(atlas, as_json, out, worst, model_args):
    """The health of an atlas's model, as Zeiler & Fergus looked for it: per unit over the atlas's
    photos, dead (never positive), saturated (at its activation's ceiling, ReLU6's 6, almost
    everywhere), constant (barely varies) and duplicate (almost the same top examples or weights
    as an earlier unit); per layer the share of each. Nothing is scanned again; the model (the
    atlas's own unless --model says otherwise) gives the activations and the weights.

    \b
    Examples:
      convscope atlas health atlas/
      convscope atlas health atlas/ --json
      convscope atlas health atlas/ --out health/
    """
    from pathlib import Path

    from ..atlas import Atlas
    from ..errors import ConvscopeError
    from ..files import write_text_atomic
    from ..health import PASS_MODEL, first_layer_filters, health as model_health, sheet_flags, write_filter_sheet
    from ..models import load_recorded

    with Atlas.open(atlas) as a:
        if not model_args.names_a_model:
            model = load_recorded(a.info()["model"], device=model_args.device, hint=PASS_MODEL)
        else:
            model = model_args.load((a.info()["model"] or {}).get("spec"))
        report = model_health(a, model)
    for layer in report.layers:
        for line in layer.notes:
            note(f"{layer.name}: {line}")
    if out is not None:
        folder = Path(out)
        try:
            filters = first_layer_filters(model)
        except ConvscopeError as exc:  # no RGB convolution to draw: the report is written all the same
            filters = None
            note(f"no first-layer filter sheet: {exc}")
        first_layer = {"first_layer": filters.to_dict()} if filters is not None else {}
        write_text_atomic(folder / HEALTH_JSON, json.dumps({**report.to_dict(), **first_layer}, indent=1) + "\n")
        wrote = [folder / HEALTH_JSON]
        if filters is not None:
            write_filter_sheet(filters, folder / FILTERS_PNG, flags=sheet_flags(report, filters))
            wrote.append(folder / FILTERS_PNG)
        click.echo(f"wrote {' and '.join(map(str, wrote))}", err=True)
    if as_json:
        for unit in report.flagged():
            emit(unit.to_dict())
        return
    _print_text(report, worst)


def _evidence(u) -> str:
    """The numbers behind a unit's flags, in a few words."""
    parts = []
    if "dead" in u.flags:
        parts.append(f"max {u.max if u.max is not None else 'none'}")
    if "saturated" in u.flags:
        parts.append(f"{u.at_ceiling:.0%} of positions at the ceiling")
    if "constant" in u.flags:
        parts.append(f"range {u.range_ratio:.3f} of the layer's median")
    if "duplicate" in u.flags:
        why = [f"top-example overlap {u.overlap:.0%}"]
        if u.cosine is not None:
            why.append(f"weight cosine {u.cosine:.3f}")
        parts.append(f"of unit {u.duplicate_of} ({', '.join(why)})")
    return "; ".join(parts)


def _print_text(report, worst: int) -> None:
    names = [layer.name for layer in report.layers]
    width = max([len("layer"), *map(len, names)])
    click.echo(f"{'layer':<{width}}  {'units':>5}  {'activation':<18}  {'dead':>6}  {'saturated':>9}  "
               f"{'constant':>8}  {'duplicate':>9}  {'positive':>8}")
    for layer in report.layers:
        act = "unbounded" if layer.ceiling is None else f"{layer.activation} <= {layer.ceiling:g}"
        s = layer.shares
        pos = layer.distribution["frac_positive"]
        click.echo(f"{layer.name:<{width}}  {layer.units:>5}  {act:<18.18}  {s['dead']:>6.1%}  {s['saturated']:>9.1%}  "
                   f"{s['constant']:>8.1%}  {s['duplicate']:>9.1%}  {pos:>8.1%}")
    for layer in report.layers:
        flagged = report.flagged(layer.name)
        if not flagged or not worst:
            continue
        click.echo(f"\n{layer.name}: {len(flagged)} of {layer.units} units flagged")
        for u in flagged[:worst]:
            click.echo(f"  unit {u.unit:<5d} {', '.join(u.flags):<10}  {_evidence(u)}")
        if len(flagged) > worst:
            click.echo(f"  ... and {len(flagged) - worst} more (--json lists them all)")
