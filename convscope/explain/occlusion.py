"""Occlusion sensitivity (Zeiler & Fergus 2014, fig. 7): slide a grey square over the image and
watch the network.

The square is filled with the model's mean colour (zero after normalization). It is
``window`` model-input pixels wide and moves by ``stride``; ``map[i, j]`` is the value with the
square's top-left corner at ``(i * stride, j * stride)`` on the model input. Positions run from
0 while the square still reaches inside the image: ``ceil((H - window) / stride) + 1`` per axis,
the last square clipped at the border (the positions of captum's ``Occlusion``). Defaults:
``window=48``, ``stride=16`` (a 12 x 12 map at 224 px: the square is about a fifth of the side).

For each position: (b) the total activation (sum over the map) of the channel of ``layer`` that
responds most strongly (largest single value) to the unoccluded image, (d) the probability of
the target class, (e) the most probable class. (c) is that channel's deconvnet projection for
the unoccluded image (:mod:`convscope.backproject`), or its guided backprop, with the reason,
where the deconvnet cannot depend on the image (no max-pool or other routing below the layer:
:func:`convscope.backproject.layer_methods`, the atlas's rule), drawn as the atlas draws
projections (:func:`convscope.display.to_picture`).

Speed: the occluded copies go through the model in memory-bounded batches, and work the square
cannot change is skipped. A layer early in the network (the *split*, a stage output chosen by a
cost estimate) only changes within the reach of the square (its receptive fields, from the
layer catalogue): so the part of the network before the split runs on a small crop around the
square only, and its output is pasted into the unoccluded image's activation there, which the
rest of the network then takes. This is exact, not an approximation; it is checked against
full forward passes at three positions before it is used, and a model where it does not hold (a
skip connection around the split, a size-dependent layer) falls back to full passes with an
:class:`OcclusionSplitWarning`.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..hooks import Handles, capture, model_lock, run
from ..models import as_loaded
from ..progress import Bar
from . import figures
from ._common import ExplainError, Explanation, check_layer, prepare, resolve_target, top_predictions

DEFAULT_WINDOW = 48
DEFAULT_STRIDE = 16
#: Memory traffic counted as this many multiply-adds per output element in the cost estimate
#: that picks the split (fitted to CPU timings of EfficientNet-Lite0 and ResNet-18).
_ELEMENT_COST = 32
#: Splits whose estimated cost is above this fraction of a full pass are not worth their overhead.
_WORTH = 0.9


class OcclusionSplitWarning(UserWarning):
    """The split forward pass did not reproduce full passes on this model; full passes were used."""


class _SplitMismatch(Exception):
    pass


def positions(size: int, window: int, stride: int) -> list[int]:
    """Top-left coordinates of the square along one axis of ``size`` pixels."""
    n = math.ceil(max(size - window, 0) / stride) + 1
    return [i * stride for i in range(n) if i * stride < size]


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(eq=False)
class Occlusion(Explanation):
    """Occlusion maps of one image; ``map[i, j]``: square's top-left at ``(ys[i], xs[j])``.

    ``activation`` (ny, nx): total activation of ``channel`` of ``layer``; ``probability``
    (ny, nx): probability of ``target``; ``top_class`` (ny, nx): most probable class;
    ``probabilities`` (ny, nx, classes): every class's probability (for maps of other classes,
    or of a group: ``probabilities[..., 281:286].sum(-1)`` for ImageNet's cats);
    ``projection`` (H, W, 3) uint8: the projection of ``channel`` at its strongest position
    ``peak`` (on the layer's map) for the unoccluded image by ``projection_method`` (the
    deconvnet, or guided backprop where the deconvnet cannot depend on the image, and
    ``projection_note`` says why), nonzero within ``peak_box`` (top, left, bottom, right);
    ``base_activation``/``base_probability``: the unoccluded values; ``split``: the layer the
    forward passes were split at (``None``: full passes).
    """

    layer: str = ""
    channel: int = 0
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    ys: list[int] = dataclasses.field(default_factory=list)
    xs: list[int] = dataclasses.field(default_factory=list)
    activation: np.ndarray | None = None
    probability: np.ndarray | None = None
    top_class: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    projection: np.ndarray | None = None
    projection_method: str | None = "deconvnet"  #: None where no projection was asked for
    projection_note: str | None = None
    peak: tuple[int, int] = (0, 0)
    peak_box: tuple[int, int, int, int] | None = None
    base_activation: float = 0.0
    base_probability: float = 0.0
    labels: dict[int, str] = dataclasses.field(default_factory=dict)
    split: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.name = "occlusion"
        self.arrays = {
            "occlusion_activation": "activation",
            "occlusion_probability": "probability",
            "occlusion_top_class": "top_class",
        }

    def figure(self):
        fig, ax = figures.new_figure(5, panel_inches=3.0, height=4.6)
        h, w = self.image.shape[:2]
        # (a) the input with one square drawn where it hurts the target most
        i, j = np.unravel_index(np.argmin(self.probability), self.probability.shape)
        shown = self.image.copy()
        y0, x0 = self.ys[i], self.xs[j]
        figures.show_image(ax[0], shown, f"(a) {self.image_name}: {self.target_label} p={self.base_probability:.2f}\n"
                                         "white: the square that lowers p most")
        figures.draw_box(ax[0], (y0, x0, min(y0 + self.window, h), min(x0 + self.window, w)), color="white")
        figures.occlusion_map(ax[1], self.image, self.activation, self.window, self.stride,
                              f"(b) total activation\n{self.layer} channel {self.channel}")
        if self.projection is not None:
            shown = "deconvnet" if self.projection_method == "deconvnet" else "guided backprop"
            figures.show_image(ax[2], self.projection, f"(c) {shown} projection\n{self.layer} channel {self.channel}")
            if self.projection_note is not None:  # the whole reason is in the notes and the JSON summary
                ax[2].set_xlabel("the deconvnet is the same for every\nimage here: guided backprop shown", fontsize=8)
            if self.peak_box is not None and self.peak_box != (0, 0, h, w):
                figures.draw_box(ax[2], self.peak_box)
        else:
            ax[2].set_title("(c) projection unavailable", fontsize=9)
        figures.occlusion_map(ax[3], self.image, self.probability, self.window, self.stride,
                              f"(d) p({self.target_label})")
        figures.class_map(ax[4], self.image, self.top_class, self.labels, self.window, self.stride, "(e) most probable class")
        return fig

    def summary(self) -> dict:
        d = super().summary()
        d.update(layer=self.layer, channel=self.channel, window=self.window, stride=self.stride, split=self.split,
                 map_shape=list(self.probability.shape), projection_method=self.projection_method,
                 projection_note=self.projection_note)
        return d


# --------------------------------------------------------------------------- the split plan


@dataclasses.dataclass
class _Axis:
    crop: int  # crop size on the input
    starts: list[int]  # crop start per position (multiple of the split's stride)
    lo: list[int]  # first unit changed by the square, per position (on the full map)
    hi: list[int]  # one past the last


def _plan_axis(size: int, stride: int, rf: int, off: int, pos: Sequence[int], window: int) -> _Axis:
    """Which units of the split layer a square at each position changes, and the input crop
    that holds everything those units see (see the module docstring)."""
    lo, hi, need = [], [], []
    for p in pos:
        y0, y1 = p, min(p + window, size)
        # unit u sees [off + u*stride, off + u*stride + rf)
        u_lo = max(0, (y0 - rf - off) // stride + 1)
        u_hi = -((off - y1) // stride)  # ceil((y1 - off) / stride)
        lo.append(u_lo)
        hi.append(max(u_hi, u_lo))
        need.append((max(0, off + u_lo * stride), min(size, off + (max(u_hi, u_lo + 1) - 1) * stride + rf)))
    crop = max(b - a for a, b in need)
    crop += (size - crop) % stride  # crop = size (mod stride): a crop against either border stays on the grid
    while crop < size:
        starts = [min((a // stride) * stride, size - crop) for a, _ in need]
        if all(s + crop >= b for s, (_, b) in zip(starts, need)):
            return _Axis(crop, starts, lo, hi)
        crop += stride
    return _Axis(size, [0] * len(pos), lo, hi)


@dataclasses.dataclass
class _Split:
    layer: str
    ay: _Axis
    ax: _Axis
    stride: tuple[int, int]
    cost: float


def _prefix_costs(module: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Estimated fraction of a forward pass spent up to each of ``names`` (multiply-adds of
    convolutions and linear layers, plus :data:`_ELEMENT_COST` per output element of every leaf)."""
    total = [0.0]
    at: dict[str, float] = {}

    def leaf(m, _i, o):
        if not isinstance(o, torch.Tensor):
            return
        cost = _ELEMENT_COST * o.numel()
        if isinstance(m, nn.Conv2d):
            cost += o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            cost += o.numel() * m.in_features
        total[0] += cost

    def mark(name):
        def hook(_m, _i, _o):
            at.setdefault(name, total[0])
        return hook

    modules = dict(module.named_modules())
    with model_lock(module), Handles() as handles:
        for m in module.modules():
            if next(m.children(), None) is None:
                handles.add(m.register_forward_hook(leaf))
        for n in names:
            handles.add(modules[n].register_forward_hook(mark(n)))
        with torch.inference_mode():
            module(x[:1])
    return {n: at.get(n, total[0]) / max(total[0], 1.0) for n in names}


