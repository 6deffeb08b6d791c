"""What every one-image explanation needs: the model input, the target class, the default layer,
the top predictions, and the base class of the results (arrays, a figure, files, Jupyter PNG)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConvscopeError
from ..files import atomic_write


class ExplainError(ConvscopeError, ValueError):
    """An explanation asked for something the model or the image cannot give (bad target, layer,
    window); the message says what to use instead."""


def prepare(model, image) -> tuple[torch.Tensor, np.ndarray, str]:
    """The model input (1, 3, H, W) on the model's device, the same as display pixels (H, W, 3)
    float in [0, 1], and a name for the image.

    ``image`` is a path, a PIL image, an (H, W, 3) uint8 array (resized and centre-cropped with
    the model's own preprocessing), or a tensor (3, H, W) / (1, 3, H, W) taken as an already
    normalized model input (any size the model accepts).
    """
    from PIL import Image

    name = "image"
    if isinstance(image, (str, os.PathLike)):
        from ..data import load_image

        name = Path(image).name
        image = load_image(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ExplainError(f"an image array must be (H, W, 3), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.asarray(arr, dtype=np.float64) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr[..., :3])
    if isinstance(image, Image.Image):
        x = model.preprocessing.transform()(image.convert("RGB")).unsqueeze(0)
    elif isinstance(image, torch.Tensor):
        x = image.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ExplainError(f"a model input tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        x = x.float()
    else:
        raise TypeError(f"image must be a path, a PIL image, an array or a tensor, got {type(image).__name__}")
    x = x.to(model.device)
    pixels = model.preprocessing.denormalize(x)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    return x, pixels, name


def resolve_target(target, logits: torch.Tensor) -> int:
    """``"top"`` (or ``None``): the most probable class of ``logits`` (1, K); else a class index
    (an int, or a string of digits as the CLI passes it)."""
    k = int(logits.shape[-1])
    if target is None or (isinstance(target, str) and target.strip().lower() == "top"):
        return int(logits[0].argmax())
    if isinstance(target, str):
        text = target.strip()
        if not text.lstrip("-").isdigit():
            raise ExplainError(f"target must be a class index (0..{k - 1}) or 'top', got {target!r}")
        target = int(text)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise ExplainError(f"target must be a class index (0..{k - 1}) or 'top', got {target!r}")
    if not 0 <= int(target) < k:
        raise ExplainError(f"target class {int(target)} is out of range: this model has {k} classes, so use 0..{k - 1} or 'top'")
    return int(target)


def default_layer(model) -> str:
    """The last convolutional stage: the deepest of the catalogue's default layers whose map is
    larger than 1x1 (``bn2`` for EfficientNet-Lite0, ``layer4`` for a ResNet, ``features`` for
    a VGG)."""
    cat = model.layers
    spatial = [n for n in cat.default if cat.shape(n)[1] * cat.shape(n)[2] > 1]
    if not spatial:
        raise ExplainError("this model has no convolutional layer with a map larger than 1x1; pass layer= one from `convscope layers`")
    return spatial[-1]


def check_layer(model, layer: str | None) -> str:
    """``layer`` if the catalogue knows it (else an error listing close matches), or the default."""
    if layer is None:
        return default_layer(model)
    model.layers.shape(layer)  # raises UnknownLayerError with close matches
    return layer


def top_predictions(model, logits: torch.Tensor, k: int = 5) -> list[dict]:
    """The ``k`` most probable classes of ``logits`` (1, K): dicts with class, label, probability."""
    probs = torch.softmax(logits[0].detach().float(), dim=0)
    values, idx = probs.topk(min(k, probs.numel()))
    return [
        {"class": int(i), "label": model.label(int(i)), "probability": float(v)}
        for v, i in zip(values.tolist(), idx.tolist())
    ]


def normalize01(a: np.ndarray) -> np.ndarray:
    """``(a - min) / (max - min + 1e-7)``, as pytorch-grad-cam's ``scale_cam_image`` does."""
    a = np.asarray(a, dtype=np.float32)
    a = a - a.min()
    return a / (1e-7 + a.max())


def upsample(cam: torch.Tensor | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear upsampling of a (h, w) map to ``size`` (H, W), half-pixel centres (as OpenCV's
    ``resize`` with ``INTER_LINEAR``)."""
    t = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


@dataclasses.dataclass(eq=False)
class Explanation:
    """Base of every result: the input as pixels, the target class and the top predictions.

    ``image``: (H, W, 3) float in [0, 1], the model input as the model saw it. ``target``: the
    class index explained; ``top``: the five most probable classes (dicts with class, label,
    probability). Subclasses add their arrays, :meth:`figure` and the files :meth:`save` writes.
    """

    image: np.ndarray
    target: int
    target_label: str
    top: list[dict]
    image_name: str

    #: file stem of the figure, and the arrays written with ``npy=True`` (file stem -> attribute)
    name: str = dataclasses.field(default="explanation", init=False, repr=False)
    arrays: dict[str, str] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def figure(self):
        """A matplotlib ``Figure`` (Agg, not attached to pyplot)."""
        raise NotImplementedError

    def png(self, dpi: int = 100) -> bytes:
        from .figures import to_png

        return to_png(self.figure(), dpi=dpi)

    def _repr_png_(self) -> bytes:
        return self.png()

    def save(self, out_dir: str | os.PathLike, npy: bool = False, dpi: int = 100) -> list[str]:
        """Write ``<name>.png`` (and with ``npy`` the raw arrays as ``.npy``) into ``out_dir``;
        returns the paths written."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        path = out / f"{self.name}.png"
        with atomic_write(path) as f:
            f.write(self.png(dpi=dpi))
        written.append(str(path))
        if npy:
            for stem, attr in self.arrays.items():
                value = getattr(self, attr)
                if value is None:
                    continue
                p = out / f"{stem}.npy"
                with atomic_write(p) as f:
                    np.save(f, np.asarray(value))
                written.append(str(p))
        return written

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "target_label": self.target_label, "top": self.top}

