"""Projections of layer units back to input pixels: the entry points.

:func:`forward_pass` records one forward pass with the rules of several methods (the hooks of
:func:`~convscope.backproject.core.modified_backward`), :func:`project_methods` /
:func:`project_full` / :func:`project` seed one unit per example and run one backward pass per
method, :func:`check_ranges` says which units and positions a layer has (the picture of a
projection is :func:`convscope.display.to_picture`'s).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConvscopeError
from ..hooks import capture, model_lock, run
from ..runtime import keep_freed_memory
from .core import Rules, _RuleUnit, modified_backward, warn_rules
from .rules import get_rule


class ProjectionError(ConvscopeError, ValueError):
    """A unit, position or input that does not fit the layer or the model."""


@dataclasses.dataclass
class Projection:
    """What :func:`project_full` found.

    ``pixels`` (N, 3, H, W): the projections on the model input (gradient units: change of the
    unit per unit of normalized input); ``positions``: the (y, x) of each example's unit on the
    layer's map; ``activations`` (N,): the unit's value there; ``layer_shape``: (C, H, W) of
    the layer; ``notes``: substitute rules applied (see :class:`ActivationRuleWarning`).
    """

    pixels: torch.Tensor
    units: list[int]
    positions: list[tuple[int, int]]
    activations: torch.Tensor
    layer: str
    layer_shape: tuple[int, int, int]
    method: str
    notes: list[str]


def _module_of(model) -> nn.Module:
    # Not models.as_loaded: wrapping a bare module would run a forward pass (to count its
    # classes) and put it in eval mode, on every batch of projections.
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a LoadedModel or an nn.Module, got {type(model).__name__}")
    return module


def _as_units(units, n: int) -> list[int]:
    if isinstance(units, (int, np.integer)):
        return [int(units)] * n
    if isinstance(units, torch.Tensor):
        units = units.reshape(-1).tolist()
    try:
        out = [int(u) for u in units]
    except (TypeError, ValueError):
        raise ValueError(f"units must be a sequence of {n} channel indices, got {units!r}") from None
    if len(out) != n:
        raise ValueError(f"got {len(out)} units for {n} examples; give one channel index per example")
    return out


def _as_positions(positions, n: int) -> list[tuple[int, int]] | None:
    if positions is None:
        return None
    if isinstance(positions, torch.Tensor):
        positions = positions.reshape(-1, 2).tolist()
    try:
        out = [(int(p[0]), int(p[1])) for p in positions]
        bad = any(len(p) != 2 for p in positions)
    except (TypeError, ValueError, IndexError):
        bad, out = True, []
    if bad:
        raise ValueError(f"positions must be {n} (y, x) pairs, or None for each unit's strongest position")
    if len(out) != n:
        raise ValueError(f"got {len(out)} positions for {n} examples; give one (y, x) per example")
    return out


def check_ranges(layer: str, shape: tuple[int, int, int], units: Sequence[int], positions=None) -> None:
    """Raise :class:`ProjectionError` (one line, with the valid range) for a unit or (y, x) off a
    layer of ``shape`` (C, H, W)."""
    c, h, w = shape
    for u in units:
        if not 0 <= u < c:
            raise ProjectionError(f"unit {u} is out of range: layer {layer!r} has {c} channels, so use 0..{c - 1}")
    for y, x in positions or ():
        if not 0 <= y < h:
            raise ProjectionError(f"y={y} is out of range: layer {layer!r} has a {h}x{w} map, so use y in 0..{h - 1}")
        if not 0 <= x < w:
            raise ProjectionError(f"x={x} is out of range: layer {layer!r} has a {h}x{w} map, so use x in 0..{w - 1}")


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a model input tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")


class ForwardPass:
    """One forward pass with the rules of several methods recorded (see :func:`forward_pass`):
    ``input`` the private leaf the gradients are taken for, ``outputs`` the layers' outputs
    (graph attached), ``rules`` the notes on substitute rules."""

    def __init__(self, x: torch.Tensor, outputs: dict[str, torch.Tensor], rules: Rules):
        self.input, self.outputs, self.rules = x, outputs, rules

    def backward(self, seeds: dict[str, torch.Tensor], method: str, retain: bool = True) -> torch.Tensor:
        """The input gradient (N, C, H, W) of ``sum(seeds[layer] * outputs[layer])`` under
        ``method``'s rule. ``retain``: keep the graph for more backward passes (the last one may
        free it). Each example's seed should be one-hot (a rectifying rule is not linear)."""
        names = [n for n in seeds if self.outputs[n].requires_grad]
        self.rules.use(method)
        if not names:  # the layers do not depend on the input
            return torch.zeros_like(self.input)
        # a layer that ends in an activation: its seeds pass their own unit (see _RuleUnit)
        tops = [(self.outputs[n].grad_fn, seeds[n]) for n in names]
        tops = [(node, seed) for node, seed in tops if isinstance(node, _RuleUnit._backward_cls)]
        try:
            for node, seed in tops:
                node.seed = seed
            grads = torch.autograd.grad(
                [self.outputs[n] for n in names], self.input, grad_outputs=[seeds[n] for n in names],
                retain_graph=retain, allow_unused=True,
            )
        finally:
            for node, _seed in tops:
                node.seed = None
        return torch.zeros_like(self.input) if grads[0] is None else grads[0]