def _choose_split(model, x, layer: str, ys, xs, window: int, split) -> _Split | None:
    cat = model.layers
    H, W = x.shape[2:]
    if split is None or split is False:
        return None
    if split == "auto":
        names = cat.names
        upto = names.index(layer) if layer in names else len(names) - 1
        cands = [n for n in cat.default if names.index(n) <= upto and cat.shape(n)[1] * cat.shape(n)[2] > 1]
    else:
        cat.shape(split)  # unknown name -> error with close matches
        cands = [split]
    fractions = _prefix_costs(model.module, x, cands)
    best = None
    area_before = 0.0
    for name in cands:
        f = fractions[name]
        # Fields only grow with depth, so a deeper split's crop is at least the last one's: if
        # even that cannot beat the best, skip probing this layer's geometry.
        if best is not None and f * area_before + (1 - f) >= best.cost:
            continue
        info = cat.get(name)
        (sy, sx), (ry, rx), (oy, ox) = info.stride, info.receptive_field, info.offset
        if sy <= 0 or sx <= 0:
            continue
        ay = _plan_axis(H, sy, ry, oy, ys, window)
        ax = _plan_axis(W, sx, rx, ox, xs, window)
        area = ay.crop * ax.crop / (H * W)
        area_before = max(area_before, area)
        cost = f * area + (1 - f)
        if best is None or cost < best.cost:
            best = _Split(name, ay, ax, (sy, sx), cost)
        if split == "auto" and area >= _WORTH:
            break  # deeper layers see even more: no saving left
    if best is None or (split == "auto" and best.cost > _WORTH):
        return None
    return best


