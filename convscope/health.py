"""Model health, as Zeiler & Fergus looked for it (their section 4.1 and figure 6).

They found their model's flaws by looking: first-layer filters with a mix of very high and very
low frequencies and little in between, dead filters, aliasing from a large stride. This module
gives that look from an atlas and its model, with no new pass over the photos:

* per unit (:func:`health`): **dead** (never positive over the atlas's photos), **saturated**
  (at its activation's ceiling almost everywhere: ReLU6's 6.0), **constant** (it barely varies)
  and **duplicate** (almost the same top examples, or almost the same weights, as an earlier
  unit of its layer), each with the numbers behind it; per layer, the share of each flag and the
  layer's pooled activation distribution, all read from what the atlas stores (the units'
  sketches, maxima and top examples);
* the first layer's filters (:func:`first_layer_filters`): the weights as images, and each
  filter's power spectrum in low / mid / high radial bands; :func:`write_filter_sheet` draws
  them as one PNG.

The thresholds are the named constants below; ``docs/health.md`` gives the reasons and the
default model's numbers.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atlas.store import Atlas
from .errors import ConvscopeError
from .files import atomic_write
from .models import LoadedModel, as_loaded, load_recorded
from .saturation import activation_bounds, saturating_activations
from .sketch import Sketch

# ---------------------------------------------------------------- thresholds (see docs/health.md)

#: Dead: the unit's largest value over every position of every photo is below the sketch's
#: smallest "positive" (2**-126, the normal floats): after a ReLU it never passes anything on.
DEAD_BELOW = 2.0 ** -126
#: Saturated: at least this share of the unit's sampled positions sit in the sketch bin of its
#: activation's ceiling (for ReLU6 exactly 6.0): it says "6" whatever it sees.
SATURATED_SHARE = 0.95
#: Constant: the unit's whole range (max - min over the photos) is under this fraction of the
#: median range of its layer's live units: its output hardly depends on its input.
CONSTANT_RANGE = 0.05
#: Duplicate by examples: at least this share of the unit's top examples (same photo crop, same
#: place on the map) are an earlier unit's top examples too.
DUPLICATE_OVERLAP = 0.8
#: Duplicate by weights: cosine of the two units' filter weights (the convolution that feeds them,
#: when it is an ordinary one: every unit sees the same inputs) at least this.
DUPLICATE_COSINE = 0.95
#: Frequency bands of a filter's power spectrum, as radius / Nyquist radius on the filter's own
#: DFT grid: low below LOW_BAND, high from HIGH_BAND. On a 3x3 filter the three distinct
#: frequencies (the mean, one cycle along an axis, the diagonal) fall one in each band.
LOW_BAND = 1 / 3
HIGH_BAND = 0.75

FLAGS = ("dead", "saturated", "constant", "duplicate")
BANDS = ("low", "mid", "high")


# ---------------------------------------------------------------- records


@dataclasses.dataclass
class UnitHealth:
    """One unit: its ``flags`` (a subset of :data:`FLAGS`, at most one of dead / saturated /
    constant) and the numbers behind them: ``max`` (over all positions of all photos),
    ``frac_positive``, ``at_ceiling`` (share of sampled positions at the activation's ceiling;
    None where the activation is unbounded), ``range_ratio`` (its max - min over the layer's
    median), and for a duplicate ``duplicate_of`` (the earlier unit), ``overlap`` (share of
    shared top examples) and ``cosine`` (of the weights; None without them)."""

    layer: str
    unit: int
    flags: list[str]
    max: float | None
    frac_positive: float
    at_ceiling: float | None
    range_ratio: float | None
    duplicate_of: int | None = None
    overlap: float | None = None
    cosine: float | None = None

    def to_dict(self) -> dict:
        return {k: (_round(v) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class LayerHealth:
    """One layer: ``activation`` (the module that produces its output, e.g. ``bn1.act``, or None),
    ``ceiling`` (that activation's largest value, None if unbounded), ``weights`` (the
    convolution whose filters were compared, or None), ``counts`` and ``shares`` per flag, and
    ``distribution``: the layer's units pooled (frac_positive, at_ceiling, quantiles)."""

    name: str
    units: int
    activation: str | None
    ceiling: float | None
    weights: str | None
    counts: dict[str, int]
    shares: dict[str, float]
    distribution: dict
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shares"] = {k: _round(v) for k, v in self.shares.items()}
        return d


