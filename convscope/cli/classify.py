"""`convscope classify`: top-K ImageNet labels for photos."""
from __future__ import annotations

import sys

import click

from ._common import emit, model_options, photo_inputs, report_skipped


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--samples", is_flag=True, help="Also classify scikit-image's sample photos.")
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 1000), help="Predictions per image.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per image (path, predictions or error) instead of a table.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096), help="Images per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(0, 64), help="Decoding processes (default: by input count).")
@model_options
def classify(paths, samples, top, as_json, batch_size, workers, model_args):
    """Classify photos: files, folders (recursive), globs or @LIST files.

    Bad files are reported one line each and skipped. Exit status: 0 when at least one image was
    classified, 1 when none could be, 2 for usage errors.

    \b
    Examples:
      convscope classify photos/ --top 3
      convscope classify --samples --json
    """
    from ..classify import iter_classify

    inputs = photo_inputs(paths, samples)
    model = model_args.load()
    good = bad = 0
    rows = []
    for item in iter_classify(model, inputs, top=top, batch_size=batch_size, workers=workers):
        if item.ok:
            good += 1
        else:
            bad += 1
            report_skipped(item.path, item.error)
        if as_json:
            emit(item.to_dict())
        elif item.ok:
            rows.append(item)
    if not as_json and rows:
        _print_table(rows, model.spec)
    click.echo(f"{good} classified, {bad} skipped", err=True)
    sys.exit(0 if good else 1)


def _print_table(rows, spec):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{spec}", show_lines=False)
    table.add_column("image", overflow="fold")
    table.add_column("prediction")
    table.add_column("p", justify="right")
    table.add_column("runners-up", overflow="fold")
    for item in rows:
        best, rest = item.predictions[0], item.predictions[1:]
        table.add_row(
            item.path,
            f"{best.label} ({best.index})",
            f"{best.probability:.3f}",
            ", ".join(f"{p.label} {p.probability:.2f}" for p in rest),
        )
    Console(width=max(100, Console().width)).print(table)
