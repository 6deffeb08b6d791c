"""Per-layer linear probes: how well each layer's features separate the classes of another data
set (Zeiler & Fergus 2014, section 5: a linear classifier on layer-k features of Caltech-101 and
Caltech-256, accuracy rising with depth).

One forward pass over the photos captures every chosen layer; each layer's (C, H, W) map is
pooled over space, by its mean (global average pooling) and by its maximum, into C features per
photo. A scikit-learn ``LogisticRegression`` after a ``StandardScaler``, in one ``Pipeline``, is
then scored by stratified k-fold cross-validation (the same folds for every layer and both
poolings): the mean accuracy over the folds, its standard deviation, and ``n``, the photos used.

>>> result = probe(load_model(), "photos_by_class/", layers=["blocks.2", "blocks.4", "bn2"])
>>> print(result.to_json())                 # {"layer": "blocks.2", "accuracy": 0.61, "std": 0.04, "n": 480} ...
>>> result.plot("probe.png")                 # accuracy against depth
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .choices import POOLS
from .data import expand_inputs, iter_batches
from .errors import ArgumentError, ConvscopeError
from .files import atomic_write
from .hooks import capture, run
from .models import LoadedModel, as_loaded
from .progress import Bar


@dataclasses.dataclass(frozen=True)
class Score:
    """Cross-validated accuracy of one layer and pooling: the ``mean`` over the folds, their
    ``std`` (population, numpy's default) and each fold's accuracy in ``folds``."""

    mean: float
    std: float
    folds: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class LayerProbe:
    """One layer: ``features`` per photo (its channels) and a :class:`Score` per pooling in
    ``scores`` (``"avg"``: global average pooling, ``"max"``: global max pooling)."""

    layer: str
    features: int
    scores: dict[str, Score]


@dataclasses.dataclass
class ProbeResult:
    """What :func:`probe` returns: ``layers`` in network order, ``pool`` (the pooling the
    records report), the ``classes`` (folder names) with their photo ``counts``, ``n`` photos
    used, ``folds``, ``chance`` (the share of the largest class: what always guessing it
    scores), ``model`` (its spec) and the ``skipped`` files as (path, reason)."""

    layers: list[LayerProbe]
    pool: str
    classes: list[str]
    counts: list[int]
    n: int
    folds: int
    chance: float
    model: str
    skipped: list[tuple[str, str]]

    def records(self) -> list[dict]:
        """One ``{"layer": str, "accuracy": float, "std": float, "n": int}`` per layer (the
        accuracy of ``pool``), in network order."""
        return [{"layer": lp.layer, "accuracy": lp.scores[self.pool].mean, "std": lp.scores[self.pool].std, "n": self.n}
                for lp in self.layers]

    def to_json(self) -> str:
        """:meth:`records` as JSON lines."""
        return "".join(json.dumps(r) + "\n" for r in self.records())

    def notes(self) -> list[str]:
        """Sentences on where the other pooling does better than ``pool`` by more than the
        spread of the folds (empty if nowhere)."""
        other = "max" if self.pool == "avg" else "avg"
        better = [lp for lp in self.layers
                  if lp.scores[other].mean - lp.scores[self.pool].mean > max(lp.scores[self.pool].std, lp.scores[other].std)]
        return [f"{other} pooling is better than {self.pool} at {lp.layer}: {lp.scores[other].mean:.3f} against "
                f"{lp.scores[self.pool].mean:.3f}" for lp in better]

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """A PNG of accuracy against depth (matplotlib): both poolings with their fold spread,
        and the chance level."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        path = Path(path)
        fig = Figure(figsize=(max(5.0, 0.75 * len(self.layers) + 2), 3.6), dpi=110)
        ax = fig.subplots()
        xs = np.arange(len(self.layers))
        for pool, style in ((self.pool, "-o"), ("max" if self.pool == "avg" else "avg", "--s")):
            means = [lp.scores[pool].mean for lp in self.layers]
            stds = [lp.scores[pool].std for lp in self.layers]
            ax.errorbar(xs, means, yerr=stds, fmt=style, capsize=3, label=f"{pool} pooling", alpha=1 if pool == self.pool else 0.6)
        ax.axhline(self.chance, color="grey", linestyle=":", label=f"chance ({self.chance:.2f})")
        ax.set_xticks(xs, [lp.layer for lp in self.layers], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"accuracy ({self.folds}-fold CV)")
        ax.set_xlabel("layer (input to output)")
        ax.set_title(title or f"{self.model}: linear probe, {len(self.classes)} classes, {self.n} photos", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        with atomic_write(path) as f:
            fig.savefig(f, format="png")
        return path


def labelled_folder(folder: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """(paths, class index per path, class names) of a folder with one sub-folder of images per
    class (searched recursively; hidden folders and files at the top are ignored), classes
    sorted by name. Raises ``ValueError`` for fewer than two classes or an empty class."""
    root = Path(folder)
    if not root.is_dir():
        raise ArgumentError(f"{str(root)!r} is not a folder; give a folder with one sub-folder of images per class",
                            param="folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ArgumentError(f"{str(root)!r} has {len(classes)} class sub-folders; a probe needs two or more (one per class)",
                            param="folder")
    paths, labels = [], []
    for k, name in enumerate(classes):
        found, _ = expand_inputs([root / name])
        if not found:
            raise ArgumentError(f"class folder {str(root / name)!r} holds no images", param="folder")
        paths.extend(str(p) for p in found)
        labels.extend([k] * len(found))
    return paths, labels, classes


def features(model, paths: Sequence[str], layers: Sequence[str], *, batch_size: int = 32, workers: int | None = None,
             progress: bool | None = None) -> tuple[dict[str, dict[str, np.ndarray]], list[int], list[tuple[str, str]]]:
    """Spatially pooled features of ``layers`` for ``paths``, from one forward pass per batch:
    ``{layer: {"avg": (N, C), "max": (N, C)}}`` float32, the indices of the photos read, and
    the skipped ones as (path, reason). A layer with a flat (N, C) output is used as it is."""
    model = as_loaded(model)
    names = list(layers)
    parts: dict[str, dict[str, list[np.ndarray]]] = {n: {p: [] for p in POOLS} for n in names}
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    with capture(model.module, names, stop=True) as outs, \
            Bar(len(paths), "probing", disable=None if progress is None else not progress) as bar:
        for batch in iter_batches(paths, model.transform, batch_size=batch_size, workers=workers):
            skipped.extend((e.path, e.reason) for e in batch.errors)
            if batch.indices:
                with torch.inference_mode():
                    run(model.module, batch.tensors.to(model.device), outs)
                    for name in names:
                        act = outs[name].float()
                        if act.dim() == 4:
                            pooled = {"avg": act.mean(dim=(2, 3)), "max": act.amax(dim=(2, 3))}
                        elif act.dim() == 2:
                            pooled = {"avg": act, "max": act}
                        else:
                            raise ConvscopeError(
                                f"layer {name!r} gives outputs of shape {tuple(act.shape[1:])}, neither a map (C, H, W) "
                                "nor features (C,); choose another from `convscope layers`"
                            )
                        for p in POOLS:
                            parts[name][p].append(pooled[p].cpu().numpy())
                outs.clear()
                kept.extend(batch.indices)
            bar.advance(len(batch.indices) + len(batch.errors))
    if not kept:
        raise ConvscopeError("none of the photos could be read; see the skipped files")
    return {n: {p: np.concatenate(v) for p, v in d.items()} for n, d in parts.items()}, kept, skipped


def cross_validate(x: np.ndarray, y: np.ndarray, folds: int = 5, *, seed: int = 0, C: float = 1.0,
                   max_iter: int = 2000) -> Score:
    """Stratified ``folds``-fold accuracy of ``StandardScaler`` + ``LogisticRegression(C)`` on
    features ``x`` (N, D) and labels ``y`` (N,); the folds are shuffled with ``seed``, so every
    call with the same ``y`` uses the same folds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(C=C, max_iter=max_iter))])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a fold that stops at max_iter still gives a usable classifier; the score says how good
        warnings.simplefilter("ignore", ConvergenceWarning)
        acc = cross_val_score(pipe, x, y, cv=cv, scoring="accuracy")
    return Score(float(acc.mean()), float(acc.std()), tuple(float(a) for a in acc))


def probe(
    model,
    folder: str | os.PathLike,
    layers: Sequence[str] | str | None = None,
    *,
    folds: int = 5,
    pool: str = "avg",
    C: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool | None = None,
) -> ProbeResult:
    """Linear-probe accuracy of each of ``layers`` on the labelled photos in ``folder``.

    ``model``: a :class:`~convscope.models.LoadedModel` (any model convscope loads) or an
    ``nn.Module`` (ImageNet preprocessing assumed). ``folder``: one sub-folder of images per
    class (:func:`labelled_folder`). ``layers``: dotted names, a comma-separated string,
    ``"all"``, or ``None`` for the catalogue's default selection; reported in network order.
    ``folds``: k of the stratified k-fold cross-validation (every class needs at least k
    photos). ``pool``: the pooling the records report, ``"avg"`` or ``"max"`` (both are always
    scored; :meth:`ProbeResult.notes` says where the other is better). ``C``: the inverse
    regularization strength of the logistic regression. ``seed``: the fold shuffle.

    >>> result = probe(load_model("torchvision:resnet18"), "caltech101/", "layer1,layer2,layer3,layer4")
    >>> [(r["layer"], round(r["accuracy"], 2)) for r in result.records()]
    """
    if pool not in POOLS:
        raise ArgumentError(f"`pool` must be one of {', '.join(POOLS)}, got {pool!r}", param="pool")
    if not isinstance(folds, int) or folds < 2:
        raise ArgumentError(f"`folds` must be a whole number of at least 2, got {folds!r}", param="folds")
    model: LoadedModel = as_loaded(model)
    paths, labels, classes = labelled_folder(folder)
    infos = model.layers.select(layers)
    if not infos:
        raise ArgumentError("no layers to probe; name some in `layers` (run `convscope layers`)", param="layers")
    feats, kept, skipped = features(model, paths, [i.name for i in infos], batch_size=batch_size,
                                    workers=workers, progress=progress)
    y = np.asarray(labels)[kept]
    counts = np.bincount(y, minlength=len(classes))
    short = [(classes[k], int(c)) for k, c in enumerate(counts) if c < folds]
    if short:
        name, c = short[0]
        raise ArgumentError(f"class {name!r} has {c} readable photos, fewer than `folds={folds}`; add photos or use fewer "
                            "folds", param="folds")
    out = []
    for info in infos:
        scores = {p: cross_validate(feats[info.name][p], y, folds, seed=seed, C=C) for p in POOLS}
        out.append(LayerProbe(info.name, int(feats[info.name]["avg"].shape[1]), scores))
    return ProbeResult(out, pool, classes, [int(c) for c in counts], int(len(y)), folds,
                       float(counts.max() / counts.sum()), model.spec, skipped)


__all__ = ["LayerProbe", "POOLS", "ProbeResult", "Score", "cross_validate", "features", "labelled_folder", "probe"]
