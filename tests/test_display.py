"""The display of projections: robust contrast and the energy crop, on synthetic arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.display import FRACTION, crop_wanted, energy_box, robust_scale, to_picture


def _blob(h=224, w=224, cy=30, cx=190, sigma=6.0, amp=1.0, seed=0):
    yy, xx = np.mgrid[:h, :w]
    g = amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    noise = np.random.default_rng(seed).normal(0, 1e-4, (3, h, w))
    return np.stack([g, -0.5 * g, 0.25 * g]) + noise


def test_a_blob_in_a_corner_is_cropped_to_it():
    p = _blob()
    t, l, b, r = energy_box(p)
    assert b - t == r - l  # square
    assert t <= 30 - 6 and b >= 30 + 6 and l <= 190 - 6 and r >= 190 + 6  # holds the blob's core
    assert (b - t) <= 0.35 * 224 and (b - t) >= 0.25 * 224  # small, but at least min_size
    assert 0 <= t and 0 <= l and b <= 224 and r <= 224
    e = (p**2).sum(0)
    assert e[t:b, l:r].sum() >= FRACTION * e.sum()
    picture, box = to_picture(p, crop=True)
    assert box == (t, l, b, r) and picture.shape == (b - t, r - l, 3) and picture.dtype == np.uint8
    # the blob's centre is full red, zero is mid-grey, the negative green channel goes dark
    cy, cx = 30 - t, 190 - l
    scale = robust_scale(p[:, t:b, l:r])  # taken inside the crop: the blob covers more than 0.5 % of it
    assert 0.5 < scale < 1.0
    expected = np.round((0.5 + 0.5 * np.clip(p[:, 30, 190] / scale, -1, 1)) * 255)
    assert picture[cy, cx].tolist() == expected.tolist() and picture[cy, cx, 0] == 255
    assert picture[cy, cx, 1] < 100 and 128 < picture[cy, cx, 2] < 255
    # without crop: the whole array
    full, box = to_picture(p)
    assert box == (0, 0, 224, 224) and full.shape == (224, 224, 3)


def test_a_centred_blob_keeps_a_centred_box_and_the_box_stays_in_the_image():
    p = _blob(cy=112, cx=112, sigma=30)
    t, l, b, r = energy_box(p)
    assert abs((t + b) / 2 - 112) <= 1 and abs((l + r) / 2 - 112) <= 1
    edge = _blob(cy=0, cx=223, sigma=4)
    t, l, b, r = energy_box(edge)
    assert t == 0 and r == 224 and b - t == r - l >= 56


def test_one_outlier_pixel_does_not_flatten_the_contrast():
    rng = np.random.default_rng(1)
    p = rng.normal(0, 1, (3, 64, 64))
    p[0, 5, 5] = 1e4  # one pixel ten thousand times stronger
    scale = robust_scale(p)
    assert 2.3 < scale < 2.9  # the 99th percentile of |N(0, 1)|, about 2.58
    picture, _ = to_picture(p)
    assert tuple(picture[5, 5])[0] == 255
    spread = picture.astype(float).std()
    assert spread > 30  # the noise is visible, not a flat grey
    # the largest-value display (as DVT's norm01c) would leave it flat: for comparison
    flat = np.round((0.5 + 0.5 * p / np.abs(p).max()) * 255)
    flat[0, 5, 5] = 128
    assert flat.std() < 1 and picture.astype(float).std() > 30 * flat.std()


def test_zeros_give_a_flat_grey_picture_and_sparse_projections_still_show():
    picture, box = to_picture(np.zeros((3, 10, 12)), crop=True)
    assert box == (0, 0, 10, 12) and picture.shape == (10, 12, 3) and (picture == 128).all()
    assert robust_scale(np.zeros((3, 4, 4))) == 0.0
    sparse = np.zeros((3, 100, 100))
    sparse[:, 40, 60] = [2.0, -2.0, 1.0]  # 1 pixel in 10,000: under the 99th percentile
    assert robust_scale(sparse) == pytest.approx(2.0, rel=0.01)
    picture, _ = to_picture(sparse)
    assert tuple(picture[40, 60]) == (255, 0, 191) and tuple(picture[0, 0]) == (128, 128, 128)
    nan = np.full((3, 5, 5), np.nan)
    assert (to_picture(nan)[0] == 128).all()


def test_inputs_and_errors():
    t = torch.zeros(1, 3, 6, 6)
    t[0, 0, 2, 2] = 1.0
    picture, _ = to_picture(t)
    assert tuple(picture[2, 2]) == (255, 128, 128)
    grey, _ = to_picture(np.ones((6, 6)))
    assert grey.shape == (6, 6, 3) and (grey == 255).all()
    assert crop_wanted((0, 0, 224, 224), (224, 224)) and crop_wanted((0, 10, 200, 224), (224, 224))
    assert not crop_wanted((10, 10, 150, 150), (224, 224))
    with pytest.raises(ValueError, match="shape"):
        to_picture(np.zeros((4, 6, 6)))
    with pytest.raises(ValueError, match="fraction"):
        energy_box(np.ones((3, 4, 4)), fraction=0)
    with pytest.raises(ValueError, match="percentile"):
        robust_scale(np.ones((3, 4, 4)), percentile=0)


def _old_display(p: np.ndarray) -> np.ndarray:
    """convscope's first drawing (``backproject.to_image`` until issue 19), written out here as
    the reference: centred on the mean, five standard deviations to black or white."""
    p = p - p.mean()
    return np.round(np.clip(0.5 + 0.1 * p / p.std(), 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


def test_the_new_display_reads_deep_projections_better_than_the_old():
    # a small blob on a big field: the old display (mean, 5 std) shows it on grey, as the new one
    # does, but the crop makes it fill a quarter of the picture instead of 0.2 % of it
    p = _blob(sigma=4)
    old = _old_display(p)
    new, (t, l, b, r) = to_picture(p, crop=True)
    strong = lambda img: (np.abs(img.astype(int) - 128).max(2) > 64).mean()
    assert strong(new) > 5 * strong(old)


def _picture_as_first_written(p, percentile=99.0):
    """to_picture's numbers as first written (float64 throughout, np.percentile with a copy, the
    nonzero values taken apart): the faster code must give the same bytes."""
    p = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.abs(p).ravel()
    nonzero = a[a > 0]
    if nonzero.size == 0:
        scale = 0.0
    else:
        scale = float(np.percentile(a, percentile))
        scale = scale if scale > 0 else float(np.percentile(nonzero, percentile))
    img = np.full(p.shape, 0.5) if scale == 0 else 0.5 + 0.5 * np.clip(p / scale, -1.0, 1.0)
    return np.ascontiguousarray(np.round(img * 255).astype(np.uint8).transpose(1, 2, 0))


@pytest.mark.parametrize("case", ["noise", "sparse", "blob", "mostly_zero", "zero", "nan_inf", "float32_tensor"])
def test_pictures_are_the_numbers_first_written(case):
    rng = np.random.default_rng(7)
    p = {
        "noise": lambda: rng.normal(0, 1, (3, 57, 81)),
        "sparse": lambda: rng.normal(0, 1, (3, 90, 90)) * (rng.random((1, 90, 90)) > 0.97),
        "blob": lambda: _blob(),
        "mostly_zero": lambda: np.pad(rng.normal(0, 1, (3, 2, 2)), ((0, 0), (40, 40), (40, 40))),
        "zero": lambda: np.zeros((3, 16, 16)),
        "nan_inf": lambda: np.where(rng.random((3, 30, 30)) > 0.9, np.nan, rng.normal(0, 1, (3, 30, 30))) + np.pad(
            np.full((3, 1, 1), np.inf), ((0, 0), (0, 29), (0, 29))),
        "float32_tensor": lambda: torch.randn(3, 64, 48, generator=torch.Generator().manual_seed(1)),
    }[case]()
    picture, box = to_picture(p)
    assert box == (0, 0, *np.asarray(p).shape[1:])
    assert np.array_equal(picture, _picture_as_first_written(p))
    cropped, (t, l, b, r) = to_picture(p, crop=True)
    assert np.array_equal(cropped, _picture_as_first_written(np.asarray(p, dtype=np.float64)[:, t:b, l:r]))
    assert np.isfinite(np.asarray(p, dtype=np.float64)).all() == (case != "nan_inf")  # the caller's array untouched
