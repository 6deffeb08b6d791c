"""Random, differentiable image transforms applied at every optimization step.

A feature visualization that survives small shifts, zooms and turns is one the unit responds to,
not an adversarial pattern tuned to one pixel grid (Olah et al., "Feature Visualization",
Distill 2017, "transformation robustness"). Each transform takes pixels (N, 3, H, W) and one
``torch.Generator`` per batch element, and draws that element's random choice from that
element's generator only: an element's sequence of transforms is then the same whether it is
rendered alone or in a batch. Every element of a batch keeps the same size, so scale and
rotation work at a fixed output size (zooming in crops, zooming out fills with black, as the
rotation does); consecutive scales and rotations are fused into one resampling.

>>> gens = [torch.Generator().manual_seed(0)]
>>> standard_transforms()(torch.rand(1, 3, 128, 128), gens).shape
torch.Size([1, 3, 140, 140])
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

Generators = Sequence[torch.Generator]


def _choice(values: Sequence, generator: torch.Generator):
    return values[int(torch.randint(len(values), (1,), generator=generator))]


class Transform:
    """Base class: ``transform(x, generators) -> x``, differentiable in ``x``."""

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Pad(Transform):
    """Pad ``width`` pixels on every side (``mode`` as in ``F.pad``; ``value`` in [0, 1] pixels)."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5):
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x, generators):
        w = self.width
        if self.mode == "constant":
            return F.pad(x, [w] * 4, mode="constant", value=self.value)
        return F.pad(x, [w] * 4, mode=self.mode)

    def __repr__(self):
        return f"Pad({self.width}, mode={self.mode!r}, value={self.value})"


class Jitter(Transform):
    """Random crop of (H - d, W - d): a shift by 0..d pixels each way (Lucid's ``jitter``)."""

    def __init__(self, d: int):
        if d < 1:
            raise ValueError(f"jitter must be at least 1 pixel, got {d}")
        self.d = int(d)

    def __call__(self, x, generators):
        d = self.d
        h, w = x.shape[-2] - d, x.shape[-1] - d
        crops = []
        # unbind first: each crop's backward then fills one element, not the whole batch
        for xi, g in zip(x.unbind(0), generators):
            dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=g))
            crops.append(xi[:, dy:dy + h, dx:dx + w])
        return torch.stack(crops)

    def __repr__(self):
        return f"Jitter({self.d})"


class _Affine(Transform):
    """A random linear map about the image centre, as a 2x2 matrix in pixel units.

    ``inverse(generator)`` draws one element's choice and returns the map from output to input
    coordinates, the form that resampling needs.
    """

    def inverse(self, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, x, generators):
        return _warp(x, [self.inverse(g) for g in generators])


class RandomScale(_Affine):
    """Zoom by a factor drawn from ``scales`` (1.1: 10% larger), at a fixed output size."""

    def __init__(self, scales: Sequence[float]):
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be positive numbers, got {scales!r}")

    def inverse(self, generator):
        s = _choice(self.scales, generator)
        return torch.eye(2, dtype=torch.float64) / s

    def __repr__(self):
        return f"RandomScale({self.scales})"


class RandomRotate(_Affine):
    """Rotate by an angle in degrees drawn from ``angles`` (positive: counter-clockwise on
    screen), at a fixed output size."""

    def __init__(self, angles: Sequence[float]):
        self.angles = [float(a) for a in angles]
        if not self.angles:
            raise ValueError("angles must not be empty")

    def inverse(self, generator):
        a = math.radians(_choice(self.angles, generator))
        c, s = math.cos(a), math.sin(a)
        # Output->input map in (x, y) with y pointing down, so that a positive angle turns the
        # image counter-clockwise on screen, as PIL's rotate and torch.rot90 do.
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)

    def __repr__(self):
        return f"RandomRotate({self.angles})"


def _warp(x: torch.Tensor, inverses: list[torch.Tensor]) -> torch.Tensor:
    """Resample each element of ``x`` with its own output->input 2x2 map about the centre."""
    n, _, h, w = x.shape
    # With align_corners=False a normalized coordinate u maps to (u * W/2) pixels from the
    # centre, so the pixel-unit map A becomes S^-1 A S in normalized units.
    s = torch.tensor([[w / 2, 0.0], [0.0, h / 2]], dtype=torch.float64)
    s_inv = torch.linalg.inv(s)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    for i, a in enumerate(inverses):
        theta[i, :, :2] = s_inv @ a @ s
    if all(torch.equal(t[:, :2], torch.eye(2, dtype=torch.float64)) for t in theta):
        return x
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Compose(Transform):
    """Apply ``transforms`` in order; runs of scales and rotations are resampled once."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"a transform must be callable (x, generators) -> x, got {t!r}")

    def __call__(self, x, generators):
        pending: list[list[torch.Tensor]] | None = None
        for t in self.transforms:
            if isinstance(t, _Affine):
                # Draw now, in list order, so each generator's sequence of draws is fixed.
                inv = [t.inverse(g) for g in generators]
                # Output->input maps compose in reverse: A_total^-1 = A_1^-1 ... A_k^-1.
                pending = inv if pending is None else [p @ q for p, q in zip(pending, inv)]
                continue
            if pending is not None:
                x, pending = _warp(x, pending), None
            x = t(x, generators)
        if pending is not None:
            x = _warp(x, pending)
        return x

    def __len__(self):
        return len(self.transforms)

    def __repr__(self):
        return f"Compose({self.transforms})"


def standard_transforms() -> Compose:
    """Lucid's standard set: pad 12 (grey), jitter 8, scale 0.9-1.1, rotate -10..10 degrees
    (0 weighted 6 times, as in Lucid), jitter 4. A 128 px image reaches the model at 140 px."""
    return Compose(
        [
            Pad(12, mode="constant", value=0.5),
            Jitter(8),
            RandomScale([1 + (i - 5) / 50.0 for i in range(11)]),
            RandomRotate(list(range(-10, 11)) + 5 * [0]),
            Jitter(4),
        ]
    )


def get_transforms(spec) -> Compose:
    """``"default"``/``None`` -> :func:`standard_transforms`; a list -> :class:`Compose`; ``[]`` -> none."""
    if spec is None or (isinstance(spec, str) and spec == "default"):
        return standard_transforms()
    if isinstance(spec, Compose):
        return spec
    if isinstance(spec, str) and spec == "none":
        return Compose([])
    if isinstance(spec, Transform):
        return Compose([spec])
    if isinstance(spec, (list, tuple)):
        return Compose(spec)
    raise TypeError(f"transforms must be 'default', 'none' or a list of transforms, got {spec!r}")


__all__ = [
    "Transform", "Pad", "Jitter", "RandomScale", "RandomRotate", "Compose",
    "standard_transforms", "get_transforms",
]
