"""Gradient explanations of one class for one image: Grad-CAM, guided Grad-CAM and saliency.

* Grad-CAM (Selvaraju et al. 2017): the layer's maps weighted by the spatial mean of the target
  logit's gradient, summed over channels, rectified. ``heatmap`` (and the figure) upsample it
  bilinearly to the input and min-max normalize it to [0, 1] (exactly as pytorch-grad-cam: its
  output is normalized before and after the upsampling, which can lower the maximum).
* Guided Grad-CAM: guided backprop of the target logit (:mod:`convscope.backproject`'s
  ``guided`` rule) times that upsampled, normalized CAM.
* Saliency (Simonyan et al. 2014): the input gradient of the target logit, max of the absolute
  value over colour channels.

Gradients are taken with ``torch.autograd.grad`` on a layer output captured by a forward hook
(:func:`convscope.hooks.capture`), never with full backward hooks; the hooks live in the call,
nothing is left on the model, and no parameter gradient is accumulated.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..hooks import capture, model_lock, run
from ..models import as_loaded
from . import figures
from ._common import (
    ExplainError,
    Explanation,
    check_layer,
    normalize01,
    prepare,
    resolve_target,
    top_predictions,
    upsample,
)


def _forward_keeping(module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the output of ``layer``, in one forward pass with autograd on.

    The layer's output is handed on as a copy, so an in-place operation later in the network
    (``out += identity``) cannot change the tensor whose gradient is asked for.
    """
    kept: dict[str, torch.Tensor] = {}

    def keep(name, t):
        kept[name] = t
        return t.clone()

    with capture(module, [layer], stop=False, transform=keep) as outs:
        logits = run(module, x, outs)  # LayerNotRunError if the layer did not run
    act = kept[layer]
    if act.dim() != 4:
        raise ExplainError(f"layer {layer!r} has output shape {tuple(act.shape[1:])}, not a (C, H, W) map; pick a convolutional layer (run `convscope layers`)")
    if logits is None or logits.dim() != 2:
        raise ExplainError("the model does not return (N, classes) logits; Grad-CAM needs a classifier")
    return logits, act


def _cam_pass(model, x: torch.Tensor, layer: str, target) -> tuple[torch.Tensor, int, np.ndarray, np.ndarray]:
    """(logits, target, raw CAM (h, w) before normalization, channel weights (C,))."""
    with model_lock(model.module), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits, act = _forward_keeping(model.module, xg, layer)
        cls = resolve_target(target, logits.detach())
        (grad,) = torch.autograd.grad(logits[0, cls], act)
    weights = grad[0].mean(dim=(1, 2))  # (C,): global-average-pooled gradients
    cam = torch.relu((weights[:, None, None] * act.detach()[0]).sum(0))
    return logits.detach(), cls, cam.float().cpu().numpy(), weights.float().cpu().numpy()


def _heatmap(cam: np.ndarray, size) -> np.ndarray:
    # normalized, upsampled, normalized again: pytorch-grad-cam's steps, so the two agree
    return normalize01(upsample(normalize01(cam), size))


def guided_backprop(model, x: torch.Tensor, target: int) -> tuple[np.ndarray, list[str]]:
    """Guided backprop of the ``target`` logit: (3, H, W) input-gradient array, and notes on
    activations that got a substitute rule (ReLU6 and the like; see :mod:`convscope.backproject`)."""
    from ..backproject import modified_backward

    model = as_loaded(model)
    with model_lock(model.module), torch.enable_grad():
        xg = x.detach().clone().to(model.device).requires_grad_(True)
        # The notes are returned, not warned (warnings' filters are process-wide, not thread-safe).
        with modified_backward(model.module, "guided", warn=False) as notes:
            logits = model.module(xg)
            (grad,) = torch.autograd.grad(logits[0, int(target)], xg)
            notes = list(notes)
    return grad[0].detach().float().cpu().numpy(), notes


@dataclasses.dataclass(eq=False)
class GradCAM(Explanation):
    """Grad-CAM of ``target`` at ``layer``.

    ``cam`` (h, w): the rectified weighted sum at the layer's resolution, before normalization
    (saved as ``gradcam.npy``); ``heatmap`` (H, W): upsampled to the input and min-max
    normalized to [0, 1]; ``weights`` (C,): the channel weights (mean gradients).
    """

    layer: str = ""
    cam: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    weights: np.ndarray | None = None

    def __post_init__(self):
        self.name = "gradcam"
        self.arrays = {"gradcam": "cam"}

    def summary(self) -> dict:
        return {**super().summary(), "layer": self.layer, "map_shape": list(self.cam.shape)}

    def figure(self):
        fig, (a, b) = figures.new_figure(2)
        figures.show_image(a, self.image, f"input: {self.image_name}")
        figures.overlay(b, self.image, self.heatmap, f"Grad-CAM at {self.layer}\n{self.target}: {self.target_label}", colorbar=True)
        return fig


