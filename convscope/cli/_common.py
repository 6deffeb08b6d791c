"""Shared CLI pieces: the lazy root group and its one-line errors, the model options, the layer
list type, old option spellings, and JSON records.

Nothing here imports torch: ``convscope --help`` and every command's ``--help`` read only
click and the torch-free :mod:`convscope.model_names`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
import sys
from typing import NoReturn

import click

from ..errors import ConvscopeError, QueryError
from ..files import printable_path
from ..model_names import BUILTIN, DEFAULT_MODEL

DEBUG_HINT = "set CONVSCOPE_DEBUG=1 for the traceback"

#: The exit status of an error that ends a command: the first row whose classes the error is an
#: instance of, all of them, decides. 2: bad input, told in the library's own words; 1: a
#: failure the user can act on, or a search that finds nothing. Anything else is a bug (1).
EXIT_CODES: tuple[tuple[tuple[type, ...], int], ...] = (
    ((QueryError,), 1),  # a word no vocabulary holds: an answer, as an empty result is
    ((ConvscopeError, ValueError), 2),  # a parameter value (ArgumentError), an unknown name or model
    ((ConvscopeError, LookupError), 2),  # an unknown layer, a unit out of range
    ((ConvscopeError, TypeError), 2),
    ((ConvscopeError,), 1),  # a damaged store, a layer that did not run, a full disk
    ((OSError,), 1),  # a file the command could not read or write
)

#: The flag (or argument) that sets a library parameter, where it is not ``--NAME`` (``_`` as
#: ``-``); a key with a value (``pretrained=False``) stands for that one setting.
FLAGS = {
    "inputs": "PATHS",  # Index.build
    "images": "IMAGES",  # atlas.build
    "checkpoints": "--weights",  # evolve
    "pretrained=False": "--no-pretrained",
}

_MENTION = re.compile(r"`([A-Za-z_]\w*)(?:=([^`]*))?`")


def debug() -> bool:
    return os.environ.get("CONVSCOPE_DEBUG", "").strip().lower() not in ("", "0", "no", "false", "off")


def in_flags(message: str) -> str:
    """A library message with the parameters it names in backticks (```out```, ```resume=True```,
    ```folds=7```) said as the flags that set them (``--out``, ``--resume``, ``--folds 7``).

    >>> in_flags("x holds an unfinished build; give `resume=True` to continue it, or another `out`")
    'x holds an unfinished build; give --resume to continue it, or another --out'
    """
    def flag(match: re.Match) -> str:
        name, value = match.groups()
        if match.group(0)[1:-1] in FLAGS:
            return FLAGS[match.group(0)[1:-1]]
        spelled = FLAGS.get(name, "--" + name.replace("_", "-"))
        return spelled if value in (None, "True") else f"{spelled} {value}"

    return _MENTION.sub(flag, message)


def describe_error(exc: Exception) -> tuple[int, str]:
    """The exit status (:data:`EXIT_CODES`) and the one line for an exception that ended a
    command: a library error's own message, its parameters said as flags; out of memory as what
    to change; anything else, a bug, with its type and the way to see the traceback."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's CUDA one
        return 1, "out of memory; try a smaller --batch-size"
    code = next((code for classes, code in EXIT_CODES if all(isinstance(exc, c) for c in classes)), None)
    if code is None:
        text = str(exc).strip().splitlines()
        return 1, f"{type(exc).__name__}: {text[0] if text else '(no message)'} ({DEBUG_HINT})"
    return code, in_flags(str(exc)) if isinstance(exc, ConvscopeError) else str(exc)


class Group(click.Group):
    """A click group whose commands are imported on first use (``lazy``: name -> "module:attr"
    in this package), and which turns exceptions into one line on stderr and an exit status
    (see :func:`describe_error`); ``CONVSCOPE_DEBUG=1`` shows the traceback of any of them."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(f"{__package__}.{module}"), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            if debug():
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug():
                raise
            code, line = describe_error(exc)
            click.echo(f"error: {line}", err=True)
            sys.exit(code)


# --------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """What --model, --weights, --no-pretrained and --device asked for; ``spec`` is ``None``
    where the command's default is the model an atlas was built with."""

    spec: str | None
    weights: str | None = None
    pretrained: bool = True
    device: str | None = None

    @property
    def names_a_model(self) -> bool:
        """True when --model, --weights or --no-pretrained was given: another model than the one
        an atlas or index records (--device alone only says where the recorded one runs)."""
        return (self.spec, self.weights, self.pretrained) != (None, None, True)

    def load(self, spec: str | None = None):
        """The :class:`~convscope.models.LoadedModel` (``spec`` fills in a ``None`` spec)."""
        from ..models import load_model

        check_device(self.device)
        return load_model(self.spec or spec, weights=self.weights, device=self.device, pretrained=self.pretrained)


def check_device(device: str | None) -> None:
    """A usage error, before anything loads, for a CUDA device on a machine without one."""
    if device is not None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter(f"{device!r} asked for, but no CUDA GPU is available; use cpu", param_hint="--device")


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def device_option(fn):
    """--device (cpu, cuda or cuda:N), checked as it is parsed; the command gets ``device``."""
    return click.option("--device", default=None, callback=_check_device,
                        help="cpu, cuda or cuda:N (default: cuda if available).")(fn)


