"""Does a layer's deconvnet projection depend on the image at all?

The deconvnet's backward pass rectifies the signal at every ReLU without looking at the forward
pass (:data:`~convscope.backproject.rules.METHODS`), and convolutions, eval-mode BatchNorm, sums,
average pools and padding are linear with weights that do not depend on the image. So unless
something between the input and the layer routes the backward signal by the forward pass (a
max-pool's switches, a gate's value, a product of two image-dependent values, a normalization by
the image's own statistics), the projection of a unit at a position is one fixed picture,
whatever the photo (Mahendran & Vedaldi 2016, "Salient deconvolutional networks"). EfficientNet
-Lite0 and MobileNetV2 have no such routing; AlexNet, VGG and ResNet's stem max-pool do, and so
do the squeeze-excitation gates of EfficientNet-B0.

:func:`deconvnet_depends_on_image` (:func:`deconvnet_dependence` for several layers) decides it structurally from one small forward pass, cut after
the layer: forward hooks on every module (in a :class:`~convscope.hooks.Handles` list, so they
always come off) keep the stack of running modules, and a ``TorchFunctionMode`` sees every torch
operation whose output depends on the input (the model's parameters are made not to require
gradients for the pass, and restored). Each operation is sorted into linear (no routing), handled
by a deconvnet rule (the rectifiers of :mod:`~convscope.backproject.rules`: their backward is
replaced, so what runs inside them does not count), or routing by the forward pass; an operation
not known to be linear counts as routing, so the detector errs towards "depends" (a wasted
projection per example, never a false claim). :func:`deconvnet_difference` is the empirical check:
two random inputs, the same unit and position, the largest difference of their projections.

:func:`layer_methods` is the one rule of which projection methods a layer gets, used by the atlas
build, ``explain`` (occlusion's panel (c)) and ``convscope project``: where the deconvnet cannot
depend on the image, guided backprop stands in for it, with the reason (``deconvnet="always"``
keeps the deconvnet). The atlas records the outcome per layer, and its reader answers from that
record (:meth:`convscope.atlas.Atlas.methods`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..choices import DECONVNET_MODES
from ..errors import ArgumentError
from ..hooks import Handles, capture, model_lock, run
from .project import check_ranges, project
from .rules import FUNCTIONAL, activation_kind

#: Operations that are linear in the image-dependent tensor (their backward uses no forward value).
_LINEAR = frozenset("""
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear bilinear_ pad
    flatten unflatten adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d avg_pool1d avg_pool2d
    avg_pool3d add add_ __add__ __iadd__ __radd__ sub sub_ __sub__ __isub__ __rsub__ rsub neg __neg__
    mean sum cat concat concatenate stack hstack vstack reshape view view_as permute transpose t
    contiguous __getitem__ split chunk tensor_split squeeze unsqueeze expand expand_as clone to float
    half double bfloat16 type type_as narrow select unbind roll flip repeat repeat_interleave tile
    pixel_shuffle pixel_unshuffle channel_shuffle movedim moveaxis swapaxes diagonal interpolate
    upsample upsample_nearest upsample_bilinear cpu cuda __setitem__ copy_ fill_diagonal_ as_strided
