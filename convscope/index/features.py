"""What the index keeps of one forward pass: class probabilities, the penultimate embedding and
the spatial maximum (with its position) of every unit of the default layers.

The embedding is the input of the model's last ``nn.Linear`` (its classifier head), found by
running a probe pass with forward pre-hooks on every ``nn.Linear`` and keeping the last that
ran; models without one use the spatial mean of the deepest hooked layer instead. All hooks
live inside one :class:`~convscope.hooks.Handles` scope per call: the model leaves as it came.

>>> extract = Extractor(load_model())
>>> f = extract(batch)                    # batch: (B, 3, 224, 224) model inputs
>>> f.probs.shape, f.embedding.shape, f.unit_max.shape   # (B, 1000), (B, 1280), (B, 1824)
"""
from __future__ import annotations

import dataclasses
import warnings
import weakref
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConvscopeError
from ..hooks import Handles
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


class _Kept(dict):
    """What the hooks of one call keep (a dict that a closure can hold weakly)."""


def find_head(module: nn.Module, input_size: tuple[int, int], device) -> str | None:
    """The dotted name of the last ``nn.Linear`` to run in a forward pass, or None."""
    order: list[str] = []
    linears = [(n, m) for n, m in module.named_modules() if n and isinstance(m, nn.Linear)]
    if not linears:
        return None
    with Handles() as handles, torch.inference_mode():
        for name, m in linears:
            handles.add(m.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name)))
        module(torch.zeros(1, 3, *input_size, device=device))
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
        self.modules = dict(self.model.module.named_modules())
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        f = self(torch.zeros(1, 3, *self.model.input_size, device=self.model.device))
        self.classes = f.probs.shape[1]
        return f.embedding.shape[1]

    def __call__(self, x: torch.Tensor) -> Features:
        """Features of ``x`` (B, 3, H, W), normalized model inputs."""
        maxima = _Kept()
        head_input: list[torch.Tensor] = []
        store = weakref.ref(maxima)  # a hook never keeps the maps alive

        def layer_hook(name):
            def hook(_m, _i, out):
                kept = store()
                if kept is None:
                    return None
                if name in kept:
                    raise ConvscopeError(f"layer {name!r} runs more than once per forward pass (a shared module); "
                                         "index other layers")
                flat = out.detach().flatten(2) if out.dim() > 2 else out.detach()[:, :, None]
                kept[name] = flat.float().max(dim=2)
                if self.head is None and name == self.layers[-1]:
                    head_input.append(flat.float().mean(dim=2))
                return None
            return hook

        def head_hook(_m, inputs):
            head_input.append(inputs[0].detach())

        with Handles() as handles, torch.inference_mode():
            for name in self.layers:
                handles.add(self.modules[name].register_forward_hook(layer_hook(name)))
            if self.head is not None:
                handles.add(self.modules[self.head].register_forward_pre_hook(head_hook))
            logits = self.model.module(x.to(self.model.device))
        missing = [n for n in self.layers if n not in maxima]
        if missing:
            raise ConvscopeError(f"layer {missing[0]!r} did not run in the forward pass; index other layers")
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ConvscopeError("the model does not return (N, classes) logits; the index needs a classifier")
        emb = head_input[-1].float()
        if emb.dim() > 2:  # a head applied to tokens: pool them
            emb = emb.reshape(emb.shape[0], -1, emb.shape[-1]).mean(1)
        emb = torch.nn.functional.normalize(emb, dim=1)
        values = torch.cat([maxima[n][0] for n in self.layers], dim=1)
        positions = torch.cat([maxima[n][1] for n in self.layers], dim=1)
        return Features(
            probs=torch.softmax(logits.float(), dim=1).cpu().numpy(),
            embedding=emb.cpu().numpy(),
            unit_max=values.cpu().numpy(),
            unit_pos=positions.to(torch.int16).cpu().numpy(),
        )
