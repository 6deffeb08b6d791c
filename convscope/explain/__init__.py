"""One-image explanations: occlusion sensitivity, Grad-CAM, guided Grad-CAM, saliency, a layer's
activations, and invariance to transforms.

Each function takes a :class:`~convscope.models.LoadedModel` and one image (a path, PIL image,
(H, W, 3) array, or normalized model-input tensor) and returns a result object holding the
arrays, with ``figure()`` (matplotlib, Agg), ``save(dir, npy=...)`` and ``_repr_png_`` for
Jupyter. Hooks live inside each call; the model is left as it came in.

>>> from convscope import load_model
>>> from convscope.explain import explain
>>> model = load_model()
>>> result = explain(model, "cat.jpg", method="occlusion", window=48, stride=16)
>>> result.save("out", npy=True)

:data:`METHODS` maps each method name to its function; its names are
:data:`convscope.choices.EXPLAIN_METHODS`, which the CLI's ``--method`` choices read.
"""
from __future__ import annotations

from collections.abc import Callable

from ..choices import EXPLAIN_METHODS, keyed
from ..errors import unknown_name_error
from ._common import ExplainError, Explanation, default_layer
from .activations import Activations, activations
from .cam import (
    GradCAM,
    GuidedGradCAM,
    Saliency,
    gradcam,
    guided_backprop,
    guided_gradcam,
    saliency,
)
from .invariance import TRANSFORMS, Invariance, invariance
from .occlusion import (
    DEFAULT_STRIDE,
    DEFAULT_WINDOW,
    Occlusion,
    OcclusionSplitWarning,
    occlusion,
)

#: method name (:data:`convscope.choices.EXPLAIN_METHODS`) -> function(model, image, *, target,
#: layer, **options) -> Explanation
METHODS: dict[str, Callable[..., Explanation]] = keyed(EXPLAIN_METHODS, {
    "occlusion": occlusion,
    "gradcam": gradcam,
    "guided-gradcam": guided_gradcam,
    "saliency": saliency,
    "activations": activations,
})


def explain(model, image, method: str = "gradcam", *, target="top", layer: str | None = None, **options) -> Explanation:
    """Run one method of :data:`METHODS` by name; ``options`` go to it (``window``, ``stride``,
    ``batch_size``, ``progress`` for occlusion).

    >>> explain(model, "cat.jpg", "guided-gradcam", target=281).save("out", npy=True)
    """
    try:
        fn = METHODS[method]
    except (KeyError, TypeError):
        raise unknown_name_error("method", method, METHODS, cls=ExplainError, list_all=True) from None
    return fn(model, image, target=target, layer=layer, **options)


__all__ = [
    "DEFAULT_STRIDE",
    "DEFAULT_WINDOW",
    "METHODS",
    "TRANSFORMS",
    "Activations",
    "ExplainError",
    "Explanation",
    "GradCAM",
    "GuidedGradCAM",
    "Invariance",
    "Occlusion",
    "OcclusionSplitWarning",
    "Saliency",
    "activations",
    "default_layer",
    "explain",
    "gradcam",
    "guided_backprop",
    "guided_gradcam",
    "invariance",
    "occlusion",
    "saliency",
]
