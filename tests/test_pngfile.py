"""The atlas's PNG encoder: any reader gets the pixels back, bad arrays are one clear error."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from convscope.pngfile import encode_png


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (187, 187, 3), (300, 2, 3), (9, 4)])
def test_the_pixels_come_back(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(a)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG" and img.mode == ("RGB" if len(shape) == 3 else "L")
        assert np.array_equal(np.asarray(img), a)


def test_a_noise_like_picture_is_no_larger_than_pillows():
    """A projection's picture: noise around mid-grey, as the atlas draws it."""
    rng = np.random.default_rng(0)
    a = np.clip(np.round(128 + 20 * rng.standard_normal((170, 170, 3))), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=6)
    assert len(encode_png(a)) <= 1.05 * buf.tell()
    assert len(encode_png(a)) < a.size  # compressed at all


def test_a_view_is_written_as_its_pixels():
    a = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = a[::2, 3:17]
    with Image.open(io.BytesIO(encode_png(view))) as img:
        assert np.array_equal(np.asarray(img), view)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((2, 2, 2, 3), np.uint8)])
def test_other_arrays_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="uint8") as err:
        encode_png(bad)
    assert "\n" not in str(err.value)
