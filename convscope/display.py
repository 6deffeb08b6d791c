"""How a projection array becomes a picture a person reads: robust contrast and an energy crop.

A projection (deconvnet, guided backprop, gradient) is a signed (3, H, W) array in the model
input's gradient units. Zero means "no effect" and is drawn mid-grey, as in the figures of Zeiler
& Fergus 2014 and Springenberg et al. 2015 and in the Deep Visualization Toolbox (its ``norm01c``
maps 0 to 0.5); the colours are those of the input channels. Two choices make deep units readable:

* **Contrast by a percentile, not by the largest value.** DVT divides by the single largest
  absolute value, and convscope's first drawing (``backproject.to_image``, gone since issue 19)
  by five standard deviations of the whole array; one bright pixel (or a small blob on a 224-pixel field that is mostly zero) then
  leaves the rest faint. Here the scale is the ``percentile`` (99) of ``|x|`` over the shown
  pixels and channels, symmetric around zero, and the 1 % of values beyond it are clipped (captum's
  ``visualize_image_attr`` clips its outliers the same way, at 2 % of the attribution mass). A
  projection with fewer nonzero values than that takes the percentile of its nonzero values; an
  all-zero one is flat grey.
* **A crop to where the energy is**, for units whose receptive field is the whole input: the
  smallest box (found by trimming the weakest edge row or column while the rest holds
  ``fraction`` (80 %) of the squared projection) is padded, made square and kept at least
  ``min_size`` of the image, and the contrast is then taken inside it. The same box cuts the photo
  patch shown beside it, so the two stay aligned.

Only the picture changes: the raw arrays are kept as they are. This is the one drawing of a
projection: the atlas, the gallery's fills, ``evolve``, ``explain`` and ``convscope project`` all
draw with :func:`to_picture`.

>>> picture, box = to_picture(pixels, crop=True)   # (h, w, 3) uint8 and (top, left, bottom, right)
"""
from __future__ import annotations

import numpy as np

#: The share of ``|x|`` values (per projection) below the white / black point.
PERCENTILE = 99.0
#: The share of the projection's energy (sum of squares) the crop keeps.
FRACTION = 0.8


def _as_array(projection) -> np.ndarray:
    if hasattr(projection, "detach"):  # a torch tensor, without importing torch here
        projection = projection.detach().float().cpu().numpy()
    p = np.asarray(projection, dtype=np.float64)
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[0] not in (1, 3):
        raise ValueError(f"a projection has shape (3, H, W) or (H, W), got {p.shape}")
    if np.isfinite(p).all():  # one pass, no copy: the usual case, and each drawing converts up to three times
        return p
    return np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0)


def robust_scale(projection, percentile: float = PERCENTILE) -> float:
    """The value drawn as full white (and its negative as full black): the ``percentile`` of
    ``|x|``, or of the nonzero ``|x|`` where fewer values than that are nonzero; 0.0 for an
    all-zero projection."""
    a = np.abs(_as_array(projection)).ravel()
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if a.size == 0 or not a.max() > 0:
        return 0.0
    scale = float(np.percentile(a, percentile, overwrite_input=True))  # `a` is ours: no copy
    return scale if scale > 0 else float(np.percentile(a[a > 0], percentile))


def energy_box(projection, fraction: float = FRACTION, pad: float = 0.15, min_size: float = 0.25) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive: the box of the (3, H, W) or (H, W)
    ``projection`` that holds ``fraction`` of its energy (sum of squares over channels), padded by
    ``pad`` of its side on each side, made square where the image allows, and at least
    ``min_size`` of the image's shorter side; the whole image for an all-zero projection."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    e = (_as_array(projection) ** 2).sum(0)
    h, w = e.shape
    total = float(e.sum())
    if total <= 0:
        return 0, 0, h, w
    t, l, b, r = 0, 0, h, w
    kept = total
    sub = np.cumsum(np.cumsum(e, 0), 1)  # a summed-area table: the energy of any edge row or column

    def area(t0, l0, b0, r0) -> float:
        s = sub[b0 - 1, r0 - 1]
        s -= sub[t0 - 1, r0 - 1] if t0 > 0 else 0.0
        s -= sub[b0 - 1, l0 - 1] if l0 > 0 else 0.0
        s += sub[t0 - 1, l0 - 1] if t0 > 0 and l0 > 0 else 0.0
        return float(s)

    while b - t > 1 or r - l > 1:
        edges = []
        if b - t > 1:
            edges += [(area(t, l, t + 1, r), "t"), (area(b - 1, l, b, r), "b")]
        if r - l > 1:
            edges += [(area(t, l, b, l + 1), "l"), (area(t, r - 1, b, r), "r")]
        cost, side = min(edges)
        if kept - cost < fraction * total:
            break
        kept -= cost
        t, b, l, r = t + (side == "t"), b - (side == "b"), l + (side == "l"), r - (side == "r")
    # pad, square, at least min_size, inside the image
    side = max(b - t, r - l)
    side = int(round(side * (1 + 2 * pad)))
    side = min(max(side, int(round(min_size * min(h, w))), 1), max(h, w))
    cy, cx = (t + b) / 2, (l + r) / 2

    def span(centre: float, n: int) -> tuple[int, int]:
        size = min(side, n)
        start = int(round(centre - size / 2))
        start = min(max(start, 0), n - size)
        return start, start + size

    (t, b), (l, r) = span(cy, h), span(cx, w)
    return t, l, b, r