# --------------------------------------------------------------------------- forward passes


class _Engine:
    """Runs batches of occluded copies; returns (logits (B, K), layer totals (B,))."""

    def __init__(self, module, x, layer, channel, window, ys, xs, base_split=None, plan: _Split | None = None):
        self.module, self.x, self.layer, self.channel, self.window = module, x, layer, channel, window
        self.ys, self.xs = ys, xs
        self.plan, self.base_split = plan, base_split
        # oneDNN's convolutions run about 1.6x faster on NHWC batches on the CPU (measured on
        # EfficientNet-Lite0); on a GPU in float32 the layout buys nothing, so it stays NCHW.
        self.memory_format = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format

    def full(self, idx: Sequence[tuple[int, int]]):
        H, W = self.x.shape[2:]
        xb = self.x.expand(len(idx), -1, -1, -1).contiguous(memory_format=self.memory_format)
        for b, (i, j) in enumerate(idx):
            y, x = self.ys[i], self.xs[j]
            xb[b, :, y:min(y + self.window, H), x:min(x + self.window, W)] = 0
        with capture(self.module, [self.layer], stop=False) as outs:
            logits = run(self.module, xb, outs)
            total = outs[self.layer][:, self.channel].sum(dim=(1, 2))
        return logits, total

    def split(self, idx: Sequence[tuple[int, int]]):
        plan, base = self.plan, self.base_split
        cy, cx = plan.ay.crop, plan.ax.crop
        crops = self.x.new_empty((len(idx), self.x.shape[1], cy, cx)).contiguous(memory_format=self.memory_format)
        for b, (i, j) in enumerate(idx):
            sy, sx = plan.ay.starts[i], plan.ax.starts[j]
            crops[b] = self.x[0, :, sy:sy + cy, sx:sx + cx]
            y, x = self.ys[i] - sy, self.xs[j] - sx
            crops[b, :, max(y, 0):max(y + self.window, 0), max(x, 0):max(x + self.window, 0)] = 0
        sty, stx = plan.stride

        def paste(name, t):
            if name != plan.layer:
                return t
            if t.dim() != 4 or t.shape[1] != base.shape[1]:
                raise _SplitMismatch(f"{name} gives {tuple(t.shape)} on a crop")
            full = base.expand(len(idx), -1, -1, -1).contiguous(memory_format=self.memory_format)
            for b, (i, j) in enumerate(idx):
                # the plan does not know the map's size: units past its edge do not exist
                y1, x1 = min(plan.ay.hi[i], full.shape[2]), min(plan.ax.hi[j], full.shape[3])
                y0, x0 = min(plan.ay.lo[i], y1), min(plan.ax.lo[j], x1)
                ky, kx = plan.ay.starts[i] // sty, plan.ax.starts[j] // stx
                if y1 - ky > t.shape[2] or x1 - kx > t.shape[3]:
                    raise _SplitMismatch(f"{name}: crop map {tuple(t.shape[2:])} too small")
                full[b, :, y0:y1, x0:x1] = t[b, :, y0 - ky:y1 - ky, x0 - kx:x1 - kx]
            return full

        with capture(self.module, [plan.layer, self.layer], stop=False, transform=paste) as outs:
            logits = run(self.module, crops, outs)
            total = outs[self.layer][:, self.channel].sum(dim=(1, 2))
        return logits, total