""".split())
#: Products and quotients: linear while at most one factor (the numerator) depends on the image.
_PRODUCTS = frozenset("mul mul_ __mul__ __imul__ __rmul__ multiply matmul __matmul__ mm bmm einsum baddbmm addmm".split())
_QUOTIENTS = frozenset("div div_ __truediv__ __itruediv__ divide true_divide".split())
#: Operations whose ``training`` argument (position, or keyword) makes them random or batch-dependent.
_TRAINING_ARG = {"batch_norm": 5, "dropout": 2, "dropout1d": 2, "dropout2d": 2, "dropout3d": 2,
                 "alpha_dropout": 2, "feature_alpha_dropout": 2}
_GATES = frozenset("sigmoid sigmoid_ tanh tanh_ hardsigmoid softmax log_softmax softmin softsign tanhshrink hardtanh".split())
_NORMS = frozenset("layer_norm group_norm instance_norm local_response_norm normalize rms_norm norm batch_norm".split())
_MAX_POOLS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.fractional_max_pool2d, F.fractional_max_pool3d, F.max_unpool1d, F.max_unpool2d, F.max_unpool3d,
    F.lp_pool1d, F.lp_pool2d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
)
_MAX_POOL_NAMES = frozenset(
    "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices "
    "adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d max_unpool1d max_unpool2d max_unpool3d".split()
)
_BY_VALUE = frozenset("amax amin max min maximum minimum topk sort cummax cummin where clamp clip".split())


@dataclasses.dataclass(frozen=True)
class Switch:
    """One place where the deconvnet's backward signal is routed by the forward pass: ``name``
    the dotted name of the module it happens in (``""``: the model's own forward), ``what`` the
    module type or ``"mul() in SqueezeExcite"``, ``kind`` the sort of routing."""

    name: str
    what: str
    kind: str

    def describe(self) -> str:
        where = f"at {self.name!r}" if self.name else "in the model's forward"
        return f"{self.kind} ({self.what}) {where}"


@dataclasses.dataclass(frozen=True)
class Dependence:
    """What :func:`deconvnet_depends_on_image` found for ``layer``: ``depends`` (also the truth
    value), the ``switches`` between the input and the layer in run order, and ``reason``, one
    sentence for a unit page or ``atlas info``."""

    layer: str
    depends: bool
    switches: tuple[Switch, ...]

    def __bool__(self) -> bool:
        return self.depends

    @property
    def reason(self) -> str:
        if not self.depends:
            return (
                f"no max-pool or other forward-dependent routing between the input and {self.layer!r}: the "
                "deconvnet's backward pass is then the same for every image, so its projection depends only "
                "on the unit and its position (Mahendran & Vedaldi 2016); guided backprop is shown instead"
            )
        shown = "; ".join(s.describe() for s in self.switches[:3])
        more = f"; and {len(self.switches) - 3} more" if len(self.switches) > 3 else ""
        return f"the deconvnet depends on the image through {shown}{more}, between the input and {self.layer!r}"

    def to_dict(self) -> dict:
        """JSON-ready: ``{"layer", "depends", "reason", "switches": [{"name", "what", "kind"}]}``."""
        return {"layer": self.layer, "depends": self.depends, "reason": self.reason,
                "switches": [dataclasses.asdict(s) for s in self.switches]}


def _depends(t) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


def _name(func) -> str:
    return getattr(func, "__name__", "") or type(func).__name__


def _routing(func, args, kwargs) -> str | None:
    """The kind of routing of one image-dependent operation outside the rectifiers, or None if
    it is linear (or a rectifier the deconvnet rule handles)."""
    name = _name(func)
    if func in _MAX_POOLS or name in _MAX_POOL_NAMES:
        return "max-pool switch"
    if func in FUNCTIONAL:  # a functional rectifier: the rule handles it, unless it works in place
        kind, at = FUNCTIONAL[func]
        inplace = at is True or bool(kwargs.get("inplace", False)) or (
            isinstance(at, int) and at is not True and len(args) > at and bool(args[at]))
        return "in-place rectifier, where the deconvnet keeps the forward mask" if inplace else None
    if name in _TRAINING_ARG:
        at = _TRAINING_ARG[name]
        training = kwargs.get("training", args[at] if len(args) > at else name != "batch_norm")
        if not training:
            return None
        return "normalization by the batch's statistics" if name == "batch_norm" else "random mask (training mode)"
    if name in _LINEAR:
        return None
    if name in _BY_VALUE:
        return "routing by value (max, min, sort, clamp)"
    tensors = [a for a in list(args) + list(kwargs.values()) if _depends(a)]
    if name in _PRODUCTS:
        return "product of two image-dependent values" if len(tensors) > 1 else None
    if name in _QUOTIENTS:
        return None if len(args) > 1 and not _depends(args[1]) and "divisor" not in kwargs else "division by an image-dependent value"
    if name in _GATES:
        return "gate"
    if name in _NORMS:
        return "normalization by the image's own statistics"
    return "operation not known to be linear"


class _Watch(TorchFunctionMode):
    """Records the routing operations of one forward pass, attributed to the innermost running module."""

    def __init__(self, stack: list, found: dict):
        super().__init__()
        self.stack, self.found = stack, found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inside = self.stack[-1] if self.stack else ("", None)
        if inside[1] is not None and activation_kind(inside[1]) in ("relu", "clamp", "rectifier"):
            return out  # inside a rectifier module: the deconvnet rule replaces its whole backward
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if not any(_depends(o) for o in outs) or not any(_depends(a) for a in list(args) + list(kwargs.values())):
            return out  # no image-dependent value in or out (a shape, a constant)
        kind = _routing(func, args, kwargs)
        if kind is not None:
            name, module = inside
            leaf = module is not None and next(module.children(), None) is None
            what = type(module).__name__ if leaf else f"{_name(func)}()" + (f" in {type(module).__name__}" if module is not None else "")
            self.found.setdefault((name, kind), Switch(name, what, kind))
        return out


def _trace_switches(module: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, tuple[Switch, ...]]:
    """Per layer, the switches found by the time its output exists (one pass, cut after the deepest)."""
    stack: list[tuple[str, nn.Module]] = []
    found: dict[tuple[str, str], Switch] = {}
    seen: dict[str, tuple[Switch, ...]] = {}

    def make_pre(name: str) -> Callable:
        def pre(m, _args):
            stack.append((name, m))
        return pre

    def post(_m, _args, _out):
        if stack:
            stack.pop()

    def make_seen(name: str) -> Callable:
        def hook(_m, _args, _out):
            seen.setdefault(name, tuple(found.values()))
        return hook

    modules = dict(module.named_modules())
    params = [(p, p.requires_grad) for p in module.parameters()]
    with model_lock(module), Handles() as handles:
        try:
            for p, _ in params:  # only the input requires grad: "requires_grad" means "depends on the image"
                p.requires_grad_(False)
            for name, m in modules.items():
                if name:
                    handles.add(m.register_forward_pre_hook(make_pre(name)))
                    handles.add(m.register_forward_hook(post))
            for name in layers:  # before capture's hooks, whose last one ends the pass
                if name in modules:
                    handles.add(modules[name].register_forward_hook(make_seen(name)))
            with capture(module, layers, stop=True) as outs, torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                with _Watch(stack, found):
                    run(module, leaf, outs)
        finally:
            for p, flag in params:
                p.requires_grad_(flag)
    return seen


def _module_and_size(model, input_size):
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a LoadedModel or an nn.Module, got {type(model).__name__}")
    if input_size is None:
        input_size = getattr(model, "input_size", None) or (224, 224)
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    param = next(module.parameters(), None)
    channels = first.in_channels if first is not None else 3
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return module, (channels, int(input_size[0]), int(input_size[1])), device, dtype


def deconvnet_depends_on_image(model, layer: str, input_size: tuple[int, int] | None = None) -> Dependence:
    """Whether the deconvnet projection of ``layer``'s units depends on the image (see the module
    docstring), decided from the operations that run before the layer's output exists, the
    layer's own included.

    ``model``: a :class:`~convscope.models.LoadedModel` or an ``nn.Module`` in eval mode;
    ``layer``: a dotted module name; ``input_size``: (H, W) of the one forward pass on a constant
    input (default: the model's own input size, 224 x 224 for a bare module; a smaller one is
    faster where the layer still has a map). The model is left as it came (its parameters'
    ``requires_grad`` flags are restored, every hook comes off). Routing computed without
    autograd (under ``no_grad``, or through integer indices) is not seen:
    :func:`deconvnet_difference` confirms a verdict empirically.

    >>> dep = deconvnet_depends_on_image(load_model("torchvision:vgg11", pretrained=False), "features.15")
    >>> bool(dep), dep.switches[0].describe()
    (True, "max-pool switch (MaxPool2d) at 'features.2'")
    """
    return deconvnet_dependence(model, [layer], input_size)[layer]


def deconvnet_dependence(model, layers, input_size: tuple[int, int] | None = None) -> dict[str, Dependence]:
    """:func:`deconvnet_depends_on_image` for several layers at once, on one forward pass cut
    after the deepest: ``{layer: Dependence}``, in the order given.

    >>> deps = deconvnet_dependence(model, model.layers.default, input_size=(64, 64))
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    module, shape, device, dtype = _module_and_size(model, input_size)
    x = torch.full((1, *shape), 0.5, device=device, dtype=dtype)
    seen = _trace_switches(module, layers, x)
    return {name: Dependence(name, bool(seen[name]), seen[name]) for name in layers}


