"""Projections of one layer unit back to input pixels: deconvnet, guided backprop, plain gradient.

A projection is the input gradient of one unit ``(channel, y, x)`` of a layer's output, computed
with the backward pass of every ReLU-family nonlinearity replaced by a rule (the max-pools keep
their normal backward, so their switches route the signal as in Zeiler & Fergus 2014, and the
convolutions keep theirs, which applies the transposed filters):

=============  ==============================================================================
method         backward of a ReLU ``y = relu(x)`` given the signal ``g`` arriving at ``y``
=============  ==============================================================================
``deconvnet``  ``relu(g)``: the signal is rectified, the forward pass is ignored (Zeiler &
               Fergus 2014, "Visualizing and understanding convolutional networks")
``guided``     ``relu(g) * (x > 0)``: rectified, then the unit's own backward (Springenberg et
               al. 2015, "Striving for simplicity")
``gradient``   ``g * (x > 0)``: unchanged (Simonyan et al. 2014 saliency)
=============  ==============================================================================

Mechanism apart from policy (as zennit): :data:`METHODS` holds the rules, one line each;
:func:`modified_backward` holds the hooks and their lifetime. The rule is installed with forward
hooks on the activation modules only (never full backward hooks, which break on in-place ReLUs):

* deconvnet: a forward pre-hook hands the module a detached alias of its input, so the module's
  own backward is never recorded; the forward hook then re-attaches its output to the input's
  graph through :class:`_SkipUnit`, whose backward is ``relu(g)``. In-place modules work: the
  alias shares storage, and :class:`_SkipUnit` marks the tensor dirty exactly as an in-place op
  would, so the model sees the very same values and aliasing as without convscope.
* guided: the forward hook registers ``tensor.register_hook(relu)`` on the module's output; the
  module's own backward then applies its mask.

Every hook lives inside the ``with`` block and is removed in ``finally``; closures hold the
context's state through weak references. A module that runs several times in one forward pass
(ResNet's ``BasicBlock.relu``) gets the rule at every call.

Activations other than ``nn.ReLU`` get a documented rule, and one :class:`ActivationRuleWarning`
per layer names it:

* clamps that are ReLUs with a ceiling (``ReLU6``, ``Hardtanh(0, max)``): treated as a ReLU.
  deconvnet: ``relu(g)``; guided: ``relu(g)`` then the clamp's own gradient (passes where
  ``0 < x < max``).
* other rectifiers, leaky or smooth (``LeakyReLU``, ``PReLU``, ``ELU``, ``GELU``, ``SiLU``,
  ``Mish``, ``Hardswish``, ``Softplus``, timm's versions): the backward signal is rectified the
  same way. deconvnet: ``relu(g)``; guided: ``relu(g)`` times the unit's own derivative.
* gates and squashing functions (``Sigmoid``, ``Hardsigmoid``, ``Tanh``, ``Hardtanh(-1, 1)``,
  squeeze-excitation gates): no rule; they keep their ordinary gradient.

Functional calls that no module hook can see (``F.relu`` inside a ``forward``) are caught by a
``TorchFunctionMode`` while the forward pass runs, and get the same rules; the one case that
cannot be done exactly, an *in-place* functional call (``F.relu(x, inplace=True)``,
``x.relu_()``) under deconvnet, gets the guided rule instead, with a warning saying so.

The rules act on any backward pass run inside :func:`modified_backward`; :func:`project` is the
usual entry point.

>>> from convscope import load_model
>>> model = load_model("torchvision:alexnet", pretrained=False)
>>> x = torch.randn(2, 3, 112, 112)
>>> pixels = project(model, x, "features.10", units=[3, 7])   # (2, 3, 112, 112)
>>> image = to_image(pixels[0])                                # (112, 112, 3) uint8
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .errors import ConvscopeError
from .hooks import capture, run
from .layers import is_activation


class ActivationRuleWarning(UserWarning):
    """A nonlinearity that is not an ``nn.ReLU`` got a documented substitute rule."""


class ProjectionError(ConvscopeError, ValueError):
    """A unit, position or input that does not fit the layer or the model."""


# --------------------------------------------------------------------------- rules (policy)


def _rectify(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


@dataclasses.dataclass(frozen=True)
class Rule:
    """How a ReLU's backward pass is replaced.

    ``signal`` transforms the backward signal arriving at the unit's output (``None``: no rule,
    the ordinary gradient); ``through_unit`` says whether the unit's own backward (its mask) is
    then applied (guided) or skipped (deconvnet).
    """

    name: str
    signal: Callable[[torch.Tensor], torch.Tensor] | None
    through_unit: bool
    description: str


#: The projection methods, by name: the library and the CLI's ``--method`` choices both read this.
METHODS: dict[str, Rule] = {
    "deconvnet": Rule("deconvnet", _rectify, False, "Zeiler & Fergus (backward signal rectified, forward mask ignored)"),
    "guided": Rule("guided", _rectify, True, "guided backprop (backward signal rectified, then the ReLU's mask)"),
    "gradient": Rule("gradient", None, True, "plain gradient, as in saliency maps (nothing changed)"),
}


def _rule(method: str | Rule) -> Rule:
    if isinstance(method, Rule):
        return method
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown projection method {method!r}; choose one of: {', '.join(METHODS)}") from None


def activation_kind(module: nn.Module) -> str | None:
    """``"relu"``, ``"clamp"`` (ReLU6-like), ``"rectifier"`` (leaky or smooth), ``"gate"``
    (sigmoid/tanh-like, left alone) or ``None`` for a module that is no activation."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
        return "clamp" if float(module.min_val) == 0.0 else "gate"
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Tanhshrink, nn.Softsign)):
        return "gate"
    if not is_activation(module):
        return None
    name = type(module).__name__.lower()
    if "gelu" in name:  # timm's GELUTanh is a rectifier, despite its name
        return "rectifier"
    if "sigmoid" in name or "tanh" in name:
        return "gate"
    return "rectifier"


