"""Image parameterizations: the tensors the optimizer changes, and how they become pixels.

A parameterization holds one image per batch element, each drawn from that element's own
``torch.Generator``, so that an element's start does not depend on what else is in the batch.
Calling it gives pixels in [0, 1], shape (N, 3, H, W); :func:`convscope.featvis.render` then
maps them into the model's input range with the model's own mean and std.

>>> gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
>>> image = fourier(2, (128, 128), gens)
>>> image().shape
torch.Size([2, 3, 128, 128])
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..choices import PARAMS as PARAM_NAMES, keyed
from ..errors import unknown_name_error

# The square root of the RGB colour covariance of ImageNet photos, from its SVD: colour
# channel c of a pixel is sum_k M[c, k] * z_k for decorrelated components z. Optimizing the
# decorrelated z with equal step sizes avoids the washed-out, single-colour-noise images that
# plain RGB optimization gives. Source: Lucid, lucid/optvis/param/color.py,
# `color_correlation_svd_sqrt` (github.com/tensorflow/lucid, Apache-2.0), as used in Olah,
# Mordvintsev & Schubert, "Feature Visualization", Distill 2017; Lucent copies the same values.
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02],
     [0.27, 0.00, -0.05],
     [0.27, -0.09, 0.03]]
)
# Lucid scales the matrix so that its largest column has unit norm.
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


def decorrelated_to_rgb(t: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) decorrelated colour components -> (N, 3, H, W) RGB (before the sigmoid)."""
    m = COLOR_CORRELATION_NORMALIZED.to(device=t.device, dtype=t.dtype)
    return torch.einsum("ck,nkhw->nchw", m, t)


def _draw(shape: Sequence[int], generators: Sequence[torch.Generator], sd: float, device) -> torch.Tensor:
    # Each element from its own generator, on the CPU, so that the draw is the same on any device
    # and for any batch it is part of.
    return torch.stack([torch.randn(*shape, generator=g) * sd for g in generators]).to(device)


def _size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class ImageParam:
    """Base: ``params`` (tensors to optimize) and ``__call__() -> pixels`` (N, 3, H, W) in [0, 1]."""

    params: list[torch.Tensor]

    def __call__(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FourierImage(ImageParam):
    """An image stored as its 2-D real Fourier spectrum, scaled by 1/f.

    Natural images have a power spectrum that falls off roughly as 1/f^2; scaling each
    frequency's coefficient by ``1 / max(f, 1/max(H, W)) ** decay_power`` makes a step of the
    optimizer move all frequencies about equally in image space, which keeps the
    high-frequency noise of plain pixel optimization down (Lucid's ``fft_image``). The inverse
    transform is orthonormal and the result is divided by 4 (Lucid's constant, against
    saturation), decorrelated in colour and squashed with a sigmoid into [0, 1].
    """

    def __init__(self, n: int, size, generators: Sequence[torch.Generator], *, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, device=None):
        if len(generators) != n:
            raise ValueError(f"need one generator per image: got {len(generators)} for {n} images")
        self.h, self.w = _size(size)
        fy = torch.fft.fftfreq(self.h)[:, None]
        fx = torch.fft.rfftfreq(self.w)[None, :]
        freqs = torch.sqrt(fx * fx + fy * fy)
        self.scale = (1.0 / torch.clamp(freqs, min=1.0 / max(self.h, self.w)) ** decay_power).to(device)
        self.decorrelate = decorrelate
        self.spectrum = _draw((3, self.h, self.w // 2 + 1, 2), generators, sd, device).requires_grad_(True)
        self.params = [self.spectrum]

    def __call__(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        t = torch.fft.irfft2(spectrum, s=(self.h, self.w), norm="ortho") / 4.0
        if self.decorrelate:
            t = decorrelated_to_rgb(t)
        return torch.sigmoid(t)


class PixelImage(ImageParam):
    """An image stored pixel by pixel, as logits (optionally of decorrelated colours)."""

    def __init__(self, n: int, size, generators: Sequence[torch.Generator], *, sd: float = 0.01,
                 decorrelate: bool = True, device=None):
        if len(generators) != n:
            raise ValueError(f"need one generator per image: got {len(generators)} for {n} images")
        h, w = _size(size)
        self.decorrelate = decorrelate
        self.logits = _draw((3, h, w), generators, sd, device).requires_grad_(True)
        self.params = [self.logits]

    def __call__(self) -> torch.Tensor:
        t = self.logits
        if self.decorrelate:
            t = decorrelated_to_rgb(t)
        return torch.sigmoid(t)


def fourier(n: int, size, generators: Sequence[torch.Generator], device=None, **kwargs) -> FourierImage:
    """``n`` images of ``size`` (int or (H, W)) in Fourier space with decorrelated colour."""
    return FourierImage(n, size, generators, device=device, **kwargs)


def pixel(n: int, size, generators: Sequence[torch.Generator], device=None, **kwargs) -> PixelImage:
    """``n`` images of ``size`` stored as plain (colour-decorrelated) pixel logits."""
    return PixelImage(n, size, generators, device=device, **kwargs)


#: The parameterizations by name, keyed by :data:`convscope.choices.PARAMS` (the CLI's --param choices).
PARAMS: dict[str, Callable[..., ImageParam]] = keyed(PARAM_NAMES, {"fourier": fourier, "pixel": pixel})


def get_param(name_or_factory) -> Callable[..., ImageParam]:
    if callable(name_or_factory):
        return name_or_factory
    try:
        return PARAMS[name_or_factory]
    except (KeyError, TypeError):
        raise unknown_name_error(
            "parameterization", name_or_factory, PARAMS, list_all=True,
            hint="Or pass a callable (n, size, generators, device) -> ImageParam.",
        ) from None


__all__ = [
    "COLOR_CORRELATION_SVD_SQRT", "FourierImage", "PixelImage", "ImageParam", "PARAMS",
    "fourier", "pixel", "get_param", "decorrelated_to_rgb",
]
