"""The render loop: optimize a batch of images, each for its own unit, and report the result.

Per step: parameterization -> pixels in [0, 1] -> random transforms -> the model's own
normalization -> forward pass cut after the deepest layer the objective reads -> objective per
element, summed -> Adam step. Each element has its own ``torch.Generator`` (seeded from
``seed``, its unit and how often that unit came before in the list) for its start image and its
transforms, and Adam works elementwise, so a unit's image does not depend on the batch it was
rendered in. The model is put in eval mode with ``requires_grad`` off while rendering, and
restored in ``finally``; its hooks are removed in ``finally`` too. All of it happens under the
model's :func:`~convscope.hooks.model_lock`, so no other thread sees those changes; given a
``pause``, the model is let go, as it was given, between two steps where other work waits for it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConvscopeError
from ..hooks import capture, forward_layers, model_lock, run
from ..models import as_loaded
from ..progress import Bar
from .objectives import Context, Objective, as_objective
from .param import get_param
from .transforms import get_transforms

DEFAULT_BATCH = 16


class UnitRangeError(ConvscopeError, ValueError):
    """Units asked for that the layer does not have."""


@dataclasses.dataclass
class FeatvisResult:
    """Rendered images for ``units`` of ``layer``.

    ``images``: uint8 (N, H, W, 3); ``objective``: (N,) the objective measured on each final
    image *without* transforms (for the default objective: the mean activation of the unit's
    channel at ``layer``); ``history``: (steps, N) the objective at each step, on the transformed
    images the optimizer saw; ``seeds``: each element's generator seed.

    In Jupyter a result shows as a contact sheet.
    """

    layer: str
    units: list[int]
    images: np.ndarray
    objective: np.ndarray
    history: np.ndarray
    seeds: list[int]
    objective_name: str = "objective"
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.units)

    def __repr__(self) -> str:
        n, h, w = self.images.shape[:3]
        return (f"FeatvisResult(layer={self.layer!r}, units={self.units}, images=({n}, {h}, {w}, 3) uint8, "
                f"{self.objective_name}: median {float(np.median(self.objective)):.4g}, steps={len(self.history)})")

    def image(self, i: int):
        """Element ``i`` as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.images[i])

    def sheet(self, columns: int | None = None, labels: bool = True):
        """A contact sheet (PIL image) of all images, labelled with unit and final objective."""
        text = [f"{u}: {v:.3g}" for u, v in zip(self.units, self.objective)] if labels else None
        return contact_sheet(self.images, text, columns=columns, title=self.layer if labels else None)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.sheet().save(buf, format="PNG")
        return buf.getvalue()


