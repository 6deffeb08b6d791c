"""The mechanism of the projections: hooks that install a backward rule, and their lifetime.

:func:`modified_backward` hooks the activation modules of a model (a forward pre-hook hands each
one a detached alias of its input; the forward hook re-attaches the output through
:class:`_RuleUnit`, whose backward applies the rule in force when the backward pass runs), and a
``TorchFunctionMode`` (:class:`_FunctionalRules`) does the same for functional rectifier calls.
Every handle lives in a :class:`~convscope.hooks.Handles` list and comes off when the block
ends, also after an error; closures reach the block's state through weak references. The rules
themselves (policy) are in :mod:`convscope.backproject.rules`; see the package docstring.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..hooks import Handles, model_lock
from .rules import FUNCTIONAL, METHODS, ActivationRuleWarning, Rule, activation_kind, get_rule, rectify, rule_note

class _Mode:
    """The rule the next backward pass follows; one per :func:`modified_backward` block, held by
    every node of its graphs, so one forward pass can serve several methods in turn."""

    def __init__(self, rule: Rule):
        self.rule = rule


class _UnitBackward:
    """The unit's own derivative applied to a signal, given what :class:`_RuleUnit` saved: the
    output for ReLU and clamps (exactly PyTorch's own backward kernels), or the derivative
    itself for other rectifiers.

    For a ReLU or a clamp, :meth:`rectified` is the guided rule's step in one pass (``relu(g)``,
    then the unit's mask): ``clamp(g, 0, limit)``, where ``limit`` is +inf where the unit passes
    its signal and 0 where it does not, computed once per forward pass by the unit's own backward
    kernel (on an infinite signal) and kept for the backward passes that follow. The same values
    as the two steps (up to the sign of a zero); the two steps read and wrote every gradient
    twice, 39 % of a whole-input backward pass through EfficientNet's ReLU6s."""

    def __init__(self, kind: str, module: nn.Module | None):
        self.kind = kind
        self.fused = kind in ("relu", "clamp")
        self.hi = (float(getattr(module, "max_val", 6.0)) if module is not None else 6.0) if kind == "clamp" else None

    def __call__(self, g: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.ops.aten.threshold_backward(g, saved, 0)
        if self.kind == "clamp":
            return torch.ops.aten.hardtanh_backward(g, saved, 0.0, self.hi)
        return g * saved

    def limit(self, out: torch.Tensor) -> torch.Tensor:
        """+inf where the unit (its output ``out``) passes a signal, 0 where it does not."""
        inf = torch.full((), float("inf"), dtype=out.dtype, device=out.device).expand_as(out)
        return self(inf, out)

    def rectified(self, g: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """``self(relu(g), out)`` in one pass, given ``limit`` (:meth:`limit` of ``out``)."""
        return torch.clamp(g, torch.zeros((), dtype=g.dtype, device=g.device), limit)


def _unit_backward(kind: str, module: nn.Module | None) -> _UnitBackward:
    return _UnitBackward(kind, module)


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
        seed = getattr(ctx, "seed", None)  # set while this unit's output is being projected
        if rule.signal is rectify and rule.through_unit and ctx.own.fused and seed is None:  # guided, in one pass
            limit = getattr(ctx, "limit", None)
            if limit is None:  # the first guided pass over this forward: kept for the next ones
                (saved,) = ctx.saved_tensors
                limit = ctx.limit = ctx.own.limit(saved)
            return ctx.own.rectified(grad, limit), None, None, None, None
        if rule.signal is not None:
            grad = rule.signal(grad)
        if rule.through_unit:
            (saved,) = ctx.saved_tensors
            through = ctx.own(grad, saved)
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
        self.tensor_hooks = Handles()  # gradient hooks of in-place functional calls

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
                self.note(f"{key}:{rule.name}", rule_note(where, type_name, kind, rule), method=rule.name)

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
        rule = get_rule(method)
        if rule.name not in self._rules:
            if rule.signal is None and not self._rules:
                return  # a plain-gradient block has no rules to switch
            raise ValueError(f"this block was opened for {', '.join(self._rules) or 'gradient'}, not {rule.name!r}")
        self._mode.rule = self._rules[rule.name]


def warn_rules(messages: Sequence[str], stacklevel: int) -> None:
    """Issue each note as an :class:`ActivationRuleWarning`, pointing ``stacklevel`` frames up."""
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


class _FunctionalRules(TorchFunctionMode):
    """Applies the rule to functional rectifier calls made outside any activation module."""

    def __init__(self, state: _State):
        super().__init__()
        self._state = weakref.ref(state)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = FUNCTIONAL.get(func)
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
                    message = rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it"
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
                message = rule_note(where, fname, kind, rule) or f"{where}: {rule.name} rule applied to it"
            else:
                message = (
                    f"{where} works in place, so {rule.name} cannot skip its mask there: the guided rule "
                    "(rectified signal, then its mask) is applied to it instead"
                )
            state.note(f"fn:{fname}:{rule.name}", message, method=rule.name)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            mode = state.mode
            state.tensor_hooks.add(out.register_hook(lambda g: g if mode.rule.signal is None else mode.rule.signal(g)))
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
    values are unchanged; after the block no hook remains, also when it raises. The block holds
    :func:`~convscope.hooks.model_lock` of ``model``.

    >>> with modified_backward(model, ("deconvnet", "guided")) as rules:
    ...     out = model(x.requires_grad_())
    ...     (d,) = torch.autograd.grad(out[0, 3], x, retain_graph=True)
    ...     rules.use("guided")
    ...     (g,) = torch.autograd.grad(out[0, 3], x)
    """
    methods = [method] if isinstance(method, (str, Rule)) else list(method)
    if not methods:
        raise ValueError(f"name at least one projection method: {', '.join(METHODS)}")
    rules = list({r.name: r for r in map(get_rule, methods)}.values())
    # The whole block holds the model's lock: its hooks are on the model, and its forward and
    # backward passes must not run through another thread's hooks (see hooks.model_lock).
    with model_lock(model):
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
        try:
            with Handles() as handles, state.tensor_hooks:
                handles.add(model.register_forward_pre_hook(reset))
                for m in kinds:
                    handles.add(m.register_forward_pre_hook(pre))
                    handles.add(m.register_forward_hook(post))
                with _FunctionalRules(state):
                    yield state.notes
        finally:
            state.inputs.clear()
    if warn:  # only after a block that ended normally; the caller's line is where they point
        warn_rules(state.notes.warnings, stacklevel=3)

__all__ = ["Rules", "modified_backward"]
