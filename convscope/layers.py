"""Layer catalogue: the modules worth visualizing, with output shape, stride and receptive field.

Geometry is measured, not looked up, so it holds for any architecture: on a private copy of the
model whose weights are made positive, whose normalizations are neutral, whose elementwise
nonlinearities are identities and whose max-pools are average pools (so no path is cut), the
input gradient of the centre unit is nonzero exactly on the pixels that unit can see: its
bounding box is the receptive field. The cumulative stride is how much a map grows when the input
grows. The user's model is never touched: all of this happens on a deep copy.

Default selection rule (:func:`default_layers`): a layer is *post-activation* if it is an
activation module, or a module that contains one (a ResNet block, a timm ``BatchNormAct2d``, an
EfficientNet stage). A *block* is such a module made of other modules, other than a norm+activation
wrapper. Among the post-activation layers with a map larger than 1x1, the default selection is:
the first one (edges and colours), the last one (the deepest map before pooling), and for every
cumulative stride the last block at that stride (each stage's output), or the last
post-activation layer at that stride where no block has it.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import html
import json
import os
import warnings
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .errors import UnknownLayerError, unknown_layer_error
from .files import cache_dir, write_text_atomic
from .hooks import Handles, capture, model_lock, run

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
    nn.Softplus, nn.Tanhshrink,
)
_POOLS_MAX = (nn.MaxPool2d,)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class FixedInputSizeWarning(UserWarning):
    """The model does not run at a larger input, so strides were estimated from map sizes."""


def is_activation(module: nn.Module) -> bool:
    if isinstance(module, ACTIVATIONS):
        return True
    # timm wraps activations in its own classes (Swish, GELU, ...) and fuses norm+act modules.
    mod = type(module).__module__
    return mod.startswith("timm.layers.activations")


def _act_like(module: nn.Module) -> bool:
    return is_activation(module) or type(module).__module__.startswith("timm.layers.norm_act")


def contains_activation(module: nn.Module) -> bool:
    return any(is_activation(m) for m in module.modules())


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer: ``shape`` is (C, H, W) at the model's input size; ``stride`` and
    ``receptive_field`` in input pixels; ``offset`` is the top-left of unit (0, 0)'s field
    (negative where it reaches into the padding)."""

    name: str
    type: str
    shape: tuple[int, int, int]
    stride: tuple[int, int]
    receptive_field: tuple[int, int]
    offset: tuple[int, int]
    default: bool = False
    post_activation: bool = False

    @property
    def channels(self) -> int:
        return self.shape[0]

    def box(self, y: int, x: int, input_size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """Receptive-field box ``(top, left, bottom, right)`` (bottom/right exclusive) of unit
        ``(y, x)`` on the model input, clipped to ``input_size`` when given."""
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        bottom, right = top + self.receptive_field[0], left + self.receptive_field[1]
        if input_size is not None:
            top, left = max(top, 0), max(left, 0)
            bottom, right = min(bottom, input_size[0]), min(right, input_size[1])
        return (top, left, bottom, right)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape),
            "stride": self.stride[0] if self.stride[0] == self.stride[1] else list(self.stride),
            "receptive_field": (
                self.receptive_field[0]
                if self.receptive_field[0] == self.receptive_field[1]
                else list(self.receptive_field)
            ),
            "offset": list(self.offset),
            "default": self.default,
        }


