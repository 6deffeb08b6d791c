"""What the index keeps of one forward pass: class probabilities, the penultimate embedding and
the spatial maximum (with its position) of every unit of the default layers.

The embedding is the input of the model's last ``nn.Linear`` (its classifier head), found by a
probe pass (:func:`convscope.hooks.run_order`); models without one use the spatial mean of the
deepest hooked layer instead. Every pass captures through :func:`convscope.hooks.capture`, under
the model's lock, with its checks (a shared module, a layer that did not run): the model leaves
as it came.

>>> extract = Extractor(load_model())
>>> f = extract(batch)                    # batch: (B, 3, 224, 224) model inputs
>>> f.probs.shape, f.embedding.shape, f.unit_max.shape   # (B, 1000), (B, 1280), (B, 1824)
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConvscopeError
from ..hooks import capture, run, run_order
from ..models import LoadedModel, as_loaded


@dataclasses.dataclass
class Features:
    """One batch's features, NumPy arrays with B rows: ``probs`` (B, K) float32 softmax,
    ``embedding`` (B, D) float32 L2-normalized, ``unit_max`` (B, U) float32 spatial maxima of
    the units of :attr:`Extractor.layers` side by side, ``unit_pos`` (B, U) int16 flat position
    ``y * width + x`` of each maximum (the first where several tie)."""

    probs: np.ndarray
    embedding: np.ndarray
    unit_max: np.ndarray
    unit_pos: np.ndarray


def find_head(module: nn.Module, input_size: tuple[int, int], device) -> str | None:
    """The dotted name of the last ``nn.Linear`` to run in a forward pass, or None."""
    order = run_order(module, torch.zeros(1, 3, *input_size, device=device), nn.Linear)
    return order[-1] if order else None


class Extractor:
    """Runs the model on a batch and returns its :class:`Features`.

    ``layers``: the layers whose units are kept (default: the catalogue's default selection);
    ``unit_offsets[name]`` is where a layer's units start in ``unit_max``'s columns and
    ``layer_shapes[name]`` its (C, H, W) map.

    >>> extract = Extractor(load_model("torchvision:resnet18", pretrained=False))
    >>> extract.head, extract.layers[-1]          # ('fc', 'layer4')
    """

    def __init__(self, model, layers: Sequence[str] | None = None):
        self.model: LoadedModel = as_loaded(model)
        catalogue = self.model.layers
        self.layers = list(catalogue.default if layers is None else layers)
        if not self.layers:
            raise ConvscopeError("the index needs at least one layer for unit search; the model's catalogue has no default layer")
        self.layer_shapes = {n: tuple(catalogue.shape(n)) for n in self.layers}
        self.unit_offsets: dict[str, int] = {}
        total = 0
        for n in self.layers:
            self.unit_offsets[n] = total
            total += self.layer_shapes[n][0]
            if self.layer_shapes[n][1] * self.layer_shapes[n][2] > 32767:
                raise ConvscopeError(f"layer {n!r} has a {self.layer_shapes[n][1]}x{self.layer_shapes[n][2]} map, too large for the index's int16 positions; choose smaller layers")
        self.units = total
        self.head = find_head(self.model.module, self.model.input_size, self.model.device)
        if self.head is None:
            warnings.warn(f"{type(self.model.module).__name__} has no nn.Linear head; the index embeds each photo as the "
                          f"spatial mean of layer {self.layers[-1]!r} instead", stacklevel=2)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        f = self(torch.zeros(1, 3, *self.model.input_size, device=self.model.device))
        self.classes = f.probs.shape[1]
        return f.embedding.shape[1]

    def __call__(self, x: torch.Tensor) -> Features:
        """Features of ``x`` (B, 3, H, W), normalized model inputs."""
        module = self.model.module
        heads = [self.head] if self.head is not None else []
        with torch.inference_mode(), capture(module, self.layers, stop=False, inputs=heads) as outputs:
            logits = run(module, x.to(self.model.device), outputs)
            maps = {name: _flat(outputs[name]).float() for name in self.layers}
            emb = outputs.inputs[self.head].float() if self.head is not None else maps[self.layers[-1]].mean(dim=2)
            maxima = [maps[n].max(dim=2) for n in self.layers]
            del maps
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ConvscopeError("the model does not return (N, classes) logits; the index needs a classifier")
        if emb.dim() > 2:  # a head applied to tokens: pool them
            emb = emb.reshape(emb.shape[0], -1, emb.shape[-1]).mean(1)
        emb = torch.nn.functional.normalize(emb, dim=1)
        values = torch.cat([m[0] for m in maxima], dim=1)
        positions = torch.cat([m[1] for m in maxima], dim=1)
        return Features(
            probs=torch.softmax(logits.float(), dim=1).cpu().numpy(),
            embedding=emb.cpu().numpy(),
            unit_max=values.cpu().numpy(),
            unit_pos=positions.to(torch.int16).cpu().numpy(),
        )


def _flat(out: torch.Tensor) -> torch.Tensor:
    """A layer's output as (B, C, positions): maps flattened, a vector as one position."""
    return out.detach().flatten(2) if out.dim() > 2 else out.detach()[:, :, None]


def model_fingerprint(model) -> str:
    """SHA-256 over the model's parameters and buffers (names, shapes and bytes): an update
    with different weights is refused."""
    h = hashlib.sha256()
    for name, t in model.module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().cpu().numpy().tobytes())
    return h.hexdigest()
