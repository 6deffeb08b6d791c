"""How a worker gets the model: a picklable recipe that each worker loads once, on its own device.

A :class:`ModelSpec` travels to every worker (a few hundred bytes for a spec, the weights
themselves for a model shipped by value) and :meth:`ModelSpec.load` turns it into a
:class:`~convscope.models.LoadedModel` there. No Ray here: the driver and the workers share it.

>>> ModelSpec.of("torchvision:resnet18")                  # loaded by name on each worker
>>> ModelSpec.of(load_model(my_net, preprocessing=prep))  # the module itself, shipped by value
"""
from __future__ import annotations

import dataclasses
import io
from typing import Callable

import torch
from torch import nn

from ..models import LoadedModel, Preprocessing, load_model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A recipe for the model, one of three kinds:

    * ``spec`` (+ ``weights``, a state-dict file every node can read, and ``pretrained``): what
      :func:`~convscope.models.load_model` takes; each worker loads it itself;
    * ``factory``: a picklable callable returning an ``nn.Module`` or a ``LoadedModel``, with an
      optional ``state_dict`` loaded into it;
    * ``packed``: a module serialized by :meth:`of` (``torch.save`` with cloudpickle, so classes
      defined in a script travel too), with its ``preprocessing`` and ``labels``.

    ``name`` is what the scan records as the model (``LoadedModel.spec``); ``source`` where the
    weights came from (``LoadedModel.weights``).
    """

    spec: str | None = None
    weights: str | None = None
    pretrained: bool = True
    factory: Callable[[], nn.Module | LoadedModel] | None = None
    state_dict: dict | None = None
    packed: bytes | None = None
    preprocessing: Preprocessing | None = None
    labels: tuple[str, ...] | None = None
    name: str | None = None
    source: str | None = None

    def __post_init__(self):
        kinds = sum(x is not None for x in (self.spec, self.factory, self.packed))
        if kinds != 1:
            raise ValueError("a ModelSpec needs exactly one of spec, factory or packed")

    @classmethod
    def of(cls, model) -> "ModelSpec":
        """The recipe for ``model``: a ``ModelSpec`` as it is; a spec string (loaded by name on
        each worker, with pretrained weights); a ``LoadedModel`` or ``nn.Module`` shipped by
        value (the user's model is not moved or changed: its tensors are written from where
        they are and read back onto each worker's device)."""
        if isinstance(model, ModelSpec):
            return model
        if isinstance(model, str):
            return cls(spec=model)
        if isinstance(model, nn.Module):
            model = load_model(model, device=next((p.device for p in model.parameters()), "cpu"))
        if isinstance(model, LoadedModel):
            from ray import cloudpickle  # Ray's own copy; only a driver that uses Ray packs

            buf = io.BytesIO()
            torch.save(model.module, buf, pickle_module=cloudpickle)
            return cls(packed=buf.getvalue(), preprocessing=model.preprocessing, labels=tuple(model.labels),
                       name=model.spec, source=model.weights)
        if callable(model):
            return cls(factory=model)
        raise TypeError(
            f"expected a model spec string, a LoadedModel, an nn.Module, a ModelSpec or a factory, "
            f"got {type(model).__name__}"
        )

    @property
    def size(self) -> int:
        """Bytes of packed weights that travel to each node (0 for a spec or a factory)."""
        return len(self.packed) if self.packed is not None else 0

    def load(self, device: str | torch.device | None = None) -> LoadedModel:
        """The model on ``device`` (default: CUDA when there is one), in eval mode."""
        if self.spec is not None:
            model = load_model(self.spec, self.weights, device, pretrained=self.pretrained,
                               preprocessing=self.preprocessing, labels=_list(self.labels))
        elif self.factory is not None:
            made = self.factory()
            if isinstance(made, LoadedModel):
                if self.state_dict is not None:
                    made.module.load_state_dict(self.state_dict)
                model = load_model(made.module, device=device, preprocessing=self.preprocessing or made.preprocessing,
                                   labels=_list(self.labels) or made.labels)
                model = dataclasses.replace(model, spec=made.spec, weights=made.weights)
            else:
                if self.state_dict is not None:
                    made.load_state_dict(self.state_dict)
                model = load_model(made, device=device, preprocessing=self.preprocessing, labels=_list(self.labels))
        else:
            # our own bytes, written by ModelSpec.of on the driver: a full unpickle is intended
            module = torch.load(io.BytesIO(self.packed), map_location="cpu", weights_only=False)
            model = load_model(module, device=device, preprocessing=self.preprocessing, labels=_list(self.labels))
        if self.name is not None or self.source is not None:
            model = dataclasses.replace(model, spec=self.name or model.spec, weights=self.source or model.weights)
        return model


def _list(labels: tuple[str, ...] | None) -> list[str] | None:
    return list(labels) if labels is not None else None


__all__ = ["ModelSpec"]