@dataclasses.dataclass(eq=False)
class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM: ``guided`` (3, H, W) = ``backprop`` (guided backprop of the target
    logit, 3 x H x W) times ``heatmap`` (the normalized, upsampled Grad-CAM). ``notes``: the
    substitute rules guided backprop applied (non-ReLU activations)."""

    guided: np.ndarray | None = None
    backprop: np.ndarray | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.name = "guided_gradcam"
        self.arrays = {"guided_gradcam": "guided"}

    def figure(self):
        from ..display import to_picture

        fig, (a, b, c, d) = figures.new_figure(4)
        figures.show_image(a, self.image, f"input: {self.image_name}")
        figures.overlay(b, self.image, self.heatmap, f"Grad-CAM at {self.layer}")
        figures.show_image(c, to_picture(self.backprop)[0], "guided backprop")
        figures.show_image(d, to_picture(self.guided)[0], f"guided Grad-CAM\n{self.target}: {self.target_label}")
        return fig


@dataclasses.dataclass(eq=False)
class Saliency(Explanation):
    """Saliency: ``saliency`` (H, W) = max over colour channels of ``|gradient|``, where
    ``gradient`` (3, H, W) is the input gradient of the target logit."""

    saliency: np.ndarray | None = None
    gradient: np.ndarray | None = None

    def __post_init__(self):
        self.name = "saliency"
        self.arrays = {"saliency": "saliency"}

    def figure(self):
        fig, (a, b, c) = figures.new_figure(3)
        figures.show_image(a, self.image, f"input: {self.image_name}")
        s = self.saliency / (self.saliency.max() + 1e-12)
        b.imshow(s, cmap="gray", interpolation="nearest")
        b.set_title(f"saliency\n{self.target}: {self.target_label}", fontsize=9)
        figures.overlay(c, self.image, s, "saliency over the input", cmap="hot", alpha=0.6)
        return fig


def gradcam(model, image, *, target="top", layer: str | None = None) -> GradCAM:
    """Grad-CAM of one image for one class.

    ``model``: a :class:`~convscope.models.LoadedModel`. ``image``: a path, PIL image, (H, W, 3)
    array, or a normalized model-input tensor (3, H, W). ``target``: a class index or ``"top"``
    (the most probable class). ``layer``: a dotted layer name; default the last convolutional
    stage (the deepest catalogue default with a map larger than 1x1).

    >>> from convscope import load_model
    >>> from convscope.explain import gradcam
    >>> result = gradcam(load_model(), "cat.jpg")
    >>> result.cam.shape, result.heatmap.shape      # ((7, 7), (224, 224))
    """
    model = as_loaded(model)
    layer = check_layer(model, layer)
    x, pixels, name = prepare(model, image)
    logits, cls, cam, weights = _cam_pass(model, x, layer, target)
    heat = _heatmap(cam, x.shape[2:])
    return GradCAM(
        image=pixels, target=cls, target_label=model.label(cls), top=top_predictions(model, logits), image_name=name,
        layer=layer, cam=cam, heatmap=heat, weights=weights,
    )


def guided_gradcam(model, image, *, target="top", layer: str | None = None) -> GuidedGradCAM:
    """Guided Grad-CAM: guided backprop of the target logit (3, H, W) times the upsampled,
    normalized Grad-CAM (same arguments as :func:`gradcam`).

    >>> result = guided_gradcam(load_model(), "cat.jpg", target=281)
    >>> result.guided.shape                          # (3, 224, 224)
    """
    model = as_loaded(model)
    layer = check_layer(model, layer)
    x, pixels, name = prepare(model, image)
    logits, cls, cam, weights = _cam_pass(model, x, layer, target)
    heat = _heatmap(cam, x.shape[2:])
    gb, notes = guided_backprop(model, x, cls)
    return GuidedGradCAM(
        image=pixels, target=cls, target_label=model.label(cls), top=top_predictions(model, logits), image_name=name,
        layer=layer, cam=cam, heatmap=heat, weights=weights, guided=gb * heat[None], backprop=gb, notes=notes,
    )


def saliency(model, image, *, target="top", layer: str | None = None) -> Saliency:
    """Saliency map: max over colour channels of the absolute input gradient of the target
    logit, (H, W) in logit units per unit of normalized input. ``layer`` is ignored.

    >>> saliency(load_model(), "cat.jpg").saliency.shape    # (224, 224)
    """
    model = as_loaded(model)
    x, pixels, name = prepare(model, image)
    with model_lock(model.module), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model.module(xg)
        cls = resolve_target(target, logits.detach())
        (grad,) = torch.autograd.grad(logits[0, cls], xg)
    g = grad[0].detach().float().cpu().numpy()
    return Saliency(
        image=pixels, target=cls, target_label=model.label(cls), top=top_predictions(model, logits.detach()),
        image_name=name, saliency=np.abs(g).max(axis=0), gradient=g,
    )