def _rule_note(where: str, type_name: str, kind: str, rule: Rule) -> str | None:
    if kind == "relu":
        return None
    if kind == "gate":
        return (
            f"{where} is {type_name}, a gate or squashing function, not a rectifier: it keeps its "
            f"ordinary gradient under {rule.name}"
        )
    what = "a ReLU with a ceiling" if kind == "clamp" else "a leaky or smooth rectifier"
    if rule.through_unit:
        own = "its pass-through mask (0 < x < max)" if kind == "clamp" else "its own derivative"
        how = f"backward signal rectified, then {own}"
    else:
        how = "backward signal rectified, its forward ignored, as for a ReLU"
    return f"{where} is {type_name} ({what}), not ReLU: {rule.name} rule applied to it: {how}"


# --------------------------------------------------------------------------- mechanism


class _SkipUnit(torch.autograd.Function):
    """Forward: the unit's output, computed beforehand without autograd. Backward: ``signal(g)``
    straight to the unit's input, skipping the unit's own backward (the deconvnet rule)."""

    @staticmethod
    def forward(ctx, x, out, signal):
        ctx.signal = signal
        # Marking the output dirty (as an in-place op does) returns it without a copy and without
        # making it a view, so later in-place ops on it stay legal. For an in-place unit, `out`
        # is an alias of `x`: `x` itself then carries this node, exactly as after `relu_(x)`.
        if out.data_ptr() == x.data_ptr() and out.shape == x.shape:
            ctx.mark_dirty(x)
            return x
        ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return ctx.signal(grad), None, None


class _State:
    """Per-context bookkeeping; hooks reach it through a weak reference."""

    def __init__(self, rule: Rule, kinds: dict[nn.Module, tuple[str, str]]):
        self.rule = rule
        self.kinds = kinds  # module -> (dotted name, kind)
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {}
        self.depth = 0  # > 0 while an activation module's forward runs
        self.calls: dict[str, int] = {}
        self.noted: set[str] = set()
        self.notes = Notes()
        self.tensor_hooks: list = []

    def note(self, key: str, message: str | None, warn: bool = True) -> None:
        if message is None or key in self.noted:
            return
        self.noted.add(key)
        self.notes.append(message)
        if warn:
            self.notes.warnings.append(message)


class Notes(list):
    """What got a substitute rule, one line per layer; ``.warnings`` are those that are warned."""

    def __init__(self):
        super().__init__()
        self.warnings: list[str] = []


def _warn(messages: Sequence[str], stacklevel: int) -> None:
    for message in messages:
        warnings.warn(message, ActivationRuleWarning, stacklevel=stacklevel + 1)


