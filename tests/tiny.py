"""The tests' tiny hand-made convnets: one class, and the stage recipes the test files use.

A recipe builds new modules each call, so ``torch.manual_seed(s); TinyNet(*recipe())`` gives the
same weights every time (the modules are made in the same order as the parameters are drawn).
"""
from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """``features`` (an ``nn.Sequential`` of the given stages), then global average pooling and a
    linear head of ``classes`` outputs."""

    def __init__(self, *stages: nn.Module, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(*stages)
        channels = [m.out_channels for m in stages if isinstance(m, nn.Conv2d)][-1]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.head(self.features(x))


def pooled(batchnorm: bool = False) -> list[nn.Module]:
    """Three conv stages with max pooling between them (switches for the deconvnet), an in-place
    ReLU among them, and optionally a BatchNorm in the second stage (``features.4``)."""
    second = [nn.Conv2d(8, 12, 3, padding=1)] + ([nn.BatchNorm2d(12)] if batchnorm else [])
    return [
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        *second, nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
    ]


def strided() -> list[nn.Module]:
    """Conv-BN-ReLU(in place), then two strided conv stages: stride 4 in all, no pooling."""
    return [
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU(),
    ]


def small() -> list[nn.Module]:
    """Two conv stages for 64 x 64 inputs: small enough to build a whole atlas in seconds."""
    return [
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
    ]