def contact_sheet(images: np.ndarray, labels: Sequence[str] | None = None, columns: int | None = None,
                  title: str | None = None, gap: int = 4):
    """Tile uint8 images (N, H, W, 3) on a white sheet, with a line of text under each."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w = images.shape[:3]
    columns = columns or min(n, 8) or 1
    rows = max(1, -(-n // columns))
    try:
        font = ImageFont.load_default(size=max(10, min(16, w // 9)))
    except TypeError:  # Pillow built without FreeType
        font = ImageFont.load_default()
    line = (font.getbbox("Ag")[3] + 4) if labels or title else 0
    top = line if title else 0
    sheet = Image.new("RGB", (columns * (w + gap) + gap, top + rows * (h + line + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, 2), title, fill="black", font=font)
    for i in range(n):
        r, c = divmod(i, columns)
        x, y = gap + c * (w + gap), top + gap + r * (h + line + gap)
        sheet.paste(Image.fromarray(images[i]), (x, y))
        if labels:
            draw.text((x, y + h + 1), labels[i], fill="black", font=font)
    return sheet


def element_seed(seed: int, unit: int, repeat: int = 0) -> int:
    """The generator seed of one batch element: a hash of (seed, unit, repeat), so a unit's image
    does not depend on its position in the list; ``repeat`` counts earlier copies of the unit."""
    state = np.random.SeedSequence([int(seed), int(unit), int(repeat)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def resolve_units(units, channels: int, layer: str) -> list[int]:
    """``units`` as a list of channel indices: an int, a sequence, ``"all"``, a string such as
    ``"0-15"``, ``"3,7,9-11"``, or ``None`` for the first 16. Raises :class:`UnitRangeError` naming the valid range."""
    valid = f"0-{channels - 1}" if channels > 1 else "0"
    if units is None:
        return list(range(min(channels, DEFAULT_BATCH)))
    if isinstance(units, str):
        spec = units.strip()
        if spec == "all":
            return list(range(channels))
        out: list[int] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                if sep:
                    a, b = int(lo), int(hi)
                    if b < a:
                        raise ValueError
                    out.extend(range(a, b + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise UnitRangeError(
                    f"cannot read units {units!r}; write e.g. 0-15, 3,7,9-11 or all (layer {layer!r} has units {valid})"
                ) from None
        units = out
    elif isinstance(units, (int, np.integer)):
        units = [int(units)]
    else:
        try:
            units = [int(u) for u in units]
        except (TypeError, ValueError):
            raise UnitRangeError(f"units must be integers, a range such as '0-15', or 'all'; got {units!r}") from None
    if not units:
        raise UnitRangeError(f"no units given; layer {layer!r} has units {valid}")
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise UnitRangeError(
            f"unit {bad[0]} is out of range for layer {layer!r}, which has {channels} units: use {valid}"
        )
    return units


def layer_channels(module: nn.Module, layer: str, size: tuple[int, int], device) -> int:
    """Channels of ``layer``'s output for an input of ``size`` (one cut forward pass)."""
    with torch.no_grad():
        out = forward_layers(module, torch.zeros(1, 3, *size, device=device), [layer])[layer]
    if out.dim() not in (2, 4):
        raise ConvscopeError(
            f"layer {layer!r} outputs shape {tuple(out.shape)}; feature visualization needs (N, C, H, W) "
            "or (N, C): pick a layer from `convscope layers`"
        )
    return int(out.shape[1])


def render(
    model,
    layer: str,
    units,
    steps: int = 512,
    size: int | tuple[int, int] = 128,
    batch: int | None = None,
    seed: int = 0,
    param="fourier",
    transforms="default",
    objective: Objective | None = None,
    lr: float = 0.05,
    progress: bool = True,
    pause=None,
) -> FeatvisResult:
    """Feature visualizations of ``units`` (channels) of ``layer``.

    ``model``: a :class:`~convscope.models.LoadedModel` (its preprocessing maps pixels into the
    model's input range) or a plain ``nn.Module`` (ImageNet mean/std assumed). ``units``: ints,
    ``"0-15"``, ``"all"`` or ``None`` (the first 16). ``size``: image side in pixels (int or
    (H, W)). ``batch``: units optimized together (default 16); the images do not depend on it,
    except through :func:`~convscope.featvis.objectives.diversity`, which couples a batch.
    ``param``: ``"fourier"``, ``"pixel"`` or a factory ``(n, size, generators, device) ->
    ImageParam``. ``transforms``: ``"default"`` (Lucid's standard set), ``"none"`` or a list.
    ``objective``: default ``channel(layer)``, each element maximizing its own unit (see
    :mod:`convscope.featvis.objectives`). ``lr``: Adam's learning rate. ``progress``: a bar on
    stderr over all steps. ``pause``: for a server's model thread (:class:`convscope.web.workers.Pause`):
    between two steps, when ``pause.wanted()``, the model is let go (hooks removed, settings
    restored, its lock released) and ``pause()`` called, which runs other work on the model; the
    images are the same.

    >>> from convscope.models import load_model
    >>> result = render(load_model(), "blocks.2", "0-7", steps=256)   # doctest: +SKIP
    >>> result.images.shape, result.objective.shape                    # doctest: +SKIP
    ((8, 128, 128, 3), (8,))
    """
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if min(size) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    steps = int(steps)
    make_param = get_param(param)
    compose = get_transforms(transforms)
    objective = as_objective(objective, layer)
    if not objective.layers:
        raise ValueError("the objective reads no layer; add one such as channel(layer)")

    # A bare module is wrapped by as_loaded (ImageNet preprocessing), which puts it in eval
    # mode: its modes are taken before, and restored when the model is let go, like those of a
    # LoadedModel. Without ``pause`` the lock is held throughout.
    module = model if isinstance(model, nn.Module) else as_loaded(model).module
    with model_lock(module) if pause is None else contextlib.nullcontext():
        return _render(model, module, layer, units, steps, size, batch, seed, make_param, compose, objective, lr,
                       progress, pause)


