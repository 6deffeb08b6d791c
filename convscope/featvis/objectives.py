"""Objectives to maximize: what a feature visualization asks of the network.

An :class:`Objective` maps what one forward pass saw (a :class:`Context`) to one value per batch
element, shape (N,). Objectives compose like numbers: ``a + b``, ``a - b``, ``2.0 * a``, ``-a``
and ``sum([...])``. The render loop maximizes the sum of the per-element values; since element
``i``'s value depends only on element ``i`` (except for :func:`diversity`, which is about the
batch), each image gets the gradient it would get alone.

A ``unit`` of ``None`` means "the unit being rendered by this batch element", so one objective
serves any list of units:

>>> obj = channel("blocks.2") - 0.05 * total_variation()
>>> result = render(model, "blocks.2", range(8), objective=obj)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, Sequence

import torch


@dataclasses.dataclass
class Context:
    """What an objective sees at one step.

    ``activations``: layer name -> output (N, C, h, w); ``image``: the parameterized image,
    pixels in [0, 1], (N, 3, H, W), before the random transforms; ``input``: the transformed
    pixels that went into the model (normalized afterwards); ``units``: (N,) long, the unit each
    element renders.
    """

    activations: dict[str, torch.Tensor]
    image: torch.Tensor
    input: torch.Tensor
    units: torch.Tensor

    def layer(self, name: str) -> torch.Tensor:
        try:
            return self.activations[name]
        except KeyError:
            raise KeyError(f"layer {name!r} was not captured; objectives list the layers they need") from None


class Objective:
    """A function ``Context -> (N,)`` values to maximize, with the layers it reads.

    ``layers`` tells the render loop which layers to capture, so it can cut the forward pass
    after the deepest of them.
    """

    def __init__(self, fn: Callable[[Context], torch.Tensor], layers: Sequence[str] = (), name: str = "objective"):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, ctx: Context) -> torch.Tensor:
        value = self.fn(ctx)
        n = ctx.image.shape[0]
        if value.dim() == 0:
            value = value.expand(n)
        return value

    # ---- algebra
    def __add__(self, other):
        if isinstance(other, numbers.Real):
            c = float(other)
            return Objective(lambda ctx: self(ctx) + c, self.layers, f"{self.name} + {c:g}")
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda ctx: self(ctx) + other(ctx), self.layers + other.layers, f"{self.name} + {other.name}")

    def __radd__(self, other):
        if isinstance(other, numbers.Real) and other == 0:  # sum([...]) starts from 0
            return self
        return self.__add__(other)

    def __neg__(self):
        return Objective(lambda ctx: -self(ctx), self.layers, f"-({self.name})")

    def __sub__(self, other):
        if not isinstance(other, (Objective, numbers.Real)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, numbers.Real) or isinstance(other, bool):
            if isinstance(other, Objective):
                raise TypeError("objectives multiply by numbers only; add them with + instead")
            return NotImplemented
        c = float(other)
        return Objective(lambda ctx: c * self(ctx), self.layers, f"{c:g} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(other))

    def __repr__(self):
        return f"Objective({self.name})"


def _units(ctx: Context, unit) -> torch.Tensor:
    if unit is None:
        return ctx.units
    return torch.full_like(ctx.units, int(unit))


def channel(layer: str, unit: int | None = None) -> Objective:
    """Mean over positions of channel ``unit`` of ``layer`` (None: each element's own unit);
    for a layer with (N, C) output, such as the logits, the unit's value itself."""

    def fn(ctx):
        act = ctx.layer(layer)
        idx = torch.arange(act.shape[0], device=act.device)
        picked = act[idx, _units(ctx, unit).to(act.device)]
        return picked if picked.dim() == 1 else picked.mean(dim=(-2, -1))  # (N, C) outputs too

    return Objective(fn, [layer], f"channel({layer!r}, {'unit' if unit is None else unit})")


def neuron(layer: str, unit: int | None = None, y: int | None = None, x: int | None = None) -> Objective:
    """Channel ``unit`` of ``layer`` at one map position (y, x); the centre by default.

    Positions are in the layer's map as the transformed image produces it; with the default
    ``None`` the centre follows the map's size.
    """

    def fn(ctx):
        act = ctx.layer(layer)
        h, w = act.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise ValueError(f"neuron position ({yy}, {xx}) is outside the {h}x{w} map of layer {layer!r}")
        idx = torch.arange(act.shape[0], device=act.device)
        return act[idx, _units(ctx, unit).to(act.device), yy, xx]

    return Objective(fn, [layer], f"neuron({layer!r}, {'unit' if unit is None else unit}, {y}, {x})")


def direction(layer: str, vector) -> Objective:
    """Mean over positions of the activation's projection on ``vector`` (C,), a direction in
    channel space (normalized to unit length); ``channel`` is the one-hot case."""
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()
    norm = float(v.norm())
    if norm == 0:
        raise ValueError("the direction vector is all zeros; give a non-zero vector with one value per channel")
    v = v / norm

    def fn(ctx):
        act = ctx.layer(layer)
        if act.shape[1] != v.numel():
            raise ValueError(f"direction has {v.numel()} values but layer {layer!r} has {act.shape[1]} channels")
        return torch.einsum("nchw,c->n", act, v.to(act)) / (act.shape[-2] * act.shape[-1])

    return Objective(fn, [layer], f"direction({layer!r})")


def diversity(layer: str) -> Objective:
    """How different each element's style is from the rest of the batch (higher: more diverse).

    Minus the mean cosine similarity between this element's Gram matrix of ``layer`` (channels
    x channels, over positions) and the others' (Lucid's ``diversity``, sign flipped so that it is
    maximized; add it, e.g. ``channel(L, 5) + 10 * diversity(L)`` on a batch of one unit
    repeated). Unlike the other objectives it couples the elements of a batch; 0 for a batch of 1.
    """

    def fn(ctx):
        act = ctx.layer(layer)
        n, c = act.shape[:2]
        if n < 2:
            return act.new_zeros(n)
        flat = act.reshape(n, c, -1)
        grams = torch.bmm(flat, flat.transpose(1, 2)).reshape(n, -1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-10)
        sim = grams @ grams.T
        return -(sim.sum(dim=1) - sim.diagonal()) / (n - 1)

    return Objective(fn, [layer], f"diversity({layer!r})")


def total_variation() -> Objective:
    """Penalty: mean absolute difference between neighbouring pixels of the image, in [0, 1]
    pixel units. Subtract it: ``channel(L) - 0.1 * total_variation()``."""

    def fn(ctx):
        img = ctx.image
        dy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return dy + dx

    return Objective(fn, [], "total_variation()")


def l2(constant: float = 0.5) -> Objective:
    """Penalty: root mean square distance of the image's pixels from ``constant`` (grey by
    default), in [0, 1] pixel units. Subtract it: ``channel(L) - 0.1 * l2()``."""

    def fn(ctx):
        return ((ctx.image - constant) ** 2).mean(dim=(1, 2, 3)).sqrt()

    return Objective(fn, [], f"l2({constant:g})")


def as_objective(obj, layer: str) -> Objective:
    """``None`` -> ``channel(layer)``; an :class:`Objective` as is."""
    if obj is None:
        return channel(layer)
    if isinstance(obj, Objective):
        return obj
    raise TypeError(f"objective must be an Objective (see convscope.featvis.objectives), got {type(obj).__name__}")


__all__ = [
    "Context", "Objective", "channel", "neuron", "direction", "diversity", "total_variation", "l2",
    "as_objective",
]
