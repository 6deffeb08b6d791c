"""Recognise: classify photos with a model and readable ImageNet labels."""
from __future__ import annotations

import dataclasses
import html
import os
from typing import Iterable, Iterator

import torch

from .data import MAX_BYTES, MAX_PIXELS, expand_inputs, iter_batches
from .hooks import model_lock
from .models import LoadedModel
from .progress import Bar


@dataclasses.dataclass
class Prediction:
    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": round(self.probability, 6)}


@dataclasses.dataclass
class Classified:
    """One input's outcome: ``predictions`` (best first) or ``error`` (a one-line reason)."""

    path: str
    predictions: list[Prediction] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "predictions": [p.to_dict() for p in self.predictions]}


class Classification(list):
    """A list of :class:`Classified`, in input order, that renders as a table in Jupyter."""

    @property
    def errors(self) -> list[Classified]:
        return [c for c in self if not c.ok]

    def _repr_html_(self) -> str:
        rows = []
        for c in self:
            if c.ok:
                top = c.predictions[0]
                rest = ", ".join(f"{html.escape(p.label)} {p.probability:.2f}" for p in c.predictions[1:])
                rows.append(
                    f"<tr><td>{html.escape(os.path.basename(c.path))}</td><td><b>{html.escape(top.label)}</b></td>"
                    f"<td>{top.probability:.3f}</td><td>{rest}</td></tr>"
                )
            else:
                rows.append(f"<tr><td>{html.escape(os.path.basename(c.path))}</td><td colspan=3><i>{html.escape(c.error)}</i></td></tr>")
        return "<table><tr><th>image</th><th>top-1</th><th>p</th><th>next</th></tr>" + "".join(rows) + "</table>"


def iter_classify(
    model: LoadedModel,
    inputs: Iterable[str | os.PathLike],
    top: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: bool | None = None,
    *,
    max_bytes: int = MAX_BYTES,
    target_size: int | None = None,
) -> Iterator[Classified]:
    """Classify images lazily, yielding one :class:`Classified` per input (bad ones included),
    grouped by batch. ``inputs`` are files, folders, globs or ``@list`` files. ``max_pixels``,
    ``max_bytes`` and ``target_size`` are :func:`convscope.data.load_image`'s (``target_size``,
    say the model's resize size, decodes large photos at reduced scale; default: every pixel)."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    paths, missing = expand_inputs(inputs)
    for err in missing:
        yield Classified(err.path, error=err.reason)
    k = min(top, len(model.labels))
    position = {str(p): i for i, p in enumerate(paths)}
    with Bar(len(paths), "classifying", disable=None if progress is None else not progress) as bar:
        for batch in iter_batches(paths, model.transform, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                                  max_bytes=max_bytes, target_size=target_size):
            results: dict[int, Classified] = {}
            for err in batch.errors:
                results[position[err.path]] = Classified(err.path, error=err.reason)
            if batch.indices:
                # under the model's lock: no other thread's hooks are on it meanwhile
                with model_lock(model.module), torch.inference_mode():
                    logits = model.module(batch.tensors.to(model.device))
                probs = torch.softmax(logits.float(), dim=1)
                values, indices = probs.topk(k, dim=1)
                for row, i in enumerate(batch.indices):
                    results[i] = Classified(
                        str(paths[i]),
                        [
                            Prediction(int(j), model.label(int(j)), float(v))
                            for v, j in zip(values[row].tolist(), indices[row].tolist())
                        ],
                    )
            bar.advance(len(results))
            for i in sorted(results):
                yield results[i]


def classify(model: LoadedModel, inputs, top: int = 5, **kwargs) -> Classification:
    """Classify image files; returns a :class:`Classification` (one entry per input).

    >>> import convscope
    >>> model = convscope.load_model()
    >>> result = convscope.classify(model, ["cat.jpg"], top=3)
    >>> result[0].predictions[0].label
    'tabby'
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    return Classification(iter_classify(model, inputs, top=top, **kwargs))
