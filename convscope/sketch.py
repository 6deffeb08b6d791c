"""The streaming histogram of the scan: fixed log-spaced bins read straight from float32 bits.

Counts from any split of the data add up to exactly the counts of the whole, on CPU and GPU
alike, so the scan's per-unit distributions merge exactly (:class:`Sketch`).
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Sketch:
    """A streaming histogram with fixed log-spaced bins, read straight from the float32 bits.

    Each value's bin is its sign, its 8 exponent bits and the top ``sub`` mantissa bits: with
    ``sub=3``, 2 x 2048 bins that cover every float32 (zero, denormals, infinities and NaN
    included), each octave cut into 8 equal slices, so a bin spans at most 1/8 of its lower edge
    and a quantile read at a bin's midpoint is within 6.25 percent (relative) of the truth.
    Computing a bin is one shift of the bit pattern.

    Why this and not a t-digest or a KLL sketch: the bins are fixed before any data is seen, so
    counts from any split of the data add up to exactly the counts of the whole (integer
    addition), identically on CPU and GPU, with no range to guess in advance.

    Positions: maps larger than ``grid`` x ``grid`` are sampled on a fixed grid (every
    ``ceil(H / grid)``-th row and ``ceil(W / grid)``-th column, the same positions in every
    image), so that a 112 x 112 map costs what a 28 x 28 one does; ``grid=0`` counts every
    position. Quantiles, the fraction of positive positions and the minimum come from these
    positions; the mean and the maximum from all of them.
    """

    sub: int = 3
    grid: int = 32

    def __post_init__(self):
        if not 0 <= self.sub <= 6 or self.grid < 0:
            raise ValueError(f"sketch needs 0 <= sub <= 6 and grid >= 0, got {self}")

    @property
    def half(self) -> int:
        return 1 << (8 + self.sub)

    @property
    def bins(self) -> int:
        return 2 * self.half

    @property
    def shift(self) -> int:
        return 23 - self.sub

    def steps(self, height: int, width: int) -> tuple[int, int]:
        """Row and column steps of the sampling grid for an ``height`` x ``width`` map."""
        if not self.grid:
            return 1, 1
        return -(-height // self.grid), -(-width // self.grid)

    def positions(self, height: int, width: int) -> int:
        sy, sx = self.steps(height, width)
        return -(-height // sy) * -(-width // sx)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """int32 codes of float32 values: -half..-1 for negative values (by magnitude, -half being
        -0.0's neighbourhood), 0..half-1 for positive ones. Bin ``code + half`` in the raw layout."""
        return x.view(torch.int32) >> self.shift

    def order(self) -> torch.Tensor:
        """Raw bin indices sorted by the values they hold (ascending)."""
        half = self.half
        return torch.cat([torch.arange(half - 1, -1, -1), torch.arange(half, 2 * half)])

    def edges(self) -> torch.Tensor:
        """The ``bins + 1`` edges (float64, ascending, outermost +-inf) of the bins in
        :meth:`order`; negative bins are (left, right], positive ones [left, right)."""
        half = self.half
        lower = (torch.arange(half, dtype=torch.int64) << self.shift).to(torch.int32).view(torch.float32).double()
        lower = torch.where(torch.isfinite(lower), lower, torch.full_like(lower, float("inf")))
        lower = torch.cat([lower, torch.tensor([float("inf")], dtype=torch.float64)])
        return torch.cat([-lower.flip(0), lower[1:]])

    def mids(self) -> torch.Tensor:
        """Representative value of each bin in :meth:`order` (float64): its midpoint; 0 for the
        bins of zero and denormals (``|v| < 2**-126``), the finite edge for the outermost."""
        edges = self.edges()
        left, right = edges[:-1], edges[1:]
        mids = torch.where(torch.isinf(left), right, torch.where(torch.isinf(right), left, (left + right) / 2))
        tiny = 1 << self.sub
        mids[self.half - tiny : self.half + tiny] = 0.0
        return mids

    @property
    def first_positive(self) -> int:
        """Index (in :meth:`order`) of the first bin of values >= 2**-126 (normal positives)."""
        return self.half + (1 << self.sub)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


__all__ = ["Sketch"]
