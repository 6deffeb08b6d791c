"""Uploaded photos: size-limited intake, server-named storage, and the model's view of them.

An upload is decoded from memory only by :func:`convscope.data.load_image_bytes` (the decoder
of every photo convscope reads), within a byte budget and at the scale the model needs (so
anything that is not a real image, or would take too much memory, is refused with a reason),
and never unpickled, executed or written to disk as sent; the HTTP side is
:mod:`convscope.web.upload_pages`. :class:`UploadStore` keeps what the server itself made of it under a random
name; :class:`Analyzer` runs the atlas's model once on it: the top predictions, the units that
fire most in every atlas layer, and occlusion and Grad-CAM maps from :mod:`convscope.explain`.

>>> image = load_image_bytes(data_bytes, "upload", target_size=analyzer.min_side)
>>> result = Analyzer(gallery, model).analyze(image, explain=False)
>>> token = UploadStore(tmp_dir, keep=50).create()
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConvscopeError
from ..explain import gradcam, occlusion
from ..files import atomic_write
from ..hooks import capture, named_modules, run
from ..display import heat_picture
from ..models import UnnamedModelError, load_recorded
from .common import ModelUnavailable

#: Largest upload accepted, in bytes (a phone photo is a few MB).
MAX_UPLOAD_BYTES = 12 * 1024 * 1024
TOKEN = re.compile(r"^[0-9a-f]{32}$")
#: Occluded copies per forward pass on a CPU. occlusion's own choice fills 2 GiB of activations;
#: 8 at a time took a fifth of its time and 30 MB instead of 1 GB (EfficientNet-Lite0, 2 cores).
OCCLUSION_BATCH = 8
#: The only files ever served back from an upload's folder.
FILES = ("input.png", "occlusion.png", "gradcam.png")


class UploadTooLarge(ConvscopeError):
    status = 413


class BadUpload(ConvscopeError):
    status = 400


class UploadTimeout(ConvscopeError):
    status = 408


class UploadAborted(Exception):
    """The client went away before its upload was all received; the message says how far it got."""


class UploadStore:
    """A folder of uploads, each in a subfolder named by a random 128-bit token; only the
    newest ``keep`` are kept. The folder is a private temporary one unless ``root`` is given,
    and a temporary one is removed when the store is garbage-collected or the process ends."""

    def __init__(self, root: str | os.PathLike | None = None, keep: int = 200):
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix="convscope-uploads-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)
        else:
            self.root = Path(root)
            self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self._order: list[str] = []

    def create(self) -> str:
        """A new upload's token, its folder made; the oldest beyond ``keep`` are removed."""
        token = secrets.token_hex(16)
        (self.root / token).mkdir()
        self._remember(token)
        return token

    def _remember(self, token: str) -> None:
        with self._lock:
            self._order.append(token)
            old, self._order = self._order[: -self.keep], self._order[-self.keep:]
        for gone in old:
            shutil.rmtree(self.root / gone, ignore_errors=True)

    def save(self, token: str, name: str, image: Image.Image) -> None:
        if name not in FILES or not TOKEN.match(token):
            raise ValueError(f"not an upload file name: {name!r}")
        with atomic_write(self.root / token / name) as f:  # served while it may be written
            image.save(f, format="PNG", optimize=False, compress_level=3)

    def path(self, token: str, name: str) -> Path:
        """The stored file ``name`` of upload ``token``; only well-formed tokens and the fixed
        file names pass, so no URL can reach anything else."""
        if not TOKEN.match(token or "") or name not in FILES:
            raise FileNotFoundError("no such upload file")
        path = self.root / token / name
        if not path.is_file():
            raise FileNotFoundError("no such upload file (uploads are kept for a limited time)")
        return path


def _occlusion_heat(model, x: torch.Tensor, target: int) -> np.ndarray:
    """Per pixel, the mean drop in the target's probability over the squares that covered it."""
    cpu = torch.device(model.device).type == "cpu"
    result = occlusion(model, x[0], target=target, progress=False, batch_size=OCCLUSION_BATCH if cpu else None,
                       projection=False)  # the maps only: no projection (panel (c)) to compute
    drop = float(result.base_probability) - np.asarray(result.probability, dtype=np.float64)
    H, W = int(x.shape[2]), int(x.shape[3])
    total = np.zeros((H, W))
    count = np.zeros((H, W))
    for i, y in enumerate(result.ys):
        for j, x0 in enumerate(result.xs):
            total[y:y + result.window, x0:x0 + result.window] += drop[i, j]
            count[y:y + result.window, x0:x0 + result.window] += 1
    return np.maximum(total / np.maximum(count, 1), 0).astype(np.float32)


def _gradcam_heat(model, x: torch.Tensor, target: int) -> np.ndarray:
    return np.asarray(gradcam(model, x[0], target=target).heatmap, dtype=np.float32)


#: name -> (title, what it shows, heat map (H, W) on the model input, bright where the evidence
#: for the target class is)
EXPLANATIONS = {
    "occlusion": ("Occlusion", "Grey squares slid over the photo: bright where hiding the region lowers the top class most.",
                  _occlusion_heat),
    "gradcam": ("Grad-CAM", "Gradient-weighted activations of the last convolutional layer for the top class.",
                _gradcam_heat),
}