def crop_wanted(box: tuple[int, int, int, int], input_size: tuple[int, int], share: float = 0.5) -> bool:
    """Whether an example whose receptive-field ``box`` (top, left, bottom, right, clipped to the
    input) covers more than ``share`` of the ``input_size`` (H, W) gets the energy crop: its field
    is (nearly) the whole input, so where the unit looks is not told by the box."""
    t, l, b, r = box
    return (b - t) * (r - l) > share * input_size[0] * input_size[1]


def shown_box(projection, box: tuple[int, int, int, int], input_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of ``projection`` (cut to an example's receptive-field ``box`` on a model input of
    ``input_size``) that its picture shows, (top, left, bottom, right) inside it: the
    :func:`energy_box` where the field is (nearly) the whole input (:func:`crop_wanted`), else
    all of it. The atlas and ``evolve`` cut the projection and the photo patch by this box."""
    h, w = _as_array(projection).shape[1:]
    return energy_box(projection) if crop_wanted(box, input_size) else (0, 0, h, w)


def to_picture(projection, crop: bool = False, percentile: float = PERCENTILE, fraction: float = FRACTION,
               pad: float = 0.15, min_size: float = 0.25) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The picture of one projection, (h, w, 3) uint8, and the box of the array it shows.

    Zero is mid-grey (128); ``+robust_scale`` and beyond are full intensity, ``-robust_scale``
    and below zero intensity, per input channel; the scale is taken on the pixels shown. With
    ``crop`` (for units whose receptive field is the whole input) the picture is the
    :func:`energy_box` of the projection; otherwise the box is the whole array.

    >>> picture, (t, l, b, r) = to_picture(np.zeros((3, 8, 8)))
    >>> int(picture.min()), int(picture.max()), (t, l, b, r)
    (128, 128, (0, 0, 8, 8))
    """
    p = _as_array(projection)
    h, w = p.shape[1:]
    box = energy_box(p, fraction, pad, min_size) if crop else (0, 0, h, w)
    t, l, b, r = box
    p = p[:, t:b, l:r]
    scale = robust_scale(p, percentile)
    if scale == 0:
        img = np.full(p.shape, 0.5)
    else:  # 0.5 + 0.5 * clip(p / scale, -1, 1), in place: the same numbers, a third of the passes
        img = p / scale
        np.clip(img, -1.0, 1.0, out=img)
        img *= 0.5
        img += 0.5
    img *= 255
    img = np.round(img, out=img).astype(np.uint8).transpose(1, 2, 0)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img), box


def heat_picture(picture: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "inferno") -> Image.Image:
    """A heat map (h, w), any range, scaled to [0, 1], resized and blended over ``picture``
    (H, W, 3) uint8: bright where the heat is."""
    import matplotlib
    from PIL import Image

    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    if heat.ndim == 3:
        heat = heat.mean(axis=0) if heat.shape[0] in (1, 3) else heat.mean(axis=-1)
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    H, W = picture.shape[:2]
    if heat.shape != (H, W):
        heat = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((W, H), Image.BILINEAR), np.float32) / 255
    colours = matplotlib.colormaps[cmap](heat)[..., :3] * 255
    mixed = (1 - alpha) * picture.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))

__all__ = ["heat_picture", "FRACTION", "PERCENTILE", "crop_wanted", "energy_box", "robust_scale", "shown_box", "to_picture"]