@contextlib.contextmanager
def _held(module: nn.Module):
    """``module`` under its lock, in eval mode with ``requires_grad`` off (the gradient is
    wanted for the image only: turning it off for the weights saves the weight-gradient half of
    each backward pass; eval mode keeps BatchNorm statistics fixed and the batch elements
    independent); both restored on exit."""
    with model_lock(module):
        params = list(module.parameters())
        grad_flags = [p.requires_grad for p in params]
        modes = [(m, m.training) for m in module.modules()]
        try:
            for p in params:
                p.requires_grad_(False)
            module.eval()
            yield
        finally:
            for p, flag in zip(params, grad_flags):
                p.requires_grad_(flag)
            for m, mode in modes:
                m.training = mode


def _render(model, module, layer, units, steps, size, batch, seed, make_param, compose, objective, lr, progress,
            pause):
    with _held(module):
        loaded = as_loaded(model)
        prep, device = loaded.preprocessing, loaded.device
        channels = layer_channels(module, layer, size, device)
    units = resolve_units(units, channels, layer)
    batch = min(int(batch or DEFAULT_BATCH), len(units))
    seen: dict[int, int] = {}
    seeds = []
    for u in units:
        seeds.append(element_seed(seed, u, seen.get(u, 0)))
        seen[u] = seen.get(u, 0) + 1
    n = len(units)
    images = np.zeros((n, *size, 3), dtype=np.uint8)
    final = np.zeros(n, dtype=np.float64)
    history = np.zeros((steps, n), dtype=np.float32)
    chunks = [range(i, min(i + batch, n)) for i in range(0, n, batch)]
    start = time.perf_counter()

    def forward(outs, pixels, x, unit_t):
        # Channels-last input: oneDNN then runs every convolution, depthwise ones
        # included, without layout conversions (measured 1.3-1.8x faster on CPU).
        # LayerNotRunError if a layer the objective reads did not run
        run(module, prep.normalize(x).contiguous(memory_format=torch.channels_last), outs)
        return objective(Context(dict(outs), pixels, x, unit_t))

    with Bar(steps * len(chunks), f"featvis {layer}", disable=None if progress else True) as bar:
        for chunk in chunks:
            gens = [torch.Generator().manual_seed(seeds[i]) for i in chunk]
            unit_t = torch.tensor([units[i] for i in chunk], device=device)
            image = make_param(len(chunk), size, gens, device=device)
            opt = torch.optim.Adam(image.params, lr=lr)
            step = 0
            while step < steps:
                # the model is let go between steps only when ``pause`` has work waiting for it
                with _held(module), torch.enable_grad(), capture(module, objective.layers, stop=True) as outs:
                    while step < steps:
                        opt.zero_grad(set_to_none=True)
                        pixels = image()
                        values = forward(outs, pixels, compose(pixels, gens), unit_t)
                        (-values.sum()).backward()
                        opt.step()
                        history[step, chunk.start:chunk.stop] = values.detach().float().cpu().numpy()
                        bar.advance()
                        step += 1
                        if pause is not None and pause.wanted():
                            break
                if pause is not None and step < steps:
                    pause()
            with _held(module), torch.no_grad(), capture(module, objective.layers, stop=True) as outs:
                # Measure what is saved: the final image, quantized, without transforms.
                q = (image().clamp(0, 1) * 255).round().to(torch.uint8)
                pixels = q.float() / 255
                values = forward(outs, pixels, pixels, unit_t)
            images[chunk.start:chunk.stop] = q.permute(0, 2, 3, 1).cpu().numpy()
            final[chunk.start:chunk.stop] = values.double().cpu().numpy()
    seconds = time.perf_counter() - start
    return FeatvisResult(layer, units, images, final, history, seeds, objective.name, seconds)


__all__ = ["render", "FeatvisResult", "contact_sheet", "resolve_units", "element_seed", "layer_channels", "UnitRangeError"]
