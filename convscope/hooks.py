"""Scoped forward hooks: capture named layer outputs and cut the forward pass after the deepest.

Every hook registered here lives inside a ``with`` block and is removed in ``finally``, so a
model leaves a convscope call exactly as it came in, also when the call raises.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import ConvscopeError


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the deepest wanted layer has run."""


class _Outputs(dict):
    """A dict that hooks can hold weakly, so a hook never keeps captured tensors alive."""


class ReusedModuleError(ConvscopeError):
    """A hooked module ran more than once in one forward pass, so its output is ambiguous."""


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    *,
    stop: bool = True,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Hook ``names`` on ``model``; the yielded dict fills with their outputs on each forward.

    With ``stop=True`` the forward pass is cut once every named layer has produced its output
    (use :func:`run` to call the model; it swallows the cut). ``transform`` may replace a
    layer's output as it is captured (for example to attach a gradient hook). A layer that runs
    twice in one pass raises :class:`ReusedModuleError`.
    """
    modules = named_modules(model)
    missing = [n for n in names if n not in modules]
    if missing:
        from .layers import unknown_layer_error

        raise unknown_layer_error(missing[0], list(modules))
    outputs: dict[str, torch.Tensor] = _Outputs()
    wanted = set(names)
    handles = []
    store = weakref.ref(outputs)

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = store()
            if out is None:
                return None
            if not isinstance(output, torch.Tensor):
                raise ConvscopeError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                    "choose a layer from `convscope layers`"
                )
            if name in out:
                raise ReusedModuleError(
                    f"layer {name!r} ({type(_module).__name__}) runs more than once per forward "
                    "pass (a shared module), so its output is ambiguous; pick the block around it "
                    "instead (run `convscope layers`)"
                )
            if transform is not None:
                output = transform(name, output)
            out[name] = output
            if stop and wanted.issubset(out.keys()):
                raise _StopForward
            return output if transform is not None else None

        return hook

    try:
        for name in dict.fromkeys(names):
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def run(model: nn.Module, x: torch.Tensor, outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Run ``model(x)`` inside a :func:`capture` block; returns the logits unless the pass was cut."""
    outputs.clear()
    try:
        return model(x)
    except _StopForward:
        return None


def forward_layers(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``names`` for input ``x``, the forward cut after the deepest of them."""
    with capture(model, names) as outputs:
        run(model, x, outputs)
        result = dict(outputs)
    missing = [n for n in names if n not in result]
    if missing:
        raise ConvscopeError(f"layer {missing[0]!r} did not run in the forward pass of this model")
    return result


def hook_count(model: nn.Module) -> int:
    """Number of hooks currently registered anywhere in ``model`` (for tests and sanity checks)."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total