class LayerCatalogue(Sequence[LayerInfo]):
    """Ordered (execution order) list of :class:`LayerInfo`; index by position or name.

    Shapes, strides and the default selection come from two cheap forward passes; receptive
    fields are probed on first use of a layer (a few layers at a time), and remembered on disk
    under ``$CONVSCOPE_CACHE`` (default ``~/.cache/convscope``) per architecture and input size.
    """

    def __init__(self, records: list[dict], input_size: tuple[int, int], notes: list[str] | None = None,
                 geometry: dict | None = None, model: nn.Module | None = None, device="cpu", cache_key: str | None = None):
        self._records = records
        self._by_name = {r["name"]: r for r in records}
        self._geometry: dict[str, tuple] = dict(geometry or {})
        self._model = weakref.ref(model) if model is not None else None
        self._device = device
        self._cache_key = cache_key
        self.input_size = tuple(input_size)
        self.notes = notes or []
        if cache_key:
            self._geometry.update(_read_cache(cache_key))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.get(key)
        if isinstance(key, slice):
            recs = self._records[key]
            self._ensure([r["name"] for r in recs])
            return [self._info(r["name"]) for r in recs]
        return self.get(self._records[key]["name"])

    def __iter__(self):
        self._ensure(self.names)
        return (self._info(r["name"]) for r in self._records)

    def __contains__(self, name) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [r["name"] for r in self._records]

    @property
    def default(self) -> list[str]:
        return [r["name"] for r in self._records if r["default"]]

    def shape(self, name: str) -> tuple[int, int, int]:
        """(C, H, W) of a layer without probing its receptive field."""
        return self._record(name)["shape"]

    def get(self, name: str) -> LayerInfo:
        self._record(name)
        self._ensure([name])
        return self._info(name)

    def select(self, names: Sequence[str] | str | None) -> list[LayerInfo]:
        """Layers by name (a list or a comma-separated string); ``None`` or ``"default"`` gives the
        default selection, ``"all"`` every layer. Returned in execution order."""
        if names is None or names == "default":
            chosen = set(self.default)
        elif names == "all":
            chosen = set(self.names)
        else:
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
            chosen = {self._record(n)["name"] for n in names}
        ordered = [n for n in self.names if n in chosen]
        self._ensure(ordered)
        return [self._info(n) for n in ordered]

    def to_list(self) -> list[dict]:
        return [layer.to_dict() for layer in self]

    def to_json(self) -> str:
        return json.dumps(self.to_list())

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("name", "type", "shape", "stride", "receptive field", "default"))
        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    layer.name,
                    layer.type,
                    "x".join(map(str, layer.shape)),
                    layer.stride[0],
                    layer.receptive_field[0],
                    "yes" if layer.default else "",
                )
            )
            + "</tr>"
            for layer in self
        )
        return f"<table><tr>{head}</tr>{rows}</table>"

    # ------------------------------------------------------------------ internals

    def _record(self, name: str) -> dict:
        try:
            return self._by_name[name]
        except KeyError:
            raise unknown_layer_error(name, self._by_name) from None

    def _info(self, name: str) -> LayerInfo:
        r = self._by_name[name]
        stride, rf, offset = self._geometry[name]
        return LayerInfo(
            name=name, type=r["type"], shape=r["shape"], stride=tuple(stride), receptive_field=tuple(rf),
            offset=tuple(offset), default=r["default"], post_activation=r["post_activation"],
        )

    def _ensure(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self._geometry]
        if not missing:
            return
        model = self._model() if self._model is not None else None
        if model is None:
            raise RuntimeError("the model of this layer catalogue is gone; load it again")
        records = [self._by_name[n] for n in missing]
        strides = {r["name"]: r["stride"] for r in records}
        self._geometry.update(_probe_geometry(model, records, strides, self.input_size, self._device, 1024))
        if self._cache_key:
            _write_cache(self._cache_key, self._geometry)

    @classmethod
    def probe(
        cls,
        model: nn.Module,
        input_size: tuple[int, int] = (224, 224),
        device: torch.device | str = "cpu",
        cache: bool = True,
    ) -> "LayerCatalogue":
        """Catalogue every 4-D output of ``model`` at ``input_size`` (see the module docstring)."""
        input_size = tuple(int(s) for s in input_size)
        records, notes = _trace(model, input_size, device)
        # Cumulative stride from how each map grows when the input grows by `delta` pixels.
        delta = 64
        larger = (input_size[0] + delta, input_size[1] + delta)
        try:
            bigger, _ = _trace(model, larger, device)
            grown = {r["name"]: r["shape"] for r in bigger}
        except (RuntimeError, ValueError, AssertionError) as exc:
            # A model that takes one input size only: a Linear after a flatten meets the wrong
            # width (RuntimeError: shapes cannot be multiplied), a view/reshape does not fit
            # (RuntimeError), or the model checks the size itself (timm's patch embeddings
            # assert it; other code raises ValueError). Estimate the strides from the map sizes.
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            warnings.warn(
                f"{type(model).__name__} does not run at {larger[0]}x{larger[1]} ({type(exc).__name__}: {reason}); "
                f"the layers' strides are estimated from their map sizes at {input_size[0]}x{input_size[1]}",
                FixedInputSizeWarning, stacklevel=2,
            )
            grown = {
                r["name"]: (r["shape"][0],) + tuple(
                    s + round(delta * s / i) if s > 1 else s for s, i in zip(r["shape"][1:], input_size)
                )
                for r in records
            }
        for r in records:
            g = grown.get(r["name"], r["shape"])
            dy, dx = g[1] - r["shape"][1], g[2] - r["shape"][2]
            r["stride"] = (
                max(1, round(delta / dy)) if dy > 0 else 0,
                max(1, round(delta / dx)) if dx > 0 else 0,
            )
        fixed = [r for r in records if 0 in r["stride"] and r["shape"][1] * r["shape"][2] > 1]
        for r in fixed:
            notes.append(
                f"{r['name']} ({r['type']}) is left out: its map size is fixed whatever the input "
                "(an adaptive pool), so its units have no stable receptive field"
            )
        records = [r for r in records if r not in fixed]
        chosen = set(default_layers(records))
        for r in records:
            r["default"] = r["name"] in chosen
        key = _cache_key(model, input_size) if cache else None
        return cls(records, input_size, notes, model=model, device=device, cache_key=key)


