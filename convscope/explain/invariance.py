"""Invariance to translation, scale and rotation (Zeiler & Fergus 2014, fig. 5).

Each image is transformed by a range of amounts; for each amount the Euclidean distance between
the feature vectors (the flattened layer output) of the original and the transformed image is
measured at the first and the last chosen layer, with the probability of the target class.

The transform acts on the image resized to the model's ``resize`` (shorter side), before the
centre crop, about the image centre, so a shifted or shrunk image brings in its own surroundings
where it has them; what it uncovers beyond its border is filled with the model's mean colour
(zero after normalization). Amounts (defaults in :data:`TRANSFORMS`): ``translate`` in pixels of
the model input, vertical (down positive), as in the paper; ``scale`` a factor (1: unchanged);
``rotate`` in degrees, counter-clockwise.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..choices import TRANSFORMS as TRANSFORM_NAMES, keyed
from ..errors import unknown_name_error
from ..files import write_bytes_atomic, write_text_atomic
from ..hooks import capture, run
from ..models import as_loaded
from . import figures
from ._common import ExplainError, resolve_target

#: transform name (:data:`convscope.choices.TRANSFORMS`) -> (default amounts, axis label, the
#: untransformed amount)
TRANSFORMS: dict[str, tuple[list[float], str, float]] = keyed(TRANSFORM_NAMES, {
    "translate": ([float(v) for v in range(-60, 61, 6)], "vertical translation (pixels)", 0.0),
    "scale": ([round(0.6 + 0.1 * k, 2) for k in range(13)], "scale factor", 1.0),
    "rotate": ([float(v) for v in range(0, 361, 15)], "rotation (degrees)", 0.0),
})


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise unknown_name_error("transform", transform, TRANSFORMS, cls=ExplainError, list_all=True)


def transformed_inputs(model, image, transform: str, amounts: Sequence[float]) -> torch.Tensor:
    """The model inputs (len(amounts), 3, H, W) of ``image`` (a PIL image) under ``transform``;
    the untransformed amount gives exactly the model's own preprocessing of the image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T
    from torchvision.transforms.v2 import functional as TF

    _check_transform(transform)
    prep = model.preprocessing
    interp = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(prep.interpolation, InterpolationMode.BILINEAR)
    resized = T.Resize(prep.resize, interpolation=interp, antialias=True)(image.convert("RGB"))
    finish = T.Compose([T.CenterCrop(prep.input_size), T.PILToTensor(), T.ToDtype(torch.float32, scale=True),
                        T.Normalize(prep.mean, prep.std)])
    fill = tuple(round(255 * m) for m in prep.mean)
    identity = TRANSFORMS[transform][2]
    out = []
    for a in amounts:
        if a == identity:
            img = resized
        elif transform == "translate":
            img = TF.affine(resized, angle=0.0, translate=[0, round(a)], scale=1.0, shear=[0.0, 0.0], fill=fill)
        elif transform == "scale":
            img = TF.affine(resized, angle=0.0, translate=[0, 0], scale=float(a), shear=[0.0, 0.0],
                            interpolation=InterpolationMode.BILINEAR, fill=fill)
        else:
            img = TF.rotate(resized, float(a), interpolation=InterpolationMode.BILINEAR, fill=fill)
        out.append(finish(img))
    return torch.stack(out)