@dataclasses.dataclass
class HealthReport:
    """The health of every unit of an atlas's layers (``units``, network order) and per layer
    (``layers``); ``thresholds`` the constants used."""

    model: str | None
    layers: list[LayerHealth]
    units: list[UnitHealth]
    thresholds: dict

    def flagged(self, layer: str | None = None) -> list[UnitHealth]:
        """The units with at least one flag (of ``layer``, or of all layers)."""
        return [u for u in self.units if u.flags and (layer is None or u.layer == layer)]

    def layer(self, name: str) -> LayerHealth:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise ConvscopeError(f"no layer {name!r} in this health report; its layers are: "
                             f"{', '.join(e.name for e in self.layers)}")

    def to_dict(self) -> dict:
        return {"model": self.model, "thresholds": self.thresholds,
                "layers": [entry.to_dict() for entry in self.layers],
                "units": [u.to_dict() for u in self.flagged()]}


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


# ---------------------------------------------------------------- the model behind the atlas

#: How to give the report a model the atlas cannot name (the end of load_recorded's message).
PASS_MODEL = "call convscope.health.health(atlas, model=your_loaded_model) from Python"


def activation_ceiling(module: nn.Module) -> float | None:
    """The largest value an activation module can output, or None if unbounded (ReLU, SiLU...):
    the ceiling of :func:`convscope.saturation.activation_bounds`.

    >>> activation_ceiling(nn.ReLU6())
    6.0
    """
    bounds = activation_bounds(module)
    return None if bounds is None else bounds[1]


def producing_activation(model, layer: str) -> tuple[str | None, float | None, str | None]:
    """The bounded activation whose output *is* ``layer``'s output: (its name, its ceiling, a
    note or None); see :func:`producing_activations`.

    >>> producing_activation(convscope.load_model(), "bn1")
    ('bn1.act', 6.0, None)
    """
    return producing_activations(model, [layer])[layer]


def producing_activations(model, layers: list[str]) -> dict[str, tuple[str | None, float | None, str | None]]:
    """Per layer, the bounded activation whose output *is* the layer's output: (its name, its
    ceiling, None); (None, None, None) for an unbounded layer. The same verdict as the scan's
    ranking (:func:`convscope.saturation.saturating_activations`, one pass on a seeded random
    input of the model's size), so an addition after the activation (a residual block) or a
    pooling makes the layer unbounded."""
    loaded = as_loaded(model)
    named = dict(loaded.module.named_modules())
    for layer in layers:
        if layer not in named or not layer:
            raise ConvscopeError(f"the model has no layer {layer!r}; is it the atlas's model?")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *loaded.input_size, generator=gen).to(loaded.device)
    found = saturating_activations(loaded.module, list(layers), x)
    return {layer: (None, None, None) if sat is None else (sat.activation, sat.ceiling, None)
            for layer, sat in found.items()}


def unit_weights(model, layer: str, channels: int) -> tuple[str | None, torch.Tensor | None]:
    """The convolution that feeds ``layer``'s units and its filters flattened, (channels, D):
    the last Conv2d inside the layer, else the last one before it in the model, if it has
    ``channels`` outputs and is an ordinary one (groups=1: a depthwise convolution's units see
    different inputs, so their filters are not compared). (None, None) otherwise."""
    named = list(as_loaded(model).module.named_modules())
    place = next((i for i, (n, _m) in enumerate(named) if n == layer), None)
    if place is None:
        return None, None
    inside = [m for n, m in named if (n == layer or n.startswith(layer + ".")) and isinstance(m, nn.Conv2d)]
    before = [m for _n, m in named[:place] if isinstance(m, nn.Conv2d)]
    conv = inside[-1] if inside else (before[-1] if before else None)
    if conv is None or conv.out_channels != channels or conv.groups != 1:
        return None, None
    name = next(n for n, m in named if m is conv)
    return name, conv.weight.detach().flatten(1).float().cpu()


