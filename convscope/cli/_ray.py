"""``--ray [ADDRESS]`` and ``--ray-workers N``: the options of the commands that can run on a Ray
cluster (``atlas build``, ``index``). Plain click: ``--help`` imports neither Ray nor torch."""
from __future__ import annotations

import functools

import click

_LOCAL = "local"  # what a bare --ray stands for


def _address(ctx, param, value):
    if value is None or value == _LOCAL:
        return None if value is None else True
    if value == "auto" or ":" in value:
        return value
    raise click.BadParameter(
        f"takes a Ray cluster address (auto, HOST:PORT or ray://HOST:PORT) or nothing for a local Ray, got "
        f"{value!r}; put the photos before --ray, or write --ray=ADDRESS"
    )


def ray_options(fn):
    """Add ``--ray`` and ``--ray-workers``; the command gets ``ray`` (None, True for a local Ray, or
    an address) and ``ray_workers``."""

    @functools.wraps(fn)
    def wrapper(*args, ray, ray_workers, **kwargs):
        if ray_workers is not None and ray is None:
            raise click.UsageError("--ray-workers is for a build on Ray; add --ray (a local Ray) or --ray ADDRESS")
        return fn(*args, ray=ray, ray_workers=ray_workers, **kwargs)

    wrapper = click.option(
        "--ray-workers", "ray_workers", default=None, type=click.IntRange(1), metavar="N",
        help="With --ray: Ray workers, each holding the model (default: one per GPU, else one per node).",
    )(wrapper)
    return click.option(
        "--ray", "ray", is_flag=False, flag_value=_LOCAL, default=None, metavar="[ADDRESS]", callback=_address,
        help="Run on Ray, with the same result as one process: alone, a local Ray on this machine's CPUs and "
             "GPUs; auto: the cluster `ray start` runs here; HOST:PORT: that cluster (every node must see the "
             "files at the same paths). Needs the ray extra: pip install \"convscope[ray]\".",
    )(wrapper)