def _check_device(ctx, param, value):
    if value is not None and not _DEVICE.fullmatch(value.strip()):
        raise click.BadParameter(f"{value!r} is not a device; use cpu, cuda or cuda:N")
    return value.strip() if value else value


def model_options(fn=None, *, own: str | None = None, weights: bool = True, device: bool = True):
    """--model, --weights, --no-pretrained and --device; the command gets ``model_args``
    (:class:`ModelArgs`). ``own="atlas"`` (or ``"index"``): --model defaults to the model that
    the atlas (index) was built with. ``weights``/``device=False`` leave those two out where the
    command cannot use them."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, model_spec, weights=None, no_pretrained=False, device=None, **kwargs):
            return fn(*args, model_args=ModelArgs(model_spec, weights, not no_pretrained, device), **kwargs)

        if device:
            wrapper = device_option(wrapper)
        wrapper = click.option("--no-pretrained", is_flag=True, help="Random-initialized weights (seeded).")(wrapper)
        if weights:
            wrapper = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                                   help="State dict (.pt/.pth/.safetensors) for the architecture.")(wrapper)
        models = ", ".join(BUILTIN) + " (`convscope models`)."
        wrapper = click.option(
            "--model", "model_spec", default=None if own else DEFAULT_MODEL, show_default=not own, metavar="SPEC",
            help=(f"Model (default: the {own}'s own; it must be the one the {own} was built with): " if own
                  else "Model: ") + models,
        )(wrapper)
        return wrapper

    return deco(fn) if fn is not None else deco


class NameList(click.ParamType):
    """A comma-separated list of dotted layer names: ``blocks.2`` or ``blocks.2,bn2``."""

    name = "names"

    def get_metavar(self, param, ctx=None) -> str:
        return "L1,L2"

    def convert(self, value, param, ctx) -> list[str]:
        if isinstance(value, (list, tuple)):
            return list(value)
        names = [n.strip() for n in str(value).split(",") if n.strip()]
        if not names:
            self.fail("give at least one dotted layer name, e.g. blocks.2 or blocks.2,bn2", param, ctx)
        return names


LAYERS = NameList()


class UnitList(click.ParamType):
    """Channels: ``7``, ``0-15``, ``3,7,9-11`` or ``all``, as a list of ints in the order given, or
    ``"all"``; whether they fit the layer is the library's check, with the valid range."""

    name = "units"

    def get_metavar(self, param, ctx=None) -> str:
        return "U"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)) or value == "all":
            return value
        text = str(value).strip()
        if text == "all":
            return "all"
        units: list[int] = []
        for part in (p.strip() for p in text.split(",")):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
                self.fail(f"cannot read {text!r}; write e.g. 7, 0-15, 3,7,9-11 or all", param, ctx)
            first = int(m.group(1))
            units += range(first, int(m.group(2) or first) + 1)
        return units


UNITS = UnitList()


def renamed(old: str, new: str, *, required: bool = False, **option_kwargs):
    """Accept the old spelling ``old`` of the option ``new`` for one more release: a hidden
    option whose value goes to ``new``'s parameter, with a one-line note on stderr. ``required``:
    one of the two spellings must be given (click cannot require ``new`` itself then)."""
    dest = new.lstrip("-").replace("-", "_")
    hidden = "old_" + old.lstrip("-").replace("-", "_")

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            value = kwargs.pop(hidden)
            ctx = click.get_current_context()
            if value is not None:
                if ctx.get_parameter_source(dest) == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"give {new} only ({old} is its old spelling)")
                click.echo(f"note: {old} is deprecated and goes in the next release; use {new}", err=True)
                kwargs[dest] = value
            if required and kwargs.get(dest) is None:
                param = next(p for p in ctx.command.params if p.name == dest)
                raise click.MissingParameter(ctx=ctx, param=param)
            return fn(*args, **kwargs)

        return click.option(old, hidden, hidden=True, default=None, **option_kwargs)(wrapper)

    return deco


def photo_inputs(paths, samples: bool) -> list[str]:
    """The photos a command was given (files, folders, globs, @LIST files), and scikit-image's
    sample photos with --samples; a usage error for none."""
    inputs = list(paths)
    if samples:
        from ..data import sample_photos

        inputs += [str(p) for p in sample_photos()]
    if not inputs:
        raise click.UsageError("give image files, folders or globs, or --samples")
    return inputs


def report_built(what: str, out, record: dict, seconds: float, as_json: bool, filled: bool) -> NoReturn:
    """The end of a command that builds a store in ``out``: with --json its record (``out``,
    ``record``, ``seconds``), one line ``WHAT written to OUT in N s`` on stderr, and exit status
    0, or 1 when nothing could be put in it (``filled`` false)."""
    if as_json:
        emit({"out": str(out), **record, "seconds": round(seconds, 3)})
    click.echo(f"{what} written to {printable_path(out)} in {seconds:.0f} s", err=True)
    sys.exit(0 if filled else 1)


def emit(record: dict) -> None:
    """One JSON record, one line, on stdout (the grammar of every --json)."""
    click.echo(json.dumps(record))


def note(text: str) -> None:
    click.echo(f"note: {text}", err=True)


def report_skipped(path, reason: str) -> None:
    """One line on stderr for a file that could not be used, its name made safe to print."""
    click.echo(f"skipped {printable_path(path)}: {reason}", err=True)