def check_deconvnet(deconvnet: str) -> None:
    """Raise :class:`~convscope.errors.ArgumentError` (one line) unless ``deconvnet`` is one of
    :data:`convscope.choices.DECONVNET_MODES`."""
    if deconvnet not in DECONVNET_MODES:
        raise ArgumentError(f"`deconvnet` must be {' or '.join(map(repr, DECONVNET_MODES))}, got {deconvnet!r}",
                            param="deconvnet")


@dataclasses.dataclass(frozen=True)
class LayerMethods:
    """The projection methods of one layer (:func:`layer_methods`): ``methods`` in the order
    asked, ``dependence`` whether its deconvnet depends on the image, and ``note`` the reason
    guided backprop stands in for the deconvnet (None where it does not)."""

    layer: str
    methods: tuple[str, ...]
    dependence: Dependence
    note: str | None = None


def methods_for(dependence: Dependence, methods: Sequence[str], deconvnet: str = "auto") -> LayerMethods:
    """The rule of :func:`layer_methods` for a layer whose ``dependence`` is known: ``methods``,
    except that with ``deconvnet="auto"`` guided backprop stands in for the deconvnet (once)
    where the deconvnet cannot depend on the image.

    >>> methods_for(Dependence("bn2", False, ()), ("deconvnet", "guided")).methods
    ('guided',)
    """
    check_deconvnet(deconvnet)
    methods = tuple(methods)
    if deconvnet == "always" or dependence.depends or "deconvnet" not in methods:
        return LayerMethods(dependence.layer, methods, dependence)
    shown = tuple(dict.fromkeys("guided" if m == "deconvnet" else m for m in methods))
    return LayerMethods(dependence.layer, shown, dependence, dependence.reason)


