"""Shared fixtures. Everything here runs offline and uses only files the tests make or a dependency ships."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

# A private cache for the whole session, so tests never depend on a user's earlier runs.
os.environ.setdefault("CONVSCOPE_CACHE", os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"convscope-test-cache-{os.getpid()}"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two (and far faster on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def web_atlas_dir(tmp_path_factory):
    """The tiny real atlas the HTTP and browser tests share, built once per session."""
    from .test_web import tiny_atlas_dir

    return tiny_atlas_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def default_model():
    import convscope

    return convscope.load_model(device="cpu")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """scikit-image's sample photos written as PNG files."""
    from convscope.data import sample_photos

    return sample_photos(tmp_path_factory.mktemp("samples"))[0].parent


def write_image(path, mode="RGB", size=(64, 48), color=(200, 30, 40)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = color
    arr[: size[1] // 2, : size[0] // 3] = (20, 220, 60)
    Image.fromarray(arr).convert(mode).save(path)
    return path