def _agrees(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], rtol: float = 1e-4) -> bool:
    for u, v in zip(a, b):
        if u.shape != v.shape:
            return False
        scale = max(1.0, float(v.abs().max()))
        if float((u - v).abs().max()) > rtol * scale:
            return False
    return True


def _batch_size(model, x: torch.Tensor, plan: _Split | None) -> int:
    """Occluded copies per forward pass, so that a batch's largest activations stay within about
    2 GiB on the CPU (a quarter of free memory, at most 8 GiB, on a GPU). Before a split, maps
    shrink with the crop."""
    cat = model.layers
    h0, w0 = cat.input_size
    scale = x.shape[2] * x.shape[3] / (h0 * w0)
    names = cat.names
    cut = names.index(plan.layer) if plan is not None and plan.layer in names else -1
    crop = plan.ay.crop * plan.ax.crop / (x.shape[2] * x.shape[3]) if plan is not None else 1.0
    largest = 3 * h0 * w0
    for k, n in enumerate(names):
        c, h, w = cat.shape(n)
        largest = max(largest, c * h * w * (crop if k <= cut else 1.0))
    per_image = 4 * 6 * largest * scale  # float32, a few maps alive at once
    budget = 2 << 30
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        budget = min(8 << 30, free // 4)
    return int(max(1, min(256, budget // max(per_image, 1))))


# --------------------------------------------------------------------------- public API


def occlusion(
    model,
    image,
    *,
    target="top",
    layer: str | None = None,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    batch_size: int | None = None,
    split: str | None = "auto",
    progress: bool | None = None,
    projection: bool = True,
) -> Occlusion:
    """Occlusion maps of one image (see the module docstring for what is computed).

    ``model``: a :class:`~convscope.models.LoadedModel`. ``image``: a path, PIL image, (H, W, 3)
    array, or a normalized model-input tensor (3, H, W). ``target``: class index or ``"top"``.
    ``layer``: dotted layer name for maps (b) and (c); default the last convolutional stage.
    ``window``, ``stride``: square side and step in model-input pixels. ``batch_size``:
    occluded copies per forward pass (default: memory-bounded). ``split``: ``"auto"`` (skip
    work the square cannot change; see the module docstring), a layer name to split at, or
    ``None`` for plain full passes. ``progress``: a progress bar on stderr (default: when it
    is a terminal). ``projection``: compute panel (c) (False, for a caller that needs the maps
    only: ``projection`` is then None, and the figure says so).

    >>> from convscope import load_model
    >>> from convscope.explain import occlusion
    >>> result = occlusion(load_model(), "cat.jpg", window=48, stride=16)
    >>> result.probability.shape                     # (12, 12)
    >>> result.save("out", npy=True)                 # occlusion.png, occlusion_*.npy
    """
    from ..runtime import keep_freed_memory

    keep_freed_memory()  # batches of occluded copies reuse freed memory (see convscope.runtime)
    model = as_loaded(model)
    layer = check_layer(model, layer)
    for what, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ExplainError(f"{what} must be a positive whole number of pixels, got {v!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}")
    x, pixels, name = prepare(model, image)
    H, W = x.shape[2:]
    if window > min(H, W):
        raise ExplainError(f"window {window} is larger than the model input ({H}x{W}); use a window up to {min(H, W)} pixels")
    # One lock for the whole computation: hooks, the rule context of the projection and every
    # forward pass see no other thread's hooks on the model (see convscope.hooks.model_lock).
    with model_lock(model.module):
        return _occlude(model, x, pixels, name, target, layer, int(window), int(stride), batch_size, split, progress,
                        projection)


def _occlude(model, x, pixels, name, target, layer, window, stride, batch_size, split, progress,
             projection=True) -> Occlusion:
    H, W = x.shape[2:]
    ys, xs = positions(H, window, stride), positions(W, window, stride)
    module = model.module

    plan = _choose_split(model, x, layer, ys, xs, window, split)
    names = [layer] + ([plan.layer] if plan is not None else [])
    with torch.inference_mode(), capture(module, names, stop=False) as outs:
        logits0 = run(module, x, outs)  # LayerNotRunError if a layer did not run
        base = {k: v.clone() for k, v in outs.items()}
    if base[layer].dim() != 4:
        raise ExplainError(f"layer {layer!r} gives no (C, H, W) map in this model's forward pass; run `convscope layers`")
    if logits0 is None or logits0.dim() != 2:
        raise ExplainError("the model does not return (N, classes) logits; occlusion needs a classifier")
    act0 = base[layer][0]
    channel = int(act0.flatten(1).max(dim=1).values.argmax())
    cls = resolve_target(target, logits0)

    engine = _Engine(module, x, layer, channel, window, ys, xs, base.get(plan.layer) if plan else None, plan)
    notes: list[str] = []
    todo = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    with torch.inference_mode():
        step = engine.full
        if plan is not None:
            probe = sorted({todo[0], todo[len(todo) // 2], todo[-1]})
            try:
                ok = _agrees(engine.split(probe), engine.full(probe))
                why = "its results differ from full passes"
            except (_SplitMismatch, RuntimeError) as exc:  # shapes that do not fit: a skip around the split
                ok, why = False, str(exc).splitlines()[0][:200]
            if ok:
                step = engine.split
            else:
                msg = f"occlusion: splitting the forward pass at {plan.layer!r} does not work for this model ({why}); using full passes"
                warnings.warn(msg, OcclusionSplitWarning, stacklevel=2)
                notes.append(msg)
                plan = None
        bs = batch_size or _batch_size(model, x, plan)
        logits_all = torch.empty(len(todo), logits0.shape[1], device=x.device)
        totals = torch.empty(len(todo), device=x.device)
        with Bar(len(todo), "occlusion", disable=None if progress is None else not progress) as bar:
            for start in range(0, len(todo), bs):
                idx = todo[start:start + bs]
                lg, tot = step(idx)
                logits_all[start:start + len(idx)] = lg
                totals[start:start + len(idx)] = tot
                bar.advance(len(idx))
        probs = torch.softmax(logits_all.float(), dim=1)
        shape = (len(ys), len(xs))
        all_probs = probs.reshape(*shape, -1).cpu().numpy()
        prob_map = all_probs[..., cls].copy()
        top_map = probs.argmax(dim=1).reshape(shape).cpu().numpy().astype(np.int64)
        act_map = totals.reshape(shape).float().cpu().numpy()
        base_prob = float(torch.softmax(logits0.float(), dim=1)[0, cls])
        base_act = float(act0[channel].sum())

    flat = int(act0[channel].argmax())
    picture, peak, box, method, note = None, (flat // act0.shape[2], flat % act0.shape[2]), None, None, None
    if projection:
        picture, peak, box, method, note = _projection(model, x, layer, channel, notes)
    labels = {int(c): model.label(int(c)) for c in np.unique(top_map)}
    return Occlusion(
        image=pixels, target=cls, target_label=model.label(cls), top=top_predictions(model, logits0), image_name=name,
        layer=layer, channel=channel, window=window, stride=stride, ys=ys, xs=xs,
        activation=act_map, probability=prob_map, top_class=top_map, probabilities=all_probs, projection=picture,
        projection_method=method, projection_note=note, peak=peak, peak_box=box,
        base_activation=base_act, base_probability=base_prob, labels=labels,
        split=plan.layer if plan is not None else None, notes=notes,
    )


def _projection(model, x, layer: str, channel: int, notes: list[str]):
    """(c): the channel's projection at its strongest position, as a picture, with the position,
    the box where the projection is nonzero (the unit's receptive field), the method and the
    reason guided backprop stands in for the deconvnet (None where it does not).

    The substitute-rule notes go into ``notes`` (the result's), not out as warnings: silencing
    warnings would need ``warnings.catch_warnings``, whose process-wide filters are not thread-safe.
    """
    from ..backproject import forward_pass, layer_methods
    from ..display import to_picture

    chosen = layer_methods(model, [layer], ("deconvnet",), input_size=tuple(x.shape[-2:]))[layer]
    method = chosen.methods[0]
    if chosen.note is not None:
        notes.append(f"(c): {chosen.note}")
    with forward_pass(model, x, [layer], (method,), warn=False) as fp:
        out = fp.outputs[layer]
        flat = int(out.detach()[0, channel].argmax())
        peak = (flat // out.shape[3], flat % out.shape[3])
        seed = torch.zeros_like(out)
        seed[0, channel, peak[0], peak[1]] = 1.0
        pixels = fp.backward({layer: seed}, method, retain=False)[0].detach()
    notes.extend(fp.rules.by_method.get(method, []))
    support = pixels.abs().sum(0) > 0
    rows, cols = torch.nonzero(support.any(1)).flatten(), torch.nonzero(support.any(0)).flatten()
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1) if len(rows) else None
    return to_picture(pixels)[0], peak, box, method, chosen.note