def layer_methods(model, layers, methods: Sequence[str] = ("deconvnet", "guided"), deconvnet: str = "auto",
                  input_size: tuple[int, int] | None = None) -> dict[str, LayerMethods]:
    """Which projection methods each of ``layers`` gets, ``{layer: LayerMethods}`` in the order
    given: ``methods``, with guided backprop standing in for the deconvnet where the deconvnet
    cannot depend on the image (:func:`deconvnet_dependence`, one traced forward pass for all
    the layers; ``input_size`` as there), unless ``deconvnet="always"``.

    >>> layer_methods(load_model(), ["bn2"], ("deconvnet",))["bn2"].methods   # EfficientNet-Lite0
    ('guided',)
    """
    check_deconvnet(deconvnet)
    deps = deconvnet_dependence(model, layers, input_size)
    return {name: methods_for(dep, methods, deconvnet) for name, dep in deps.items()}


@dataclasses.dataclass(frozen=True)
class Difference:
    """What :func:`deconvnet_difference` measured: ``difference`` the largest absolute difference
    of the two projections, ``scale`` the largest absolute value of either (0: nothing reached
    the input), ``relative`` their ratio (0 where ``scale`` is 0)."""

    difference: float
    scale: float

    @property
    def relative(self) -> float:
        return self.difference / self.scale if self.scale > 0 else 0.0


def deconvnet_difference(model, layer: str, unit: int = 0, position: tuple[int, int] | None = None,
                         input_size: tuple[int, int] | None = None, method: str = "deconvnet",
                         seed: int = 0) -> Difference:
    """The empirical check of :func:`deconvnet_depends_on_image`: project ``unit`` at ``position``
    (y, x on the layer's map; default: where the unit is strongest on the first input) of two random normal inputs of ``input_size``
    (default: the model's) by ``method``, and compare the two projections.

    >>> deconvnet_difference(model, "blocks.4", input_size=(64, 64)).difference
    0.0
    """
    module, shape, device, dtype = _module_and_size(model, input_size)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *shape), generator=g).to(device=device, dtype=dtype)
    if position is None:  # the unit's strongest position on the first input, so guided backprop reaches it
        with torch.no_grad(), capture(module, [layer]) as outs:
            run(module, x[:1], outs)
            check_ranges(layer, tuple(outs[layer].shape[1:]), [unit])
            unit_map = outs[layer][0, unit]
        flat = int(unit_map.argmax())
        position = (flat // unit_map.shape[1], flat % unit_map.shape[1])
    p = project(module, x, layer, [unit, unit], [position, position], method=method).detach().double()
    return Difference(float((p[0] - p[1]).abs().max()), float(p.abs().max()))


__all__ = ["Dependence", "Difference", "LayerMethods", "Switch", "check_deconvnet", "deconvnet_dependence",
           "deconvnet_depends_on_image", "deconvnet_difference", "layer_methods", "methods_for"]