@dataclasses.dataclass(eq=False)
class Invariance:
    """Results of :func:`invariance`: ``amounts`` (A,); per image (I), ``distances[layer]``
    (I, A) Euclidean feature distance to the untransformed image, ``probability`` (I, A) of each
    image's ``targets``; ``images`` their names, ``layers`` the two layers measured."""

    transform: str
    amounts: np.ndarray
    layers: list[str]
    images: list[str]
    targets: list[int]
    target_labels: list[str]
    distances: dict[str, np.ndarray]
    probability: np.ndarray

    def rows(self) -> list[dict]:
        rows = []
        for i, name in enumerate(self.images):
            for k, a in enumerate(self.amounts):
                row = {"image": name, "transform": self.transform, "amount": float(a), "target": self.targets[i],
                       "target_label": self.target_labels[i], "probability": float(self.probability[i, k])}
                for layer in self.layers:
                    row[f"distance:{layer}"] = float(self.distances[layer][i, k])
                rows.append(row)
        return rows

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV text (one row per image and amount); written to ``path`` if given."""
        buf = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            write_text_atomic(path, text)
        return text

    def figure(self):
        fig, axes = figures.new_figure(3, panel_inches=3.6, height=3.6, ticks=True)
        label = TRANSFORMS[self.transform][1]
        for ax, layer in zip(axes[:2], [self.layers[0], self.layers[-1]]):
            for i, name in enumerate(self.images):
                ax.plot(self.amounts, self.distances[layer][i], marker=".", label=name)
            ax.set_title(f"feature distance at {layer}", fontsize=9)
            ax.set_ylabel("Euclidean distance", fontsize=8)
        for i, name in enumerate(self.images):
            axes[2].plot(self.amounts, self.probability[i], marker=".", label=f"{name}: {self.target_labels[i]}")
        axes[2].set_title("probability of the target class", fontsize=9)
        axes[2].set_ylim(-0.02, 1.02)
        axes[2].legend(fontsize=6, loc="best")
        for ax in axes:
            ax.set_xlabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    def png(self, dpi: int = 100) -> bytes:
        return figures.to_png(self.figure(), dpi=dpi)

    def _repr_png_(self) -> bytes:
        return self.png()

    def save(self, out_dir: str | os.PathLike, dpi: int = 100) -> list[str]:
        """Write ``invariance_<transform>.png`` and ``.csv`` into ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        png = out / f"invariance_{self.transform}.png"
        write_bytes_atomic(png, self.png(dpi=dpi))
        table = out / f"invariance_{self.transform}.csv"
        self.to_csv(table)
        return [str(png), str(table)]


def invariance(model, images, *, transform: str = "translate", amounts: Sequence[float] | None = None,
               layers: Sequence[str] | str | None = None, target="top") -> Invariance:
    """Feature distances and target probability of ``images`` against a transform's amount.

    ``images``: paths or PIL images. ``transform``: ``"translate"``, ``"scale"`` or
    ``"rotate"``; ``amounts``: default :data:`TRANSFORMS`'s range, which includes the
    untransformed amount. ``layers``: the chosen layers (names or comma-separated; default the
    catalogue's default selection); distances are measured at the first and last of them.
    ``target``: a class index, or ``"top"`` for each image's most probable class untransformed.

    >>> result = invariance(load_model(), ["cat.jpg"], transform="rotate")
    >>> result.save("out")         # invariance_rotate.png, invariance_rotate.csv
    """
    from PIL import Image

    from ..data import load_image

    model = as_loaded(model)
    _check_transform(transform)
    default_amounts, _label, identity = TRANSFORMS[transform]
    amounts = np.asarray(default_amounts if amounts is None else list(amounts), dtype=np.float64)
    if amounts.size == 0:
        raise ExplainError("give at least one amount for the transform")
    cat = model.layers
    if layers is None or layers == "default":
        chosen = cat.default
    else:
        if isinstance(layers, str):
            layers = [n.strip() for n in layers.split(",") if n.strip()]
        for n in layers:
            cat.shape(n)  # an unknown name: error with close matches
        chosen = [n for n in cat.names if n in set(layers)]  # execution order
    if not chosen:
        raise ExplainError("no layers chosen; pass layer names (run `convscope layers`)")
    names = list(dict.fromkeys([chosen[0], chosen[-1]]))
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    all_amounts = np.concatenate([[identity], amounts])
    dist = {n: np.zeros((len(images), len(amounts))) for n in names}
    prob = np.zeros((len(images), len(amounts)))
    image_names, targets = [], []
    for i, image in enumerate(images):
        name = "image"
        if isinstance(image, (str, os.PathLike)):
            name = Path(image).name
            image = load_image(image)
        image_names.append(name if name not in image_names else f"{name}#{i}")
        xs = transformed_inputs(model, image, transform, all_amounts).to(model.device)
        feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        logits = []
        with torch.inference_mode(), capture(model.module, names, stop=False) as outs:
            for start in range(0, len(xs), 32):
                logits.append(run(model.module, xs[start:start + 32], outs).float())
                for n in names:
                    feats[n].append(outs[n].flatten(1).float())
        logits = torch.cat(logits)
        cls = resolve_target(target, logits[:1])
        targets.append(cls)
        prob[i] = torch.softmax(logits, dim=1)[1:, cls].cpu().numpy()
        for n in names:
            f = torch.cat(feats[n])
            dist[n][i] = (f[1:] - f[:1]).norm(dim=1).cpu().numpy()
    return Invariance(transform, amounts, names, image_names, targets, [model.label(t) for t in targets], dist, prob)
