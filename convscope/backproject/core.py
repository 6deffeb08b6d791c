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
a forward pre-hook hands the module a detached alias of its input, so the module's own backward
is never recorded; the forward hook then re-attaches its output to the input's graph through
:class:`_RuleUnit`, whose backward applies the rule in force *when the backward pass runs*:
``relu(g)`` straight to the input (deconvnet), or the signal, rectified or not, times the unit's
own derivative (guided, gradient; for ReLUs and clamps computed from the saved output by
PyTorch's own backward kernels, for smooth rectifiers taken at the forward pass). So one
recorded forward pass serves several methods (:func:`forward_pass`, :func:`project_methods`;
``retain_graph`` between their backward passes). In-place modules work: the alias shares
storage, and :class:`_RuleUnit` marks the tensor dirty exactly as an in-place op would, so the
model sees the very same values and aliasing as without convscope.

Every hook lives inside the ``with`` block and is removed in ``finally``; closures hold the
context's state through weak references. A module that runs several times in one forward pass
(ResNet's ``BasicBlock.relu``) gets the rule at every call.

The projected unit's own activation (a layer that ends in one, as timm's ``BatchNormAct2d``)
rectifies its seed but does not mask it under guided backprop: a ReLU6 unit saturated at 6 (most
of EfficientNet's top examples at ``bn2``) would otherwise project to nothing, and below
saturation the mask is 1 there anyway. The plain gradient stays the true gradient.

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


class _Mode:
    """The rule the next backward pass follows; one per :func:`modified_backward` block, held by
    every node of its graphs, so one forward pass can serve several methods in turn."""

    def __init__(self, rule: Rule):
        self.rule = rule


def _unit_backward(kind: str, module: nn.Module | None):
    """The unit's own derivative applied to a signal, given what :class:`_RuleUnit` saved: the
    output for ReLU and clamps (exactly PyTorch's own backward kernels), or the derivative
    itself for other rectifiers."""
    if kind == "relu":
        return lambda g, out: torch.ops.aten.threshold_backward(g, out, 0)
    if kind == "clamp":
        hi = float(getattr(module, "max_val", 6.0)) if module is not None else 6.0
        return lambda g, out: torch.ops.aten.hardtanh_backward(g, out, 0.0, hi)
    return lambda g, deriv: g * deriv


class _RuleUnit(torch.autograd.Function):
    """Forward: the unit's output, computed beforehand without autograd. Backward, by the rule of
    the moment: ``signal(g)`` straight to the unit's input (deconvnet), or the signal then the
    unit's own derivative (guided), or the plain derivative (gradient)."""

    @staticmethod
    def forward(ctx, x, out, mode, own, saved):
        ctx.mode, ctx.own = mode, own
        # Marking the output dirty (as an in-place op does) returns it without a copy and without
        # making it a view, so later in-place ops on it stay legal. For an in-place unit, `out`
        # is an alias of `x`: `x` itself then carries this node, exactly as after `relu_(x)`.
        result = x if out.data_ptr() == x.data_ptr() and out.shape == x.shape else out
        ctx.mark_dirty(result)
        if saved is None:  # the unit's derivative is needed by no method of the block
            ctx.save_for_backward()
        elif saved is out:
            ctx.save_for_backward(result)
        else:
            ctx.save_for_backward(saved)
        return result

    @staticmethod
    def backward(ctx, grad):
        rule = ctx.mode.rule
        if rule.signal is not None:
            grad = rule.signal(grad)
        if rule.through_unit:
            (saved,) = ctx.saved_tensors
            through = ctx.own(grad, saved)
            seed = getattr(ctx, "seed", None)  # set while this unit's output is being projected
            if seed is not None and rule.signal is not None:
                # The projected unit's own mask is not applied to its seed: a ReLU6 saturated at
                # 6 (most of EfficientNet's top examples) would otherwise project to nothing.
                through = torch.where(seed != 0, grad, through)
            grad = through
        return grad, None, None, None, None


class _State:
    """Per-context bookkeeping; hooks reach it through a weak reference."""

    def __init__(self, rules: Sequence[Rule], kinds: dict[nn.Module, tuple[str, str]]):
        self.rules = list(rules)
        self.mode = _Mode(self.rules[0])
        self.through_unit = any(r.through_unit for r in self.rules)
        self.kinds = kinds  # module -> (dotted name, kind)
        self.inputs: dict[nn.Module, list[torch.Tensor]] = {}
        self.depth = 0  # > 0 while an activation module's forward runs
        self.calls: dict[str, int] = {}
        self.noted: set[str] = set()
        self.notes = Rules(self.mode, self.rules)
        self.tensor_hooks: list = []

    def note(self, key: str, message: str | None, warn: bool = True, method: str | None = None) -> None:
        if message is None or key in self.noted:
            return
        self.noted.add(key)
        self.notes.append(message)
        for name in [method] if method else [r.name for r in self.rules]:
            self.notes.by_method.setdefault(name, []).append(message)
        if warn:
            self.notes.warnings.append(message)

    def note_rules(self, key: str, where: str, type_name: str, kind: str) -> None:
        for rule in self.rules:
            if rule.signal is not None:
                self.note(f"{key}:{rule.name}", _rule_note(where, type_name, kind, rule), method=rule.name)

    def derivative(self, kind: str, module: nn.Module | None, fn, x: torch.Tensor, out: torch.Tensor):
        """What :class:`_RuleUnit` saves for the unit's own derivative, or None if unneeded."""
        if not self.through_unit:
            return None
        if kind in ("relu", "clamp"):
            return out
        self.depth += 1  # the functional calls inside are this unit's own, not new units
        try:
            with torch.enable_grad():  # a smooth or leaky rectifier: its elementwise derivative at x
                leaf = x.detach().requires_grad_(True)
                y = fn(leaf * 1.0)  # a non-leaf copy, so in-place functions may run on it
                (deriv,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        finally:
            self.depth -= 1
        return deriv


class Rules(list):
    """What :func:`modified_backward` yields: the notes on substitute rules (one line per layer
    and method; ``.warnings`` are those that are warned), and, for a block opened with several
    methods, :meth:`use` to pick the rule of the next backward pass over the same forward."""

    def __init__(self, mode: _Mode | None = None, rules: Sequence[Rule] = ()):
        super().__init__()
        self.warnings: list[str] = []
        self.by_method: dict[str, list[str]] = {}  # the notes that concern each method
        self._mode = mode
        self._rules = {r.name: r for r in rules}

    @property
    def method(self) -> str | None:
        return self._mode.rule.name if self._mode is not None else None

    def use(self, method: str | Rule) -> None:
        rule = _rule(method)
        if rule.name not in self._rules:
            if rule.signal is None and not self._rules:
                return  # a plain-gradient block has no rules to switch
            raise ValueError(f"this block was opened for {', '.join(self._rules) or 'gradient'}, not {rule.name!r}")
        self._mode.rule = self._rules[rule.name]



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
        if not _wants_rule(x) or state.kinds[module][1] == "gate":
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
                state.note_rules(name, name, type(module).__name__, kind)
            return None
        if x is None:
            return None
        state.note_rules(name, name, type(module).__name__, kind)
        saved = state.derivative(kind, module, module.forward, x, output)
        return _RuleUnit.apply(x, output, state.mode, _unit_backward(kind, module), saved)

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
        where = f"functional {fname}() (called in a forward method, outside any module)"
        if not inplace:
            for rule in state.rules:
                if rule.signal is not None:
                    message = _rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it"
                    state.note(f"fn:{fname}:{rule.name}", message, method=rule.name)
            out = func(x.detach(), *args[1:], **kwargs)
            saved = state.derivative(kind, None, lambda t: func(t, *args[1:], **kwargs), x, out)
            return _RuleUnit.apply(x, out, state.mode, _unit_backward(kind, None), saved)
        # In place: the call must run on x itself, so its own backward (its mask) is recorded and
        # cannot be skipped; the signal is rectified before it (the guided rule).
        out = func(*args, **kwargs)
        for rule in state.rules:
            if rule.signal is None:
                continue
            if rule.through_unit:
                message = _rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it"
            else:
                message = (
                    f"{where} works in place, so {rule.name} cannot skip its mask there: the guided rule "
                    "(rectified signal, then its mask) is applied to it instead"
                )
            state.note(f"fn:{fname}:{rule.name}", message, method=rule.name)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            mode = state.mode
            state.tensor_hooks.append(out.register_hook(lambda g: g if mode.rule.signal is None else mode.rule.signal(g)))
        return out


@contextlib.contextmanager
def modified_backward(
    model: nn.Module, method: str | Rule | Sequence[str | Rule] = "deconvnet", warn: bool = True
) -> Iterator[Rules]:
    """Inside the block, backward passes through ``model`` follow ``method``'s rule (see the
    module docstring). Yields a list (:class:`Rules`) that fills with one note per layer that
    got a substitute rule; with ``warn`` they are also issued as :class:`ActivationRuleWarning`
    when the block ends.

    ``method`` may name several methods: the forward pass is then recorded once, and
    ``rules.use(name)`` picks the rule of each backward pass over it (``retain_graph=True``
    between them). The first method is in force until then.

    The forward pass must run inside the block too (the hooks act on it). The model's forward
    values are unchanged; after the block no hook remains, also when it raises.

    >>> with modified_backward(model, ("deconvnet", "guided")) as rules:
    ...     out = model(x.requires_grad_())
    ...     (d,) = torch.autograd.grad(out[0, 3], x, retain_graph=True)
    ...     rules.use("guided")
    ...     (g,) = torch.autograd.grad(out[0, 3], x)
    """
    methods = [method] if isinstance(method, (str, Rule)) else list(method)
    if not methods:
        raise ValueError(f"name at least one projection method: {', '.join(METHODS)}")
    rules = list({r.name: r for r in map(_rule, methods)}.values())
    if all(r.signal is None for r in rules):
        yield Rules()
        return
    kinds = {}
    for name, m in model.named_modules():
        kind = activation_kind(m)
        if kind is not None:
            kinds[m] = (name or type(m).__name__, kind)
    state = _State(rules, kinds)
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
    from .runtime import keep_freed_memory

    keep_freed_memory()  # large gradients reuse freed memory instead of page-faulting (see runtime)
    module = _module_of(model)
    _check_input(x)
    device = getattr(model, "device", None)
    if device is not None:
        x = x.to(device)
    # A private leaf: the caller's tensor gets no grad and is never modified in place.
    x_in = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), modified_backward(module, methods, warn=False) as rules, capture(module, list(layers), stop=True) as outs:
        run(module, x_in, outs)
        for layer in layers:
            if layer not in outs:
                raise ConvscopeError(f"layer {layer!r} did not run in the forward pass of this model; run `convscope layers`")
        yield ForwardPass(x_in, dict(outs), rules)
    if warn:
        _warn(rules.warnings, stacklevel=3)


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
    rules = [_rule(m) for m in methods]
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
    _warn(notes.warnings, stacklevel=_stacklevel + 1)
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
    rule = _rule(method)
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