# ---------------------------------------------------------------- per unit, per layer


def health(atlas: Atlas | str | os.PathLike, model=None) -> HealthReport:
    """The health of every unit of ``atlas`` (an :class:`~convscope.atlas.Atlas` or its folder):
    dead, saturated, constant and duplicate units with the numbers behind each flag, and per
    layer the share of each and the pooled activation distribution. ``model`` (a LoadedModel or
    nn.Module) gives the activations' ceilings and the weights; by default the atlas's own model
    is loaded (:func:`convscope.models.load_recorded`). Nothing is scanned again.

    >>> report = health(Atlas.open("atlas/"))
    >>> [(u.layer, u.unit, u.flags) for u in report.flagged()][:2]
    [('bn1', 11, ['dead']), ('bn1', 16, ['dead'])]
    """
    if not isinstance(atlas, Atlas):
        with Atlas.open(atlas) as opened:
            return health(opened, model)
    model = load_recorded(atlas.info()["model"], hint=PASS_MODEL) if model is None else as_loaded(model)
    shapes = {i.name: i.shape for i in model.layers}
    for name in atlas.layers:  # another model with the same layer names would judge wrong weights
        channels = int(atlas.layer(name)["shape"][0])
        if name in shapes and shapes[name][0] != channels:
            raise ConvscopeError(f"layer {name!r} has {shapes[name][0]} units in this model but {channels} in the atlas; "
                                 "give the model the atlas was built with (by default its own is loaded)")
    cfg = atlas.info()["sketch"] or {}
    sketch = Sketch(sub=int(cfg.get("sub", 3)), grid=int(cfg.get("grid", 32)))
    layers, units = [], []
    activations = producing_activations(model, atlas.layers)
    for name in atlas.layers:
        entry, records = _layer_health(atlas, model, name, sketch, activations[name])
        layers.append(entry)
        units += records
    thresholds = {"dead_below": DEAD_BELOW, "saturated_share": SATURATED_SHARE, "constant_range": CONSTANT_RANGE,
                  "duplicate_overlap": DUPLICATE_OVERLAP, "duplicate_cosine": DUPLICATE_COSINE,
                  "low_band": LOW_BAND, "high_band": HIGH_BAND}
    return HealthReport((atlas.info()["model"] or {}).get("spec"), layers, units, thresholds)


