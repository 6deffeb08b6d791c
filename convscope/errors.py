"""Errors a user can act on. The CLI prints their message as one line, never a traceback.

:func:`unknown_name_error` is the one "unknown X, did you mean" message of the library: every
lookup of a name a user typed (a layer, a model, a method, a unit) goes through it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class ConvscopeError(Exception):
    """Base class: the message is a complete sentence that says what to do next.

    ``param``: the parameter at fault, where there is one (``out``, ``resume``). The message
    speaks of the library's parameters, each written in backticks (```resume=True```, ```out```),
    so that the CLI can say them as its flags (``--resume``, ``--out``).
    """

    param: str | None = None

    def __init__(self, *args, param: str | None = None):
        super().__init__(*args)
        if param is not None:
            self.param = param


class UnknownModelError(ConvscopeError, ValueError):
    pass


class UnknownLayerError(ConvscopeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ArgumentError(ConvscopeError, ValueError):
    """A parameter value the library cannot use; the message names the parameter and what to pass
    (``param``, where one parameter is at fault)."""


class FolderInUseError(ArgumentError):
    """A store's folder (``param``: ``out``) that holds what the call was not told to replace or
    continue: a finished store, an unfinished build, or other files."""


class QueryError(ConvscopeError):
    """A search that can find nothing, as a word no vocabulary holds: an answer, not bad input."""


class UnknownNameError(ConvscopeError, ValueError):
    """A name (method, transform, atlas layer, ...) that is not one of the known ones."""


class UnknownWordError(QueryError, UnknownNameError):
    """A search word that is not in the vocabulary (with close matches): a query that finds nothing."""


class LayerNotRunError(ConvscopeError):
    """A hooked layer exists in the model but did not run in its forward pass."""


class WeightsUnavailableError(ConvscopeError):
    pass


class ImageError(ConvscopeError):
    """An input file that cannot be used as an image; ``reason`` is one line."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def close_matches(name: str, known: Iterable[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    """Up to ``n`` names from ``known`` that look like ``name``, closest first."""
    return difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=cutoff)


def unknown_name_error(kind: str, name: str, known: Iterable[str], *, hint: str | None = None,
                       cls: type[ConvscopeError] = UnknownNameError, n: int = 5,
                       cutoff: float = 0.5, list_all: bool = False) -> ConvscopeError:
    """The library's one "unknown X" error: ``unknown {kind} {name!r}``, the close matches from
    ``known`` (or all of them with ``list_all``), and ``hint``, a sentence that says what to do.

    >>> str(unknown_name_error("method", "gradcm", ["gradcam", "saliency"]))
    "unknown method 'gradcm'. Close matches: gradcam."
    """
    known = list(known)
    if list_all:
        found = f" Choose one of: {', '.join(map(str, known))}." if known else ""
    else:
        close = close_matches(name, known, n=n, cutoff=cutoff)
        found = f" Close matches: {', '.join(close)}." if close else ""
    tail = f" {hint}" if hint else ""
    return cls(f"unknown {kind} {name!r}.{found}{tail}")


def unknown_layer_error(name: str, known: Iterable[str]) -> UnknownLayerError:
    """An unknown layer name: close matches, and the command that lists them all."""
    return unknown_name_error("layer", name, known, hint="Run `convscope layers` to list them.",
                              cls=UnknownLayerError)


def layer_not_run_error(name: str) -> LayerNotRunError:
    return LayerNotRunError(
        f"layer {name!r} did not run in the forward pass of this model; "
        "choose another from `convscope layers`"
    )
