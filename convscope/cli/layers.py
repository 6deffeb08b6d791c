"""`convscope layers` and `convscope models`: what can be looked at."""
from __future__ import annotations

import json

import click

from ._common import main, model_options


@main.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects instead of a table.")
@click.option("--default-only", is_flag=True, help="Only the layers of the default selection.")
@model_options
def layers(as_json, default_only, get_model):
    """List a model's layers by PyTorch's dotted names, with output shape (C, H, W) at the model's
    input size, cumulative stride and receptive field in input pixels. A * marks the default
    selection (first and last post-activation maps, and each stage's output).

    \b
    Example:
      convscope layers --model torchvision:resnet18 --no-pretrained
    """
    model = get_model()
    catalogue = model.layers
    names = catalogue.default if default_only else catalogue.names
    from ..progress import Bar

    with Bar(None, "measuring receptive fields"):
        infos = catalogue.select(names)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=None))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model.spec}: input {model.input_size[0]}x{model.input_size[1]}")
    for col, just in (("", "left"), ("name", "left"), ("type", "left"), ("shape", "right"), ("stride", "right"), ("receptive field", "right")):
        table.add_column(col, justify=just)
    for info in infos:
        table.add_row(
            "*" if info.default else "",
            info.name,
            info.type,
            "x".join(map(str, info.shape)),
            str(info.stride[0]),
            str(info.receptive_field[0]),
        )
    Console(width=max(100, Console().width)).print(table)
    for note in catalogue.notes:
        click.echo(f"note: {note}", err=True)


@main.command()
def models():
    """List the model specs that --model accepts.

    \b
    Example:
      convscope models
    """
    from ..models import FAMILIES, MODELS

    for entry in MODELS.values():
        click.echo(f"{entry.name:24s} {entry.description}")
    for entry in FAMILIES.values():
        click.echo(f"{entry.name + ':NAME':24s} {entry.description}")
