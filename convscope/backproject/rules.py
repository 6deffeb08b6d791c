"""The backward rules (policy), one line each, and which modules and functions they act on.

A :class:`Rule` says how a ReLU's backward pass is replaced; :data:`METHODS` names the three the
library and the CLI's ``--method`` choices both read. :func:`activation_kind` sorts activation
modules (and :data:`FUNCTIONAL` functional calls) into the kinds that get a rule, and
:func:`rule_note` writes the sentence that tells a user which substitute rule a non-ReLU got.
The hooks that apply the rules are in :mod:`convscope.backproject.core`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..choices import PROJECTION_METHODS, keyed
from ..errors import unknown_name_error
from ..layers import is_activation


class ActivationRuleWarning(UserWarning):
    """A nonlinearity that is not an ``nn.ReLU`` got a documented substitute rule."""


def rectify(grad: torch.Tensor) -> torch.Tensor:
    """The deconvnet's and guided backprop's signal rule: ``relu(grad)``."""
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


#: The projection methods, by name, keyed by :data:`convscope.choices.PROJECTION_METHODS` (their
#: descriptions), which the CLI's ``--method`` choices read.
METHODS: dict[str, Rule] = {
    name: Rule(name, signal, through_unit, PROJECTION_METHODS[name])
    for name, (signal, through_unit) in keyed(PROJECTION_METHODS, {
        "deconvnet": (rectify, False), "guided": (rectify, True), "gradient": (None, True),
    }).items()
}


def get_rule(method: str | Rule) -> Rule:
    """The :class:`Rule` of a method name (a key of :data:`METHODS`); a Rule is returned as it is."""
    if isinstance(method, Rule):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    raise unknown_name_error("projection method", method, METHODS, list_all=True)


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


#: Functional rectifiers a forward method may call directly: function -> (kind, position of its
#: ``inplace`` argument, or True for functions that are always in place).
FUNCTIONAL: dict[Callable, tuple[str, int | bool | None]] = {
    F.relu: ("relu", 1), torch.relu: ("relu", None), torch.Tensor.relu: ("relu", None),
    torch.relu_: ("relu", True), torch.Tensor.relu_: ("relu", True),
    F.relu6: ("clamp", 1),
    F.leaky_relu: ("rectifier", 2), F.leaky_relu_: ("rectifier", True),
    F.elu: ("rectifier", 2), F.elu_: ("rectifier", True),
    F.gelu: ("rectifier", None), F.silu: ("rectifier", 1), F.mish: ("rectifier", 1),
    F.hardswish: ("rectifier", 1), F.softplus: ("rectifier", None),
}


def rule_note(where: str, type_name: str, kind: str, rule: Rule) -> str | None:
    """The one-line note for an activation of ``kind`` under ``rule`` (None for a plain ReLU)."""
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


__all__ = ["FUNCTIONAL", "METHODS", "ActivationRuleWarning", "Rule", "activation_kind", "get_rule", "rectify", "rule_note"]
