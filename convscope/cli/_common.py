"""Shared CLI pieces: the root group, model options, one-line errors and progress bars."""
from __future__ import annotations

import functools
import os
import sys

import click

from ..errors import ConvscopeError


class _Group(click.Group):
    """Turns library errors into one line on stderr and exit status 2 (usage) or 1 (failure)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except (ConvscopeError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            click.echo(f"error: {msg}", err=True)
            usage = isinstance(exc, (ValueError, TypeError, KeyError)) or getattr(exc, "usage", False)
            sys.exit(2 if usage else 1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except MemoryError:
            click.echo("error: out of memory; use a smaller --batch-size", err=True)
            sys.exit(1)
        except Exception as exc:  # last resort: still one line, with a way to see more
            if os.environ.get("CONVSCOPE_DEBUG"):
                raise
            click.echo(
                f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                "(set CONVSCOPE_DEBUG=1 for the traceback)",
                err=True,
            )
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="convscope")
def main():
    """convscope: see what a convolutional image classifier has learned.

    \b
    Example:
      convscope classify --samples
      convscope layers --model torchvision:resnet18 --no-pretrained
    """
    from ..runtime import keep_freed_memory

    keep_freed_memory()  # large freed tensors stay in the heap: no page faults on the next one


def model_options(fn):
    """--model, --weights, --no-pretrained and --device, shared by every command."""
    from ..models import DEFAULT_MODEL, available_models

    @click.option(
        "--model",
        "model_spec",
        default=DEFAULT_MODEL,
        show_default=True,
        metavar="SPEC",
        help="Model: " + ", ".join(available_models()) + ".",
    )
    @click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict (.pt/.pth/.safetensors) for the architecture.")
    @click.option("--no-pretrained", is_flag=True, help="Random-initialized weights (seeded).")
    @click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available).")
    @functools.wraps(fn)
    def wrapper(*args, model_spec, weights, no_pretrained, device, **kwargs):
        from ..models import load_model

        def get_model():
            return load_model(model_spec, weights=weights, device=device, pretrained=not no_pretrained)

        return fn(*args, get_model=get_model, **kwargs)

    return wrapper


def progress(iterable=None, total=None, description="working", disable=None):
    """A rich progress bar on stderr, quiet when stderr is not a terminal unless CONVSCOPE_PROGRESS=1."""
    from ..progress import track

    return track(iterable, total=total, description=description, disable=disable)
