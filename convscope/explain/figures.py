"""Drawing: figures built on matplotlib's object API with the Agg canvas (no pyplot state, safe
in servers and threads). Every panel takes arrays and an ``Axes``; the result classes compose them."""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def new_figure(n_panels: int, panel_inches: float = 3.0, height: float | None = None, ticks: bool = False):
    """A ``Figure`` with one row of ``n_panels`` axes (no ticks, for pictures, unless ``ticks``);
    returns ``(fig, axes)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_inches * n_panels, height or panel_inches + 0.6))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    if not ticks:
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig, axes


def to_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def show_image(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.clip(image, 0, 1) if image.dtype != np.uint8 else image, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)


def overlay(ax, image: np.ndarray, heat: np.ndarray, title: str | None = None, cmap: str = "jet", alpha: float = 0.5,
            colorbar: bool = False) -> None:
    """``heat`` (H, W) drawn over ``image`` (H, W, 3)."""
    ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    im = ax.imshow(heat, cmap=cmap, alpha=alpha, interpolation="bilinear")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        ax.set_title(title, fontsize=9)


def grid_extent(n: Sequence[int], window: int, stride: int) -> tuple[float, float, float, float]:
    """Where an occlusion map's cells lie on the input: cell (i, j) centred on the centre of the
    square whose top-left is (i*stride, j*stride). As ``imshow``'s (left, right, bottom, top)."""
    ny, nx = n
    c = (window - 1) / 2.0
    return (c - stride / 2, c + (nx - 1) * stride + stride / 2, c + (ny - 1) * stride + stride / 2, c - stride / 2)


def occlusion_map(ax, image: np.ndarray, values: np.ndarray, window: int, stride: int, title: str,
                  cmap: str = "jet") -> None:
    """A map over square positions, placed where the squares' centres lie on a faint input."""
    h, w = image.shape[:2]
    ax.imshow(np.clip(image, 0, 1) * 0.35 + 0.65, interpolation="nearest")
    im = ax.imshow(values, cmap=cmap, extent=grid_extent(values.shape, window, stride), interpolation="nearest", alpha=0.9)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set_title(title, fontsize=9)


def class_map(ax, image: np.ndarray, classes: np.ndarray, labels: dict[int, str], window: int, stride: int,
              title: str, max_legend: int = 8) -> None:
    """The most probable class per square position, one colour per class, legend below the axes.

    Classes beyond the ``max_legend`` most frequent share one grey "other" colour.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    h, w = image.shape[:2]
    values, counts = np.unique(classes, return_counts=True)
    order = values[np.argsort(-counts, kind="stable")]
    shown = list(order[:max_legend])
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
        "#bcbd22", "#7f7f7f",
    ]
    index = np.full(classes.shape, len(shown), dtype=np.int64)
    for k, c in enumerate(shown):
        index[classes == c] = k
    colors = [palette[k % len(palette)] for k in range(len(shown))] + ["#c8c8c8"]
    ax.imshow(np.clip(image, 0, 1) * 0.35 + 0.65, interpolation="nearest")
    ax.imshow(index, cmap=ListedColormap(colors), vmin=-0.5, vmax=len(colors) - 0.5,
              extent=grid_extent(classes.shape, window, stride), interpolation="nearest", alpha=0.9)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    handles = [Patch(color=colors[k], label=f"{c}: {labels.get(int(c), c)}"[:28]) for k, c in enumerate(shown)]
    if len(order) > len(shown):
        handles.append(Patch(color=colors[-1], label=f"{len(order) - len(shown)} other classes"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False, ncol=1)
    ax.set_title(title, fontsize=9)


def draw_box(ax, box: tuple[int, int, int, int], color: str = "yellow") -> None:
    """A rectangle (top, left, bottom, right), bottom/right exclusive, in pixel coordinates."""
    from matplotlib.patches import Rectangle

    top, left, bottom, right = box
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=color, linewidth=1.2))


def tile(maps: np.ndarray, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """(C, h, w) -> one (rows*(h+pad)-pad, cols*(w+pad)-pad) mosaic, near-square, row-major."""
    c, h, w = maps.shape
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), fill, dtype=np.float32)
    for k in range(c):
        r, q = divmod(k, cols)
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = maps[k]
    return out
