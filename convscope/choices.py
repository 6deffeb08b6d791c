"""The names a user chooses from, and the defaults shown beside them, without importing torch.

Each table here is the one list of its names: the library's registry of the same things is keyed
by it (:func:`keyed` refuses, at import, a registry that names other things), and the CLI's
``click.Choice`` options and their help read it, so ``convscope CMD --help`` lists them without
loading an engine and the two cannot drift. The model specs are in :mod:`convscope.model_names`.
"""
from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")

#: Projection methods (:data:`convscope.backproject.METHODS`): name -> what its rule does.
PROJECTION_METHODS: dict[str, str] = {
    "deconvnet": "Zeiler & Fergus (backward signal rectified, forward mask ignored)",
    "guided": "guided backprop (backward signal rectified, then the ReLU's mask)",
    "gradient": "plain gradient, as in saliency maps (nothing changed)",
}
#: The projections an atlas stores a picture of (its examples' columns), and evolve draws.
DRAWN_PROJECTIONS: tuple[str, ...] = ("deconvnet", "guided")
#: ``atlas build(deconvnet=...)``: leave the deconvnet out where it cannot depend on the image, or not.
DECONVNET_MODES: tuple[str, ...] = ("auto", "always")
#: What ranks a layer's top images (``scan(rank_by=...)``, :func:`convscope.scan_settings.ranking`).
RANK_BY: tuple[str, ...] = ("auto", "output", "pre-activation")
#: One-image explanations (:data:`convscope.explain.METHODS`).
EXPLAIN_METHODS: tuple[str, ...] = ("occlusion", "gradcam", "guided-gradcam", "saliency", "activations")
#: Transforms of the invariance test (:data:`convscope.explain.TRANSFORMS`).
TRANSFORMS: tuple[str, ...] = ("translate", "scale", "rotate")
#: Image parameterizations of feature visualization (:data:`convscope.featvis.PARAMS`).
PARAMS: tuple[str, ...] = ("fourier", "pixel")
#: Spatial poolings of the linear probes (:func:`convscope.probe.probe`).
POOLS: tuple[str, ...] = ("avg", "max")
#: Orders of keyword search results (:func:`convscope.index.search.search`).
SORTS: tuple[str, ...] = ("score", "date")

#: Default cut-off of a keyword score. On the dev photos (15 hypernym queries, BENCHMARKS.md) a
#: cut-off of 0.2 keeps 97.9 percent of the relevant photos at a precision of 0.925; 0.1 gains
#: 0.9 points of recall for 7 of precision, 0.3 the reverse. Sorting by score puts the doubtful
#: ones last anyway; sorting by date is where the cut-off shows, and there 0.2 errs on the side
#: of not hiding a photo.
MIN_SCORE = 0.2
#: Units drawn per layer by evolve when none are named (``count``): the strongest at the last checkpoint.
DEFAULT_UNITS = 6


def keyed(names: Iterable[str], entries: Mapping[str, T]) -> dict[str, T]:
    """``entries`` in the order of ``names``: a library registry built from one of the tables
    here. A registry whose keys are not exactly ``names`` is a programming error, raised when
    its module is imported (so no test run, and no user, ever sees the two disagree).

    >>> keyed(("a", "b"), {"b": 2, "a": 1})
    {'a': 1, 'b': 2}
    """
    names = list(names)
    if sorted(names) != sorted(entries):
        raise RuntimeError(f"a registry holds {sorted(entries)}, but its names table in convscope.choices "
                           f"holds {names}; change both")
    return {name: entries[name] for name in names}


__all__ = ["DECONVNET_MODES", "DEFAULT_UNITS", "DRAWN_PROJECTIONS", "EXPLAIN_METHODS", "MIN_SCORE", "PARAMS", "POOLS",
           "PROJECTION_METHODS", "RANK_BY", "SORTS", "TRANSFORMS", "keyed"]