def _layer_health(atlas: Atlas, model: LoadedModel, layer: str, sketch: Sketch, produced: tuple):
    rows = atlas.units(layer)
    c = len(rows)
    activation, ceiling, note = produced
    conv, weights = unit_weights(model, layer, c)
    counts = np.zeros((c, sketch.bins), dtype=np.int64)  # each unit's sketch, in value order
    for u, row in enumerate(rows):
        first, cs = row["sketch"]["first"], row["sketch"]["counts"]
        counts[u, first : first + len(cs)] = cs
    totals = np.maximum(counts.sum(1), 1)
    edges = sketch.edges().numpy()
    ceiling_bin = None if ceiling is None else int(np.searchsorted(edges, ceiling, side="right")) - 1
    at_ceiling = None if ceiling_bin is None else counts[:, ceiling_bin:].sum(1) / totals
    top = np.array([np.nan if r["max"] is None else r["max"] for r in rows])
    low = np.array([np.nan if r["min"] is None else r["min"] for r in rows])

    dead = ~(top >= DEAD_BELOW)  # NaN (a unit never seen) counts as dead
    saturated = ~dead & (at_ceiling >= SATURATED_SHARE) if at_ceiling is not None else np.zeros(c, bool)
    live = ~dead & ~saturated
    ranges = top - low
    median = float(np.nanmedian(ranges[live])) if live.any() else float("nan")
    ratio = ranges / median if median > 0 else np.full(c, np.nan)
    constant = live & (ratio < CONSTANT_RANGE)
    duplicate_of, overlap, cosine = _duplicates(atlas, layer, live & ~constant, weights)

    records = []
    for u in range(c):
        flags = [f for f, on in (("dead", dead[u]), ("saturated", saturated[u]), ("constant", constant[u]),
                                 ("duplicate", duplicate_of[u] >= 0)) if on]
        d = int(duplicate_of[u])
        records.append(UnitHealth(
            layer, u, flags, None if np.isnan(top[u]) else float(top[u]), float(rows[u]["frac_positive"]),
            None if at_ceiling is None else float(at_ceiling[u]), None if np.isnan(ratio[u]) else float(ratio[u]),
            d if d >= 0 else None, float(overlap[u, d]) if d >= 0 else None,
            float(cosine[u, d]) if d >= 0 and cosine is not None else None,
        ))
    tally = {f: sum(f in r.flags for r in records) for f in FLAGS}
    pooled = counts.sum(0)
    total = max(int(pooled.sum()), 1)
    cum = np.cumsum(pooled)
    mids = sketch.mids().numpy()
    quantiles = {str(q): _round(float(mids[min(int(np.searchsorted(cum, q * total)), len(mids) - 1)]))
                 for q in (0.01, 0.25, 0.5, 0.75, 0.99)} if pooled.any() else {}
    distribution = {
        "frac_positive": _round(float(pooled[sketch.first_positive:].sum() / total)),
        "at_ceiling": None if ceiling_bin is None else _round(float(pooled[ceiling_bin:].sum() / total)),
        "quantiles": quantiles,
        "median_range": _round(median),
    }
    entry = LayerHealth(layer, c, activation, ceiling, conv, tally, {f: tally[f] / max(c, 1) for f in FLAGS},
                        distribution, [note] if note else [])
    return entry, records


def _duplicates(atlas: Atlas, layer: str, candidates: np.ndarray, weights: torch.Tensor | None):
    """Per unit, the first earlier candidate it duplicates (-1: none), with the (C, C) overlap of
    top examples and cosine of weights (None without weights)."""
    from scipy import sparse

    c = len(candidates)
    keys: dict[tuple[int, int, int], int] = {}
    unit_idx, key_idx, sizes = [], [], np.zeros(c)
    for u in np.flatnonzero(candidates):
        mine = {(e["image_id"], e["y"], e["x"]) for e in atlas.examples(layer, int(u)) if e["value"] > 0}
        sizes[u] = len(mine)
        for k in mine:
            unit_idx.append(u)
            key_idx.append(keys.setdefault(k, len(keys)))
    m = sparse.csr_matrix((np.ones(len(unit_idx)), (unit_idx, key_idx)), shape=(c, max(len(keys), 1)))
    shared = (m @ m.T).toarray()
    overlap = shared / np.maximum(np.maximum.outer(sizes, sizes), 1)
    match = overlap >= DUPLICATE_OVERLAP
    cosine = None
    if weights is not None:
        w = weights.double()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cosine = (w @ w.T).numpy()
        match |= cosine >= DUPLICATE_COSINE
    match &= np.outer(candidates, candidates)
    match &= np.tri(c, k=-1, dtype=bool)  # [v, u] with u < v: the later unit duplicates the earlier
    first = np.where(match.any(1), match.argmax(1), -1)
    return first, overlap, cosine


# ---------------------------------------------------------------- the first layer's filters


