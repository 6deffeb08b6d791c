"""Every channel of one layer for one image, tiled in one picture (as the Deep Visualization
Toolbox's activation panel, Yosinski et al. 2015).

All channels share one grey scale, from 0 (or the layer's minimum, if negative) to the layer's
maximum for this image, so a weak channel looks dark next to a strong one.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..hooks import capture, run
from ..models import as_loaded
from . import figures
from ._common import (
    ExplainError,
    Explanation,
    check_layer,
    prepare,
    resolve_target,
    top_predictions,
)


@dataclasses.dataclass(eq=False)
class Activations(Explanation):
    """``activations`` (C, h, w): the layer's output for the image (saved as
    ``activations.npy``); ``strongest``: the channel with the largest single value."""

    layer: str = ""
    activations: np.ndarray | None = None

    def __post_init__(self):
        self.name = "activations"
        self.arrays = {"activations": "activations"}

    @property
    def strongest(self) -> int:
        return int(self.activations.reshape(len(self.activations), -1).max(axis=1).argmax())

    def summary(self) -> dict:
        return {**super().summary(), "layer": self.layer, "shape": list(self.activations.shape), "strongest": self.strongest}

    def mosaic(self) -> np.ndarray:
        """The tiled picture (rows, cols) in [0, 1], white gaps between channels."""
        a = self.activations
        lo = min(0.0, float(a.min()))
        hi = float(a.max())
        scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return figures.tile(scaled.astype(np.float32), pad=1, fill=1.0)

    def figure(self):
        c, h, w = self.activations.shape
        fig, (a, b) = figures.new_figure(2, panel_inches=4.5)
        figures.show_image(a, self.image, f"input: {self.image_name}")
        b.imshow(self.mosaic(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        b.set_title(f"{self.layer}: {c} channels of {h}x{w} (strongest: {self.strongest})", fontsize=9)
        return fig


def activations(model, image, *, target="top", layer: str | None = None) -> Activations:
    """The output of ``layer`` (default: the last convolutional stage) for one image, every
    channel, with the model's top predictions.

    >>> result = activations(load_model(), "cat.jpg", layer="blocks.2")
    >>> result.activations.shape                    # (40, 28, 28)
    """
    model = as_loaded(model)
    layer = check_layer(model, layer)
    x, pixels, name = prepare(model, image)
    with torch.inference_mode(), capture(model.module, [layer], stop=False) as outs:
        logits = run(model.module, x, outs)  # LayerNotRunError if the layer did not run
        act = outs[layer][0].float().cpu().numpy()
    if act.ndim != 3:
        raise ExplainError(f"layer {layer!r} has output shape {act.shape}, not a (C, H, W) map; pick a convolutional layer")
    cls = resolve_target(target, logits)
    return Activations(
        image=pixels, target=cls, target_label=model.label(cls), top=top_predictions(model, logits), image_name=name,
        layer=layer, activations=act,
    )