@contextlib.contextmanager
def forward_pass(
    model, x: torch.Tensor, layers: Sequence[str], methods: Sequence[str] = ("deconvnet",), warn: bool = False
) -> Iterator[ForwardPass]:
    """Run ``model`` on ``x`` once, cut after the deepest of ``layers``, with the rules of every
    method in ``methods`` recorded; inside the block, :meth:`ForwardPass.backward` projects any
    seeds on those layers back to the input by any of the methods, as often as wanted. The
    hooks come off when the block ends; notes on substitute rules are in ``.rules``, and issued
    as :class:`ActivationRuleWarning` when the block ends normally if ``warn``.

    >>> with forward_pass(model, x, ["features.10"], ("deconvnet", "guided")) as fp:
    ...     seed = torch.zeros_like(fp.outputs["features.10"]); seed[0, 3, 2, 2] = 1
    ...     d = fp.backward({"features.10": seed}, "deconvnet")
    ...     g = fp.backward({"features.10": seed}, "guided", retain=False)
    """
    keep_freed_memory()  # large gradients reuse freed memory instead of page-faulting (see runtime)
    module = _module_of(model)
    _check_input(x)
    device = getattr(model, "device", None)
    if device is not None:
        x = x.to(device)
    # A private leaf: the caller's tensor gets no grad and is never modified in place.
    x_in = x.detach().clone().requires_grad_(True)
    # the lock first: the rule hooks go on before capture would take it
    with model_lock(module), torch.enable_grad(), modified_backward(module, methods, warn=False) as rules, \
            capture(module, list(layers), stop=True) as outs:
        run(module, x_in, outs)  # raises LayerNotRunError for a layer the pass did not reach
        yield ForwardPass(x_in, dict(outs), rules)
    if warn:
        warn_rules(rules.warnings, stacklevel=3)


def project_methods(
    model,
    x: torch.Tensor,
    layer: str,
    units: Sequence[int] | torch.Tensor,
    positions: Sequence[tuple[int, int]] | None = None,
    methods: Sequence[str] = ("deconvnet", "guided"),
    *,
    _stacklevel: int = 1,
) -> dict[str, Projection]:
    """:func:`project_full` by several methods, sharing one forward pass: ``{method: Projection}``."""
    rules = [get_rule(m) for m in methods]
    _check_input(x)
    n = x.shape[0]
    unit_list = _as_units(units, n)
    pos_list = _as_positions(positions, n)
    result: dict[str, Projection] = {}
    with forward_pass(model, x, [layer], [r.name for r in rules]) as fp:
        out = fp.outputs[layer]
        if out.dim() != 4:
            raise ProjectionError(
                f"layer {layer!r} has output shape {tuple(out.shape[1:])}, not a (C, H, W) map; "
                "pick a convolutional layer (run `convscope layers`)"
            )
        shape = tuple(int(s) for s in out.shape[1:])
        check_ranges(layer, shape, unit_list, pos_list)
        idx = torch.arange(n, device=out.device)
        ch = torch.tensor(unit_list, device=out.device)
        if pos_list is None:
            maps = out.detach()[idx, ch].reshape(n, -1)
            flat = maps.argmax(dim=1)
            ys, xs = flat // shape[2], flat % shape[2]
            pos_list = list(zip(ys.tolist(), xs.tolist()))
        else:
            ys = torch.tensor([p[0] for p in pos_list], device=out.device)
            xs = torch.tensor([p[1] for p in pos_list], device=out.device)
        values = out.detach()[idx, ch, ys, xs].clone()
        seed = torch.zeros_like(out)
        seed[idx, ch, ys, xs] = 1.0
        # One backward per method for all N examples: each seed is one-hot in its own example,
        # and the model in eval mode does not mix examples. Only the input's gradient is computed.
        for k, rule in enumerate(rules):
            grad = fp.backward({layer: seed}, rule.name, retain=k < len(rules) - 1)
            result[rule.name] = Projection(grad.detach(), unit_list, pos_list, values, layer, shape, rule.name, [])
        notes = fp.rules
    for p in result.values():
        p.notes = list(notes.by_method.get(p.method, []))
    warn_rules(notes.warnings, stacklevel=_stacklevel + 1)
    return result


def project_full(
    model,
    x: torch.Tensor,
    layer: str,
    units: Sequence[int] | torch.Tensor,
    positions: Sequence[tuple[int, int]] | None = None,
    method: str = "deconvnet",
    *,
    _stacklevel: int = 1,
) -> Projection:
    """:func:`project`, also returning where each unit was taken and its value (a :class:`Projection`)."""
    rule = get_rule(method)
    return project_methods(model, x, layer, units, positions, [rule.name], _stacklevel=_stacklevel + 1)[rule.name]


def project(
    model,
    x: torch.Tensor,
    layer: str,
    units: Sequence[int] | torch.Tensor,
    positions: Sequence[tuple[int, int]] | None = None,
    method: str = "deconvnet",
) -> torch.Tensor:
    """Project one unit per example of ``layer`` back to the model input; all N in one backward.

    ``model``: a :class:`~convscope.models.LoadedModel` or an ``nn.Module`` in eval mode.
    ``x``: (N, 3, H, W) model input (already normalized; need not require grad). ``layer``: a
    dotted module name. ``units``: N channel indices (or a tensor of N). ``positions``: N
    ``(y, x)`` pairs on the layer's map, or ``None`` for each example's strongest position of its
    channel. ``method``: a key of :data:`METHODS` (``"deconvnet"``, ``"guided"``, ``"gradient"``).

    Returns the raw projection, (N, 3, H, W) in the input's gradient units, on the model's
    device; :func:`convscope.display.to_picture` makes a picture of one. The forward pass stops at ``layer``; no
    gradient is left on the model's parameters, and the model is left as it was.

    >>> pixels = project(model, x, "features.10", units=[3, 7], method="guided")
    """
    return project_full(model, x, layer, units, positions, method, _stacklevel=2).pixels


__all__ = [
    "ForwardPass", "Projection", "ProjectionError", "check_ranges", "forward_pass", "project", "project_full",
    "project_methods",
]