@dataclasses.dataclass
class FirstLayerFilters:
    """The first convolution on the colour channels: ``layer`` (its dotted name), ``weights``
    (O, 3, kh, kw), ``images`` (O, kh * scale, kw * scale, 3) uint8 (each filter normalized on
    its own: 0 is mid-grey, its largest weight in magnitude black or white; nearest-neighbour
    enlarged) and ``bands`` (O, 3): the share of each filter's power in the low, mid and high
    band (:func:`band_shares`)."""

    layer: str
    weights: np.ndarray
    images: np.ndarray
    bands: np.ndarray

    def to_dict(self) -> dict:
        o, ci, kh, kw = self.weights.shape
        return {"layer": self.layer, "filters": o, "kernel": [kh, kw], "in_channels": ci,
                "bands": [{"unit": i, **{b: _round(float(v), 4) for b, v in zip(BANDS, row)}}
                          for i, row in enumerate(self.bands)],
                "mean_bands": {b: _round(float(v), 4) for b, v in zip(BANDS, self.bands.mean(0))}}


def band_shares(weights) -> np.ndarray:
    """Share of each filter's power in the low, mid and high radial band, (O, 3) summing to 1
    (0 for an all-zero filter): the 2-D power spectrum of each (O, C, kh, kw) filter on its own
    grid (no padding), summed over its input channels, split by frequency radius over the Nyquist
    radius at :data:`LOW_BAND` and :data:`HIGH_BAND`. A constant filter is all low, a
    checkerboard all high.

    >>> band_shares(np.ones((1, 3, 3, 3)))
    array([[1., 0., 0.]])
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"band_shares takes filters shaped (O, C, kh, kw), got shape {w.shape}")
    power = (np.abs(np.fft.fft2(w, axes=(-2, -1))) ** 2).sum(1)
    fy = np.fft.fftfreq(w.shape[2])[:, None]
    fx = np.fft.fftfreq(w.shape[3])[None, :]
    rho = np.sqrt(fy**2 + fx**2) / 0.5
    masks = [rho < LOW_BAND, (rho >= LOW_BAND) & (rho < HIGH_BAND), rho >= HIGH_BAND]
    parts = np.stack([(power * m).sum((1, 2)) for m in masks], axis=1)
    total = parts.sum(1, keepdims=True)
    return np.where(total > 0, parts / np.where(total > 0, total, 1), 0.0)


def first_layer_filters(model, scale: int | None = None) -> FirstLayerFilters:
    """The first Conv2d that reads the 3 colour channels, its filters as RGB images and their
    frequency content. ``scale``: pixels per weight (default: about 60 pixels a filter).

    >>> f = first_layer_filters(convscope.load_model())   # conv_stem: 32 filters of 3x3
    >>> f.images.shape, f.bands.mean(0)
    """
    module = as_loaded(model).module
    found = next(((n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3
                  and m.groups == 1), None)
    if found is None:
        raise ConvscopeError("the model has no convolution on the 3 colour channels, so there are no first-layer "
                             "filters to show")
    name, conv = found
    w = conv.weight.detach().float().cpu().numpy()
    kh, kw = w.shape[2:]
    scale = scale or max(1, 60 // max(kh, kw))
    peak = np.abs(w).reshape(len(w), -1).max(1).reshape(-1, 1, 1, 1)
    rgb = 0.5 + 0.5 * w / np.where(peak > 0, peak, 1)
    images = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    return FirstLayerFilters(name, w, images, band_shares(w))


SHORT_FLAGS = {"dead": "dead", "saturated": "sat", "constant": "const", "duplicate": "dup"}  # fit a cell
BAND_COLOURS = ((66, 110, 220), (60, 170, 80), (220, 70, 60))  # low blue, mid green, high red


def filter_sheet(filters: FirstLayerFilters, columns: int = 8, flags: dict[int, list[str]] | None = None):
    """The contact sheet as a PIL image: filters in a grid in unit order, each with its number and
    a bar of its low / mid / high shares (blue / green / red) under it; ``flags`` (unit -> flags,
    e.g. from :func:`sheet_flags`) are written in red under the bars. The sheet is at least as wide
    as its header."""
    from PIL import Image, ImageDraw, ImageFont

    o, th, tw = filters.images.shape[:3]
    cols = max(1, min(columns, o))
    rows = -(-o // cols)
    pad, label, bar = 10, 14, 8
    marks = label if flags else 0  # a line under the bar for the flags
    cell_w, cell_h = max(tw, 60) + pad, label + th + 3 + bar + marks + pad
    head = 60 if flags else 44  # title, band legend (and the flags' legend)
    font = ImageFont.load_default(size=12)
    kh, kw = filters.weights.shape[2:]
    mean = filters.bands.mean(0)
    title = f"{filters.layer}: {o} filters of {kh}x{kw} (weights; grey = 0)"
    legend = "red: flagged units (sat = saturated, const = constant, dup = duplicate)"
    bands_width = sum(24 + font.getlength(f"{b} {v:.0%}") for b, v in zip(BANDS, mean)) + 4 + \
        font.getlength("(mean power share)")
    header = max(font.getlength(title), bands_width, font.getlength(legend) if flags else 0)
    width = max(cols * cell_w + pad, int(header) + 2 * pad)
    sheet = Image.new("RGB", (width, head + rows * cell_h + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill=(20, 20, 20), font=font)
    x = pad
    for band, colour, share in zip(BANDS, BAND_COLOURS, mean):
        draw.rectangle((x, 25, x + 10, 35), fill=colour)
        text = f"{band} {share:.0%}"
        draw.text((x + 14, 23), text, fill=(20, 20, 20), font=font)
        x += 24 + int(draw.textlength(text, font=font))
    draw.text((x + 4, 23), "(mean power share)", fill=(90, 90, 90), font=font)
    if flags:
        draw.text((pad, 40), legend, fill=(200, 30, 30), font=font)
    for i in range(o):
        r, c = divmod(i, cols)
        left, top = pad + c * cell_w, head + r * cell_h
        draw.text((left, top), str(i), fill=(60, 60, 60), font=font)
        if flags and flags.get(i):
            draw.text((left, top + label + th + 3 + bar + 1), "+".join(SHORT_FLAGS[f] for f in flags[i]),
                      fill=(200, 30, 30), font=font)
        sheet.paste(Image.fromarray(filters.images[i]), (left, top + label))
        y = top + label + th + 3
        start = left
        for k, (colour, share) in enumerate(zip(BAND_COLOURS, filters.bands[i])):
            end = left + tw if k == 2 else start + int(round(share * tw))
            if end > start:
                draw.rectangle((start, y, end - 1, y + bar - 1), fill=colour)
            start = end
    return sheet


def write_filter_sheet(filters: FirstLayerFilters, path: str | os.PathLike, columns: int = 8,
                       flags: dict[int, list[str]] | None = None) -> Path:
    """Write :func:`filter_sheet` as a PNG at ``path`` (atomically); returns the path."""
    path = Path(path)
    with atomic_write(path) as f:
        filter_sheet(filters, columns, flags).save(f, format="PNG")
    return path


def sheet_flags(report: HealthReport, filters: FirstLayerFilters) -> dict[int, list[str]]:
    """The flags of the first atlas layer whose units the first-layer filters feed (its weights
    are ``filters.layer``), per filter, for :func:`filter_sheet`; empty if no layer is fed."""
    layer = next((entry.name for entry in report.layers if entry.weights == filters.layer), None)
    return {u.unit: u.flags for u in report.flagged(layer)} if layer else {}


__all__ = [
    "BANDS", "CONSTANT_RANGE", "DEAD_BELOW", "DUPLICATE_COSINE", "DUPLICATE_OVERLAP", "FLAGS", "HIGH_BAND",
    "LOW_BAND", "SATURATED_SHARE", "FirstLayerFilters", "HealthReport", "LayerHealth", "UnitHealth",
    "activation_ceiling", "band_shares", "filter_sheet", "first_layer_filters", "health",
    "producing_activation", "producing_activations", "sheet_flags", "unit_weights", "write_filter_sheet",
]