def _cache_dir() -> Path:
    return cache_dir("layers")


def _cache_key(model: nn.Module, input_size) -> str:
    h = hashlib.sha256()
    h.update(f"v1|{type(model).__module__}.{type(model).__qualname__}|{input_size}".encode())
    for name, m in model.named_modules():
        h.update(f"|{name}:{type(m).__name__}:{m.extra_repr()}".encode())
    for name, t in model.state_dict().items():
        h.update(f"|{name}{tuple(t.shape)}".encode())
    return h.hexdigest()[:24]


def _read_cache(key: str) -> dict:
    try:
        data = json.loads((_cache_dir() / f"{key}.json").read_text())
        return {k: (tuple(v[0]), tuple(v[1]), tuple(v[2])) for k, v in data.items()}
    except (OSError, ValueError, TypeError, IndexError):
        return {}


def _write_cache(key: str, geometry: dict) -> None:
    try:
        write_text_atomic(_cache_dir() / f"{key}.json", json.dumps({k: [list(a) for a in v] for k, v in geometry.items()}))
    except OSError:  # a read-only home is no reason to fail; the cache is an optimisation
        pass


def default_layers(layers: Sequence) -> list[str]:
    """The documented default rule (module docstring) on layers in execution order (LayerInfo
    objects or the catalogue's records, with name, shape, stride, post_activation, block)."""
    get = (lambda o, k: o[k]) if layers and isinstance(layers[0], dict) else getattr
    cands = [o for o in layers if get(o, "post_activation") and get(o, "shape")[1] * get(o, "shape")[2] > 1]
    if not cands:
        cands = [o for o in layers if get(o, "shape")[1] * get(o, "shape")[2] > 1]
    if not cands:
        return []
    chosen = {get(cands[0], "name"), get(cands[-1], "name")}
    last_any: dict[tuple, str] = {}
    last_block: dict[tuple, str] = {}
    for o in cands:
        stride = tuple(get(o, "stride"))
        last_any[stride] = get(o, "name")
        if _get_block(o, get):
            last_block[stride] = get(o, "name")
    for stride, name in last_any.items():
        chosen.add(last_block.get(stride, name))
    return [get(o, "name") for o in layers if get(o, "name") in chosen]


def _get_block(o, get) -> bool:
    try:
        return bool(get(o, "block"))
    except (KeyError, AttributeError):
        return False


def _trace(model: nn.Module, input_size, device) -> tuple[list[dict], list[str]]:
    """One forward pass recording each named module's 4-D tensor output, in execution order.

    A module that runs more than once (a shared ReLU) is left out with a note; of several
    modules returning the very same tensor (a Sequential around one block) the outermost keeps
    the name, since stage names read best.
    """
    calls: dict[str, int] = {}
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}
    modules = {name: m for name, m in model.named_modules() if name}

    def make(name):
        def hook(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor) and out.dim() == 4 and calls[name] == 1:
                outputs[name] = out
                order.append(name)

        return hook

    with model_lock(model), Handles() as handles:
        for name, m in modules.items():
            handles.add(m.register_forward_hook(make(name)))
        with torch.no_grad():
            x = torch.zeros(1, 3, *input_size, device=device)
            model(x)
    notes = []
    reused = {n for n, c in calls.items() if c > 1}
    for n in sorted(reused):
        if n in outputs:
            notes.append(
                f"{n} ({type(modules[n]).__name__}) runs {calls[n]} times per forward pass and is "
                "left out; its output is ambiguous (use the block around it)"
            )
    # Execution order is the order of *first* hook firing; containers fire after their children.
    # Sort by when each module's output was produced and collapse identical tensors.
    seen_by_id: dict[int, int] = {}
    records: list[dict] = []
    for name in order:
        if name in reused:
            continue
        out = outputs[name]
        rec = {
            "name": name,
            "type": type(modules[name]).__name__,
            "shape": tuple(int(s) for s in out.shape[1:]),
            "post_activation": contains_activation(modules[name]),
            # a block: a module made of others, not just a norm+activation wrapper
            "block": any(True for _ in modules[name].children()) and not _act_like(modules[name]),
        }
        key = id(out)
        if key in seen_by_id and records[seen_by_id[key]]["name"].startswith(name + "."):
            # the same tensor as a module inside this one (a Sequential's last block): keep
            # the outer name, since stage names read best
            idx = seen_by_id[key]
            inner = records[idx]
            rec["post_activation"] = rec["post_activation"] or inner["post_activation"]
            rec["block"] = rec["block"] or inner["block"]
            records[idx] = rec
        else:
            seen_by_id[key] = len(records)
            records.append(rec)
    del outputs
    return records, notes


