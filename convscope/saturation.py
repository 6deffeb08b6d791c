"""Saturating activations: which layers end in an activation with a ceiling (ReLU6, Hardtanh,
Sigmoid, Tanh), so that many top values tie at the ceiling, and the pre-activation that ranks
them instead (``scan(..., rank_by="auto")``); the model's health reads the same verdict for its
"saturated" flag (:mod:`convscope.health`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from .errors import unknown_layer_error
from .hooks import Handles, ReusedModuleError, capture, model_lock, run


@dataclasses.dataclass(frozen=True)
class Saturation:
    """A layer whose output is a monotone activation with a ceiling (ReLU6, Hardtanh, Sigmoid...),
    so many top values tie at ``ceiling``: ``activation`` is the dotted name of that module, whose
    *input* is the pre-activation (capture it with a forward pre-hook: :func:`activation_maps`)."""

    layer: str
    activation: str
    type: str
    floor: float
    ceiling: float


def activation_bounds(m: nn.Module) -> tuple[float, float] | None:
    """(floor, ceiling) of a bounded activation module (ReLU6 and other Hardtanh, Sigmoid,
    Hardsigmoid, Tanh, and timm's own Sigmoid/Tanh/HardSigmoid), or None if unbounded (ReLU,
    SiLU...). ``activation_bounds(nn.ReLU6())`` is ``(0.0, 6.0)``."""
    if isinstance(m, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        return float(m.min_val), float(m.max_val)
    if isinstance(m, nn.Tanh):
        return -1.0, 1.0
    if isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)):
        return 0.0, 1.0
    if type(m).__module__.startswith("timm.layers.activations"):
        name = type(m).__name__
        if name == "Tanh":
            return -1.0, 1.0
        if name in ("Sigmoid", "HardSigmoid", "HardSigmoidMe"):
            return 0.0, 1.0
    return None


def saturating_activations(model: nn.Module, layers: Sequence[str], x: torch.Tensor | None = None
                           ) -> dict[str, Saturation | None]:
    """Per layer, its :class:`Saturation` if its output *is* the output of a saturating
    activation (the layer itself, or the module inside it that produced the very tensor it
    returns, as timm's ``BatchNormAct2d.act`` or torchvision's ``Conv2dNormActivation``'s
    ``nn.ReLU6``), else None (a plain ReLU, a block ending in a sum or a BatchNorm, an
    activation that runs more than once in the pass). Decided on one forward pass of ``x``
    (default: one 64 x 64 input of 0.5, of the model's dtype), cut after the deepest layer.

    >>> saturating_activations(timm.create_model("tf_efficientnet_lite0"), ["bn1", "blocks.4"])
    {'bn1': Saturation(layer='bn1', activation='bn1.act', type='ReLU6', floor=0.0, ceiling=6.0), 'blocks.4': None}
    """
    named = dict(model.named_modules())
    for layer in layers:
        if layer not in named or not layer:
            raise unknown_layer_error(layer, [n for n in named if n])
    found = {layer: {f"{layer}.{n}" if n else layer: m for n, m in named[layer].named_modules()
                     if activation_bounds(m) is not None} for layer in layers}
    result: dict[str, Saturation | None] = {layer: None for layer in layers}
    wanted = [layer for layer in layers if found[layer]]
    if not wanted:
        return result
    if x is None:
        p = next(model.parameters(), None)
        x = torch.full((1, 3, 64, 64), 0.5, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    candidates = {name: m for layer in wanted for name, m in found[layer].items()}
    seen: dict[str, list] = {}
    # the activation hooks go on first: a layer may be the activation itself, whose capture hook ends the pass
    try:
        with model_lock(model), Handles() as handles, torch.no_grad():
            for name, m in candidates.items():
                handles.add(m.register_forward_hook(lambda _m, _i, out, name=name: seen.setdefault(name, []).append(out)))
            with capture(model, wanted) as outs:
                run(model, x, outs)
    except ReusedModuleError:
        if len(wanted) == 1:
            return result  # the layer runs twice: its output is not one activation's
        return {**result, **{layer: saturating_activations(model, [layer], x)[layer] for layer in wanted}}
    for layer in wanted:
        hits = [n for n in found[layer] if len(seen.get(n, ())) == 1 and seen[n][0] is outs[layer]]
        if hits:
            floor, ceiling = activation_bounds(candidates[hits[-1]])
            result[layer] = Saturation(layer, hits[-1], type(candidates[hits[-1]]).__name__, floor, ceiling)
    return result


def saturating_activation(model: nn.Module, layer: str, x: torch.Tensor | None = None) -> Saturation | None:
    """:func:`saturating_activations` of one layer.

    >>> saturating_activation(timm.create_model("tf_efficientnet_lite0"), "blocks.5.0.bn1")
    Saturation(layer='blocks.5.0.bn1', activation='blocks.5.0.bn1.act', type='ReLU6', floor=0.0, ceiling=6.0)
    """
    return saturating_activations(model, [layer], x)[layer]


def activation_maps(model: nn.Module, saturation: Saturation, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(post, pre) for the batch ``x``: the layer's output and its activation's input (cloned
    before an in-place activation overwrites it), both (N, C, H, W), without gradients; the
    forward pass is cut after the layer and every hook comes off.

    >>> post, pre = activation_maps(model, saturating_activation(model, "bn2"), x)
    """
    act = dict(model.named_modules())[saturation.activation]
    pre: list[torch.Tensor] = []
    with capture(model, [saturation.layer]) as outs, Handles() as handles, torch.no_grad():
        handles.add(act.register_forward_pre_hook(lambda _m, args: pre.append(args[0].detach().clone())))
        run(model, x, outs)
        post = outs[saturation.layer]
    return post, pre[0]
