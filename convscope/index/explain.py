"""Pictures of why a result came: Grad-CAM of the matched class for a keyword result, the
receptive-field box of the unit's maximum for a unit result. One PNG per result.

>>> write_explanations(model, index.search("cat", top=3), "why/")
['why/01_chelsea.png', ...]
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..data import load_image
from ..files import write_bytes_atomic
from . import media
from .search import Result


def load_entry_image(result: Result) -> Image.Image:
    """The photo, or the video frame at ``result.time``, of a result (RGB, upright)."""
    if result.time is not None:
        return media.frame_at(result.path, result.time)
    return load_image(result.path)


def model_view(model, image: Image.Image) -> np.ndarray:
    """The image as the model sees it: resized and centre-cropped, (H, W, 3) uint8."""
    x = model.preprocessing.transform()(image)[None]
    pixels = model.preprocessing.denormalize(x)[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return np.round(pixels * 255).astype(np.uint8)


def unit_picture(model, result: Result) -> bytes:
    """PNG: the model's view of the result's image with the unit's receptive-field box in red."""
    import io

    view = Image.fromarray(model_view(model, load_entry_image(result)))
    top, left, bottom, right = result.box
    draw = ImageDraw.Draw(view)
    draw.rectangle([left, top, right - 1, bottom - 1], outline=(255, 40, 40), width=2)
    buf = io.BytesIO()
    view.save(buf, format="PNG")
    return buf.getvalue()


def keyword_picture(model, result: Result) -> bytes:
    """PNG: Grad-CAM (:func:`convscope.explain.gradcam`) of the result's most probable matched
    class (it takes one class; the others are listed in ``result.why``)."""
    from ..explain import gradcam

    target = result.why[0].index if result.why else "top"
    image = result.path if result.time is None else load_entry_image(result)  # a path names the figure
    return gradcam(model, image, target=target).png()


def write_explanations(model, results: Sequence[Result], out_dir: str | os.PathLike) -> list[str]:
    """One PNG per result into ``out_dir`` (``NN_<file name>[_<time>s].png``, in result order):
    a unit result's box, else the Grad-CAM of its top matched class (a like result, with no
    matched class, gets the Grad-CAM of its top class). Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, r in enumerate(results, 1):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(r.path).stem)
        if r.time is not None:
            stem += f"_{r.time:g}s"
        path = out / f"{n:02d}_{stem}.png"
        write_bytes_atomic(path, unit_picture(model, r) if r.box is not None else keyword_picture(model, r))
        written.append(str(path))
    return written