def _probe_copy(model: nn.Module) -> nn.Module:
    """A deep copy in which every path from input to output carries a positive gradient."""
    probe = copy.deepcopy(model).float().eval()
    for p in probe.parameters():
        p.requires_grad_(False)
    for name, m in list(probe.named_modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            w = m.weight
            fan_in = max(1, w[0].numel())
            w.data.fill_(1.0 / fan_in)
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                m.weight.data.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.data.zero_()
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        else:
            # Any other weight-bearing leaf (layer scale, custom convs): make it positive.
            for p in m.parameters(recurse=False):
                p.data.abs_().add_(1e-3)
    # Replace max-pools and elementwise nonlinearities, which would route or cut gradients.
    for name, m in list(probe.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, _POOLS_MAX):
                setattr(
                    m,
                    child_name,
                    nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode, count_include_pad=True),
                )
                if child.dilation not in (1, (1, 1)):
                    setattr(m, child_name, _DilatedAvg(child))
            elif is_activation(child):
                setattr(m, child_name, nn.Identity())
    # timm's norm+act modules hold their activation as an attribute `act`, replaced above; some
    # models call activations functionally, which the probe cannot see but which do not change
    # geometry unless they saturate (weights are scaled to keep values near 1).
    return probe


class _DilatedAvg(nn.Module):
    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        k = pool.kernel_size if isinstance(pool.kernel_size, tuple) else (pool.kernel_size,) * 2
        self.k, self.stride, self.padding, self.dilation = k, pool.stride, pool.padding, pool.dilation
        self.ceil = pool.ceil_mode

    def forward(self, x):
        w = torch.ones(x.shape[1], 1, *self.k, device=x.device, dtype=x.dtype) / (self.k[0] * self.k[1])
        return nn.functional.conv2d(x, w, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=x.shape[1])


def _support_box(grad: torch.Tensor) -> tuple[int, int, int, int] | None:
    mask = grad.abs().sum(0) > 0
    ys = torch.nonzero(mask.any(1)).flatten()
    xs = torch.nonzero(mask.any(0)).flatten()
    if len(ys) == 0:
        return None
    return int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1


def _probe_geometry(model, records, strides, input_size, device, max_size):
    """Per layer: (stride, receptive field, offset), from the input gradient of its centre unit.

    Probing starts small (cheap) and doubles the input for the layers whose centre unit's field
    still touches the border. Sizes stay multiples of 32 so that TensorFlow-style "same" padding
    puts fields where it does at the model's own size.
    """
    with model_lock(model):  # a copy made while another thread's hooks are on would copy them too
        probe = _probe_copy(model).to(device)
    result: dict[str, tuple] = {}
    pending = []
    H, W = input_size
    for r in records:
        sy, sx = strides[r["name"]]
        if sy and sx:
            pending.append(r["name"])
        else:  # a global map (1x1 whatever the input): it sees everything
            result[r["name"]] = ((H, W), (H, W), (0, 0))
    size = 64
    while pending:
        budget = max(1, (32 * 224 * 224) // (size * size))  # images per chunk, bounded memory
        still = []
        last = size >= max_size
        for i in range(0, len(pending), budget):
            group = pending[i : i + budget]
            try:
                found = _probe_group(probe, group, strides, (size, size), device, allow_clipped=last)
            except RuntimeError:  # input too small for this architecture: try a larger one
                if last:
                    raise
                still.extend(group)
                continue
            for name, geom in found.items():
                if geom is None:
                    still.append(name)
                else:
                    result[name] = geom
        pending = still
        size *= 2
        if size > max_size and not last:
            size = max_size
    return result


def _probe_group(probe, group, strides, size, device, allow_clipped=False):
    x = torch.ones(len(group), 3, *size, device=device, requires_grad=True)
    with capture(probe, group) as outs:
        run(probe, x, outs)
        total = 0
        centres = {}
        for k, name in enumerate(group):
            out = outs[name]
            cy, cx = (out.shape[2] - 1) // 2, (out.shape[3] - 1) // 2
            centres[name] = (cy, cx)
            total = total + out[k, :, cy, cx].sum()
        (grad,) = torch.autograd.grad(total, x)
    geometry = {}
    H, W = size
    for k, name in enumerate(group):
        cy, cx = centres[name]
        sy, sx = strides[name]
        a = _support_box(grad[k])
        if a is None:  # nothing reaches the input (a constant map): degenerate field
            geometry[name] = ((sy, sx), (1, 1), (0, 0))
            continue
        clipped = a[0] == 0 or a[1] == 0 or a[2] == H or a[3] == W
        if clipped and not allow_clipped:
            geometry[name] = None
            continue
        geometry[name] = ((sy, sx), (a[2] - a[0], a[3] - a[1]), (a[0] - cy * sy, a[1] - cx * sx))
    return geometry