class Analyzer:
    """Runs one model over uploaded photos for the gallery. Thread-safe, and so is sharing its
    model with other code in the process: every convscope call that hooks the model holds the
    model's own :func:`~convscope.hooks.model_lock` meanwhile, so no lock is needed here.

    ``model`` is a :class:`~convscope.models.LoadedModel`, or ``None`` to load the atlas's own
    model on first use.
    """

    def __init__(self, gallery, model=None, top_units: int = 8, top_classes: int = 5):
        self.gallery = gallery
        self._model = model
        self.top_units = top_units
        self.top_classes = top_classes
        self._loading = threading.Lock()  # the atlas's model is loaded once

    @property
    def min_side(self) -> int:
        """The shorter side, in pixels, an upload is decoded to at least: twice what the model's
        resize takes, so its antialiased resize still has pixels to average."""
        prep = self.model.preprocessing
        return 2 * max(prep.resize, *prep.input_size)

    @property
    def model(self):
        if self._model is None:
            with self._loading:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self):
        """The model the atlas records (:func:`convscope.models.load_recorded`); 503 when it
        cannot be loaded."""
        recorded = self.gallery.info["model"]
        try:
            return load_recorded(recorded, device="cpu",
                                 hint="serve it from Python with create_app(atlas_dir, model=your_loaded_model)")
        except UnnamedModelError as exc:
            raise ModelUnavailable(str(exc)) from None
        except ConvscopeError as exc:
            raise ModelUnavailable(f"cannot load the atlas's model {(recorded or {}).get('spec')!r}: {exc}") from None

    def analyze(self, image: Image.Image, explain: bool = True) -> dict:
        """Predictions, most excited units per atlas layer and (with ``explain``) occlusion and
        Grad-CAM maps for one RGB image. Returned images are PIL images under ``"images"``."""
        model = self.model
        x = model.transform(image).unsqueeze(0).to(model.device)
        picture = model.preprocessing.picture(x)
        logits, maxima, skipped = self._forward(model, x)
        probs = torch.softmax(logits.float()[0], dim=0)
        k = min(self.top_classes, probs.numel())
        values, indices = probs.topk(k)
        predictions = [
            {"index": int(i), "label": model.label(int(i)), "probability": round(float(v), 6)}
            for v, i in zip(values.tolist(), indices.tolist())
        ]
        images = {"input.png": Image.fromarray(picture)}
        explanations = {}
        for name, (title, about, heat_map) in EXPLANATIONS.items():
            entry = {"title": title, "about": about, "url": None, "reason": None}
            if not explain:
                entry["reason"] = "not computed yet: explanations were not asked for"
            else:
                try:
                    images[f"{name}.png"] = heat_picture(picture, heat_map(model, x, int(indices[0])))
                except ConvscopeError as exc:  # what this model cannot give (no classifier, ...)
                    entry["reason"] = f"not computed yet: {exc}"
            explanations[name] = entry
        return {
            "model": model.spec,
            "input_size": list(model.input_size),
            "predictions": predictions,
            "explanations": explanations,
            "layers": self._excited(maxima),
            "skipped_layers": skipped,
            "images": images,
        }

    def _forward(self, model, x):
        present = named_modules(model.module)
        names = [n for n in self.gallery.layer_names if n in present]
        skipped = [n for n in self.gallery.layer_names if n not in present]
        with torch.inference_mode(), capture(model.module, names, stop=False) as outputs:
            logits = run(model.module, x, outputs)
            maxima = {}
            for name in names:
                out = outputs[name]
                if out.dim() == 4:
                    maxima[name] = out[0].flatten(1).amax(dim=1).float().cpu()
                elif out.dim() == 2:
                    maxima[name] = out[0].float().cpu()
        return logits, maxima, skipped

    def _excited(self, maxima: dict) -> list[dict]:
        layers = []
        for name, values in maxima.items():
            units = self.gallery.unit_records(name)
            if len(units) != values.numel():
                continue  # a different model than the atlas's: its units would not match
            tops = torch.tensor([_float(u["top"]) for u in units])
            relative = torch.where(tops > 0, values / tops.clamp_min(1e-12), torch.full_like(values, float("nan")))
            score = torch.nan_to_num(relative, nan=-1.0) if bool((tops > 0).any()) else values
            order = torch.argsort(score, descending=True)[: self.top_units].tolist()
            layer_page = self.gallery.layer(name)
            layers.append({
                "name": name,
                "units": [
                    {
                        "unit": int(u),
                        "value": round(float(values[u]), 6),
                        "relative": None if torch.isnan(relative[u]) else round(float(relative[u]), 4),
                        "patch": layer_page["units"][u]["patch"],
                    }
                    for u in order
                ],
            })
        return layers


def _float(v) -> float:
    """A unit's top value as a float; NaN where the atlas has none (a unit that never fired)."""
    return float("nan") if v is None else float(v)