def _make_hooks(state_ref: "weakref.ref[_State]"):
    def reset(_module, _args):
        # A new forward pass of the root: forget what an interrupted earlier pass left behind.
        state = state_ref()
        if state is not None:
            state.inputs.clear()
            state.depth = 0
            state.calls.clear()

    def pre(module, args):
        state = state_ref()
        if state is None or not args:
            return None
        state.depth += 1
        x = args[0]
        if state.rule.through_unit or not _wants_rule(x) or state.kinds[module][1] == "gate":
            state.inputs.setdefault(module, []).append(None)
            return None
        state.inputs.setdefault(module, []).append(x)
        # The module computes on a detached alias: its own backward is never recorded.
        return (x.detach(),) + tuple(args[1:])

    def post(module, args, output):
        state = state_ref()
        if state is None:
            return None
        state.depth = max(0, state.depth - 1)
        stack = state.inputs.get(module)
        x = stack.pop() if stack else None
        name, kind = state.kinds[module]
        state.calls[name] = state.calls.get(name, 0) + 1
        if state.calls[name] == 2:
            message = f"{name} runs more than once per forward pass; the rule applies at each call"
            state.note(f"reused:{name}", message, warn=False)
        if not isinstance(output, torch.Tensor):
            return None
        if kind == "gate":
            if _wants_rule(output) or x is not None:
                state.note(name, _rule_note(name, type(module).__name__, kind, state.rule))
            return None
        if x is not None:
            state.note(name, _rule_note(name, type(module).__name__, kind, state.rule))
            return _SkipUnit.apply(x, output, state.rule.signal)
        if state.rule.through_unit and _wants_rule(output):
            state.note(name, _rule_note(name, type(module).__name__, kind, state.rule))
            state.tensor_hooks.append(output.register_hook(state.rule.signal))
        return None

    return reset, pre, post


def _wants_rule(x) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()


# Functional rectifiers a forward method may call directly: function -> (kind, position of its
# `inplace` argument, or True for functions that are always in place).
_FUNCTIONAL: dict[Callable, tuple[str, int | bool | None]] = {
    F.relu: ("relu", 1), torch.relu: ("relu", None), torch.Tensor.relu: ("relu", None),
    torch.relu_: ("relu", True), torch.Tensor.relu_: ("relu", True),
    F.relu6: ("clamp", 1),
    F.leaky_relu: ("rectifier", 2), F.leaky_relu_: ("rectifier", True),
    F.elu: ("rectifier", 2), F.elu_: ("rectifier", True),
    F.gelu: ("rectifier", None), F.silu: ("rectifier", 1), F.mish: ("rectifier", 1),
    F.hardswish: ("rectifier", 1), F.softplus: ("rectifier", None),
}


