"""Pictures of why a result came, drawn one way for the command line and the gallery: the
Grad-CAM of the matched class blended over the model's view of the photo for a keyword (or
like) result, the receptive-field box of the unit's maximum on that view for a unit result.

:func:`why_picture` draws one (a PIL image at the model's input size); ``convscope search
--explain`` writes it as PNG (:func:`write_explanations`), the gallery's ``/explain/`` pages
send it as JPEG (:mod:`convscope.web.finder`). :func:`convscope.display.heat_picture` is the blend itself, also
used for the maps of an uploaded photo.

>>> why_picture(model, entry_image("photos/cat.jpg"), cls=281).size
(224, 224)
>>> write_explanations(model, index.search("cat", top=3), "why/")
['why/01_chelsea.png', ...]
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..data import load_image
from ..display import heat_picture
from ..files import write_bytes_atomic
from . import media
from .search import Result
from .signals import decode_size

#: The receptive-field box: its colour and line width, in pixels of the model's input.
BOX_COLOUR = (255, 40, 40)
BOX_WIDTH = 2


def entry_image(path: str | os.PathLike, time: float | None = None, *, resize: int | None = None) -> Image.Image:
    """The photo at ``path``, or the video frame at ``time`` seconds, RGB and upright, within the
    decoder's budget; with the model's ``resize``, decoded at the reduced scale the index
    decoded it at (a photo's or a frame's alike)."""
    target_size = None if resize is None else decode_size(resize)
    if time is not None or media.is_video(path):
        return media.frame_at(path, time or 0.0, target_size=target_size)
    return load_image(path, target_size=target_size)


def model_view(model, image: Image.Image) -> np.ndarray:
    """The image as the model sees it: resized and centre-cropped, (H, W, 3) uint8."""
    return model.preprocessing.picture(model.preprocessing.transform()(image))


def why_picture(model, image: Image.Image, *, cls: int | str = "top",
                box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The picture of why, at the model's input size: with ``box`` (top, left, bottom, right on
    the model input) the model's view with that receptive-field box drawn in, else the
    Grad-CAM (:func:`convscope.explain.gradcam`) of class ``cls`` (an index, or ``"top"``)
    blended over it."""
    if box is not None:
        view = Image.fromarray(model_view(model, image))
        top, left, bottom, right = box
        ImageDraw.Draw(view).rectangle([left, top, right - 1, bottom - 1], outline=BOX_COLOUR, width=BOX_WIDTH)
        return view
    from ..explain import gradcam

    cam = gradcam(model, image, target=cls)
    view = np.round(np.clip(cam.image, 0, 1) * 255).astype(np.uint8)
    return heat_picture(view, cam.heatmap)


def result_picture(model, result: Result) -> Image.Image:
    """:func:`why_picture` of a search result: a unit result's box, else the Grad-CAM of its
    most probable matched class (a like result, with no matched class, gets its top class's)."""
    image = entry_image(result.path, result.time, resize=model.preprocessing.resize)
    if result.box is not None:
        return why_picture(model, image, box=result.box)
    return why_picture(model, image, cls=result.why[0].index if result.why else "top")


def write_explanations(model, results: Sequence[Result], out_dir: str | os.PathLike) -> list[str]:
    """One PNG per result into ``out_dir`` (``NN_<file name>[_<time>s].png``, in result order):
    its :func:`result_picture`. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, r in enumerate(results, 1):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(r.path).stem)
        if r.time is not None:
            stem += f"_{r.time:g}s"
        path = out / f"{n:02d}_{stem}.png"
        buf = io.BytesIO()
        result_picture(model, r).save(buf, format="PNG")
        write_bytes_atomic(path, buf.getvalue())
        written.append(str(path))
    return written
