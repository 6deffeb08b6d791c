"""Scoped forward hooks: capture named layer outputs and cut the forward pass after the deepest.

Every hook registered here lives inside a ``with`` block and is removed in ``finally``, so a
model leaves a convscope call exactly as it came in, also when the call raises.

Hooks and module swaps act on a module for every caller, so a model shared between threads (a
web server's request threads, a notebook's background job) is used under :func:`model_lock`: one
re-entrant lock per module, held by :func:`capture` for its whole block and by every other
convscope function that hooks, changes or runs a user's model. Another thread then never runs
into hooks that are not its own.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .errors import ConvscopeError, layer_not_run_error, unknown_layer_error


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once the deepest wanted layer has run."""


class _Outputs(dict):
    """A dict that hooks can hold weakly, so a hook never keeps captured tensors alive; ``wanted``
    are the names :func:`run` checks after each forward pass; ``inputs`` holds the inputs of the
    modules :func:`capture` was asked for (``wanted_inputs``)."""

    wanted: tuple[str, ...] = ()
    wanted_inputs: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, torch.Tensor] = {}


class Handles:
    """The one owner of hook handles: ``add`` each handle as it is registered, and leave the
    ``with`` block (or call :meth:`remove`) to take every one off, also after an error.

    >>> with Handles() as handles:
    ...     handles.add(module.register_forward_hook(hook))
    ...     model(x)
    """

    def __init__(self) -> None:
        self._handles: list = []

    def add(self, handle):
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "Handles":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(module: nn.Module) -> threading.RLock:
    """The one lock of ``module``: hold it while hooks are on the module, while any of its
    submodules is swapped or its settings (train mode, ``requires_grad``) are changed, and while
    running it where another thread's hooks could be on it. Re-entrant, so a function holding it
    may call others that take it; it lives as long as the module (a weak reference).

    >>> with model_lock(model.module):
    ...     logits = model.module(x)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"model_lock takes an nn.Module (a LoadedModel's .module), got {type(module).__name__}")
    with _LOCKS_GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


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
    inputs: Sequence[str] = (),
) -> Iterator[dict[str, torch.Tensor]]:
    """Hook ``names`` on ``model``; the yielded dict fills with their outputs on each forward.

    With ``stop=True`` the forward pass is cut once every named layer has produced its output
    (use :func:`run` to call the model; it swallows the cut). ``transform`` may replace a
    layer's output as it is captured (for example to attach a gradient hook). A layer that runs
    twice in one pass raises :class:`ReusedModuleError`. An unknown name raises
    :class:`~convscope.errors.UnknownLayerError` with close matches; :func:`run` raises
    :class:`~convscope.errors.LayerNotRunError` for a named layer that the pass did not reach.
    The block holds :func:`model_lock` of ``model``: other threads wait to hook or run it.
    ``inputs``: modules whose input (the first positional argument) is captured too, into the
    yielded dict's ``inputs`` (an index's embedding is the input of the classifier head), with
    the same checks (use ``stop=False`` where such a module runs after the deepest output).

    >>> with capture(model, ["layer4"], stop=False, inputs=["fc"]) as out:
    ...     logits = run(model, x, out)
    >>> out["layer4"].shape, out.inputs["fc"].shape
    """
    modules = named_modules(model)
    missing = [n for n in (*names, *inputs) if n not in modules]
    if missing:
        raise unknown_layer_error(missing[0], list(modules))
    outputs = _Outputs()
    outputs.wanted = tuple(dict.fromkeys(names))
    outputs.wanted_inputs = tuple(dict.fromkeys(inputs))
    wanted = set(names)
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
                raise _reused(name, _module)
            if transform is not None:
                output = transform(name, output)
            out[name] = output
            if stop and wanted.issubset(out.keys()):
                raise _StopForward
            return output if transform is not None else None

        return hook

    def make_pre_hook(name: str):
        def hook(_module, args):
            out = store()
            if out is None:
                return None
            if name in out.inputs:
                raise _reused(name, _module)
            out.inputs[name] = args[0]
            return None

        return hook

    with model_lock(model), Handles() as handles:
        for name in outputs.wanted:
            handles.add(modules[name].register_forward_hook(make_hook(name)))
        for name in outputs.wanted_inputs:
            handles.add(modules[name].register_forward_pre_hook(make_pre_hook(name)))
        yield outputs


def _reused(name: str, module: nn.Module) -> ReusedModuleError:
    return ReusedModuleError(
        f"layer {name!r} ({type(module).__name__}) runs more than once per forward "
        "pass (a shared module), so its output is ambiguous; pick the block around it "
        "instead (run `convscope layers`)"
    )


def run(model: nn.Module, x: torch.Tensor, outputs: _Outputs) -> torch.Tensor | None:
    """Run ``model(x)`` inside a :func:`capture` block (``outputs``: the dict it yielded); returns
    the logits unless the pass was cut. Raises :class:`~convscope.errors.LayerNotRunError` if a
    captured layer (or module whose input was asked for) did not run."""
    outputs.clear()
    outputs.inputs.clear()
    try:
        logits = model(x)
    except _StopForward:
        logits = None
    for name in outputs.wanted:
        if name not in outputs:
            raise layer_not_run_error(name)
    for name in outputs.wanted_inputs:
        if name not in outputs.inputs:
            raise layer_not_run_error(name)
    return logits


def run_order(model: nn.Module, x: torch.Tensor, kinds: type | tuple[type, ...]) -> list[str]:
    """The names of the submodules of type ``kinds`` in the order they ran in ``model(x)``
    (one probe pass, under :func:`model_lock`, without gradients).

    >>> run_order(resnet, torch.zeros(1, 3, 224, 224), nn.Linear)
    ['fc']
    """
    order: list[str] = []
    chosen = [(n, m) for n, m in named_modules(model).items() if isinstance(m, kinds)]
    if not chosen:
        return order
    with model_lock(model), Handles() as handles, torch.inference_mode():
        for name, m in chosen:
            handles.add(m.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name)))
        model(x)
    return order


def forward_layers(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``names`` for input ``x``, the forward cut after the deepest of them."""
    with capture(model, names) as outputs:
        run(model, x, outputs)
        return dict(outputs)


def hook_count(model: nn.Module) -> int:
    """Number of hooks currently registered anywhere in ``model`` (for tests and sanity checks)."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total