class _FunctionalRules(TorchFunctionMode):
    """Applies the rule to functional rectifier calls made outside any activation module."""

    def __init__(self, state: _State):
        super().__init__()
        self._state = weakref.ref(state)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _FUNCTIONAL.get(func)
        state = self._state()
        if entry is None or state is None or state.depth > 0 or not args or not _wants_rule(args[0]):
            return func(*args, **kwargs)
        kind, inplace_at = entry
        x = args[0]
        inplace = inplace_at is True or bool(kwargs.get("inplace", False))
        if isinstance(inplace_at, int) and inplace_at is not True and len(args) > inplace_at:
            inplace = inplace or bool(args[inplace_at])
        fname = getattr(func, "__name__", str(func))
        rule = state.rule
        where = f"functional {fname}() (called in a forward method, outside any module)"
        if not rule.through_unit and not inplace:
            state.note(f"fn:{fname}", _rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it")
            out = func(x.detach(), *args[1:], **kwargs)
            return _SkipUnit.apply(x, out, rule.signal)
        out = func(*args, **kwargs)
        if rule.through_unit:
            state.note(f"fn:{fname}", _rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it")
        else:
            state.note(
                f"fn:{fname}",
                f"{where} works in place, so {rule.name} cannot skip its mask there: the guided rule "
                "(rectified signal, then its mask) is applied to it instead",
            )
        if isinstance(out, torch.Tensor) and out.requires_grad:
            state.tensor_hooks.append(out.register_hook(rule.signal))
        return out


@contextlib.contextmanager
def modified_backward(model: nn.Module, method: str | Rule = "deconvnet", warn: bool = True) -> Iterator[Notes]:
    """Inside the block, backward passes through ``model`` follow ``method``'s rule (see the
    module docstring). Yields a list that fills with one note per layer that got a substitute
    rule; with ``warn`` they are also issued as :class:`ActivationRuleWarning` when the block ends.

    The forward pass must run inside the block too (the hooks act on it). The model's forward
    values are unchanged; after the block no hook remains, also when it raises.

    >>> with modified_backward(model, "guided") as notes:
    ...     out = model(x.requires_grad_())
    ...     (g,) = torch.autograd.grad(out[0, 3], x)
    """
    rule = _rule(method)
    if rule.signal is None:
        yield Notes()
        return
    kinds = {}
    for name, m in model.named_modules():
        kind = activation_kind(m)
        if kind is not None:
            kinds[m] = (name or type(m).__name__, kind)
    state = _State(rule, kinds)
    reset, pre, post = _make_hooks(weakref.ref(state))
    handles = []
    try:
        handles.append(model.register_forward_pre_hook(reset))
        for m in kinds:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        with _FunctionalRules(state):
            yield state.notes
    finally:
        for h in handles:
            h.remove()
        for h in state.tensor_hooks:
            h.remove()
        state.tensor_hooks.clear()
        state.inputs.clear()
    if warn:  # only after a block that ended normally; the caller's line is where they point
        _warn(state.notes.warnings, stacklevel=3)


# --------------------------------------------------------------------------- projections


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
    module = _module_of(model)
    rule = _rule(method)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a model input tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    n = x.shape[0]
    unit_list = _as_units(units, n)
    pos_list = _as_positions(positions, n)
    device = getattr(model, "device", None)
    if device is not None:
        x = x.to(device)
    # A private leaf: the caller's tensor gets no grad and is never modified in place.
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), modified_backward(module, rule, warn=False) as notes, capture(module, [layer], stop=True) as outs:
        run(module, x_in, outs)
        if layer not in outs:
            raise ConvscopeError(f"layer {layer!r} did not run in the forward pass of this model; run `convscope layers`")
        out = outs[layer]
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
        # One backward for all N examples: each seed is one-hot in its own example, and the
        # model in eval mode does not mix examples. Only the input's gradient is computed.
        if out.requires_grad:
            (grad,) = torch.autograd.grad(out, x_in, grad_outputs=seed, allow_unused=True)
        else:
            grad = None
    _warn(notes.warnings, stacklevel=_stacklevel + 1)
    if grad is None:  # the layer does not depend on the input
        grad = torch.zeros_like(x_in)
    return Projection(grad.detach(), unit_list, pos_list, values, layer, shape, rule.name, list(notes))


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
    device; :func:`to_image` makes a picture of one. The forward pass stops at ``layer``; no
    gradient is left on the model's parameters, and the model is left as it was.

    >>> pixels = project(model, x, "features.10", units=[3, 7], method="guided")
    """
    return project_full(model, x, layer, units, positions, method, _stacklevel=2).pixels


def to_image(projection: torch.Tensor | np.ndarray, scale: float = 0.1) -> np.ndarray:
    """The usual picture of a projection: (3, H, W) -> (H, W, 3) uint8.

    As in the deconvnet and guided-backprop papers' figures: the whole array is centred on its
    mean (drawn as mid-grey, 128), divided by its standard deviation, multiplied by ``scale``
    (0.1: five standard deviations reach black or white) and clipped to [0, 1]. A constant
    projection is plain grey. Colours are those of the model's input channels (RGB).

    >>> to_image(project(model, x, "features.10", [3])[0]).shape
    (112, 112, 3)
    """
    if isinstance(projection, torch.Tensor):
        projection = projection.detach().float().cpu().numpy()
    p = np.asarray(projection, dtype=np.float64)
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 3 or p.shape[0] != 3:
        raise ValueError(f"to_image expects one projection of shape (3, H, W), got {p.shape}")
    p = np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)
    p = p - p.mean()
    std = p.std()
    img = np.full(p.shape, 0.5) if std == 0 else np.clip(0.5 + scale * p / std, 0.0, 1.0)
    return np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)
