"""`convscope layers` and `convscope models`: what can be looked at."""
from __future__ import annotations

import click

from ._common import emit, model_options, note


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON record per layer instead of a table.")
@click.option("--default-only", is_flag=True, help="Only the layers of the default selection.")
@model_options
def layers(as_json, default_only, model_args):
    """List a model's layers by PyTorch's dotted names, with output shape (C, H, W) at the model's
    input size, cumulative stride and receptive field in input pixels. A * marks the default
    selection (first and last post-activation maps, and each stage's output).

    \b
    Example:
      convscope layers --model torchvision:resnet18 --no-pretrained
    """
    from ..progress import Bar

    model = model_args.load()
    catalogue = model.layers
    names = catalogue.default if default_only else catalogue.names
    with Bar(None, "measuring receptive fields"):
        infos = catalogue.select(names)
    if as_json:
        for info in infos:
            emit(info.to_dict())
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{model.spec}: input {model.input_size[0]}x{model.input_size[1]}")
        for col, just in (("", "left"), ("name", "left"), ("type", "left"), ("shape", "right"), ("stride", "right"),
                          ("receptive field", "right")):
            table.add_column(col, justify=just)
        for info in infos:
            table.add_row("*" if info.default else "", info.name, info.type, "x".join(map(str, info.shape)),
                          str(info.stride[0]), str(info.receptive_field[0]))
        Console(width=max(100, Console().width)).print(table)
    for text in catalogue.notes:
        note(text)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON record per spec: spec, description.")
def models(as_json):
    """List the model specs that --model accepts.

    \b
    Example:
      convscope models
    """
    from ..models import FAMILIES, MODELS

    rows = [(e.name, e.description) for e in MODELS.values()] + [(f"{e.name}:NAME", e.description) for e in FAMILIES.values()]
    for spec, description in rows:
        if as_json:
            emit({"spec": spec, "description": description})
        else:
            click.echo(f"{spec:24s} {description}")
