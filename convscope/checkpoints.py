"""Checkpoints of a user's training run -> weights for a module, whatever the file's layout.

The layouts people have, all read with ``torch.load(..., weights_only=True)`` (never unpickling
code) or as safetensors:

* a bare state dict (``torch.save(model.state_dict(), path)``);
* a training checkpoint that holds one under ``state_dict`` (PyTorch Lightning, timm's train
  script) or ``model`` (torchvision's reference scripts, DeiT, many others), beside the
  optimizer, the epoch and so on;
* a ``.safetensors`` file.

Key prefixes that wrappers add are stripped when every key has them and the module's own keys do
not: ``module.`` (``DataParallel``/``DistributedDataParallel``) and ``model.`` (a
``LightningModule`` holding the network as ``self.model``). A checkpoint that still does not fit
raises one :class:`~convscope.errors.ConvscopeError` line naming the first key that differs.

>>> state = read_state_dict("runs/epoch-05.ckpt")          # a Lightning checkpoint
>>> load_weights(net, "runs/epoch-05.ckpt")                # checked, strict, in place
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .errors import ConvscopeError
from .models import LoadedModel, Preprocessing, load_model

#: Keys under which training scripts keep the model's state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model")
#: Prefixes that wrappers put before every key, stripped when the module's keys lack them.
PREFIXES = ("module.", "model.")


class CheckpointError(ConvscopeError, ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the module."""


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (CPU tensors), unwrapped from a training checkpoint's
    ``state_dict`` or ``model`` entry; prefixes are left as stored (:func:`fit_keys` strips them).

    Raises :class:`CheckpointError` (one line) for a missing or unreadable file, or one that holds
    no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {str(path)!r} as safetensors ({_first_line(exc)})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and "unsafe global" errors all mean: not a plain state dict
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} with weights_only=True ({type(exc).__name__}: {_first_line(exc)}); "
            "save the weights with torch.save(model.state_dict(), path)"
        ) from None
    return unwrap(obj, str(path))


def unwrap(obj, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object: the object itself if it is one, else its
    ``state_dict`` or ``model`` entry."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:6])
        raise CheckpointError(
            f"{source} holds no state dict (its keys: {keys}{', ...' if len(obj) > 6 else ''}); "
            f"expected tensors by name, or one of them under {' or '.join(map(repr, WRAPPER_KEYS))}"
        )
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")


def fit_keys(state: Mapping[str, torch.Tensor], expected: list[str] | set[str]) -> dict[str, torch.Tensor]:
    """``state`` with wrapper prefixes (``module.``, ``model.``, nested in any order) removed
    while every key has one and the ``expected`` keys (the module's) do not."""
    state = dict(state)
    expected = list(expected)
    changed = True
    while changed and state:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in expected):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def check_fit(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first key of ``state`` that does not fit
    ``module``: the module's keys in order (missing, or another shape), then the checkpoint's
    keys that the module lacks (unexpected)."""
    own = module.state_dict()
    problems = []
    for key, ref in own.items():
        if key not in state:
            problems.append(f"missing key {key!r}")
        elif tuple(state[key].shape) != tuple(ref.shape):
            problems.append(
                f"key {key!r} has shape {tuple(state[key].shape)} in the checkpoint, {tuple(ref.shape)} in the model"
            )
    problems.extend(f"unexpected key {key!r}" for key in state if key not in own)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        prefixes = {k.split(".", 1)[0] for k in state if "." in k}
        hint = ""
        if len(prefixes) == 1 and all("." in k for k in state) and not any(k.startswith(f"{next(iter(prefixes))}.") for k in own):
            hint = f"; every key of the checkpoint starts with {next(iter(prefixes)) + '.'!r}: strip it from the state dict"
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: {problems[0]}{more}{hint}")


def load_weights(module: nn.Module, checkpoint, source: str | None = None) -> nn.Module:
    """Load ``checkpoint`` (a path, or a state dict / training checkpoint already in memory) into
    ``module``, in place and strictly; returns ``module``.

    Wrapper keys and prefixes are handled as the module docstring says; tensors are cast to the
    module's dtypes and devices by ``load_state_dict``. A checkpoint that does not fit raises
    :class:`CheckpointError` naming the first mismatching key, and leaves ``module`` unchanged.

    >>> net = load_weights(TinyNet(), "runs/epoch-03.pt")
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or str(checkpoint)
        state = read_state_dict(checkpoint)
    else:
        source = source or "the checkpoint"
        state = unwrap(checkpoint, source)
    own = module.state_dict()
    state = fit_keys(state, list(own))
    check_fit(module, state, repr(source) if source != "the checkpoint" else source)
    module.load_state_dict(state, strict=True)
    return module


# --------------------------------------------------------------------------- a model per checkpoint


def checkpoint_models(
    model: str | nn.Module | LoadedModel | Callable[[], nn.Module],
    checkpoints: Sequence,
    *,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | None = None,
) -> list[LoadedModel]:
    """One :class:`~convscope.models.LoadedModel` per checkpoint, in eval mode.

    ``model`` gives the architecture: a spec (``"torchvision:resnet18"``, built with
    ``pretrained=False``), an ``nn.Module`` or ``LoadedModel`` (copied; the caller's is never
    changed), or a function that returns a fresh ``nn.Module``. ``checkpoints`` are files or
    state dicts in memory, in any layout :mod:`convscope.checkpoints` reads. ``preprocessing``
    replaces the model's (needed for a bare module that is not an ImageNet model).
    """
    if isinstance(model, LoadedModel):
        base = dataclasses.replace(model, module=copy.deepcopy(model.module),
                                   preprocessing=preprocessing or model.preprocessing)
        if device is not None:
            base = dataclasses.replace(base, module=base.module.to(device), device=torch.device(device))
    elif isinstance(model, str):
        base = load_model(model, device=device, pretrained=False, preprocessing=preprocessing)
    elif isinstance(model, nn.Module):
        base = load_model(copy.deepcopy(model), device=device, preprocessing=preprocessing)
    elif callable(model):
        module = model()
        if not isinstance(module, nn.Module):
            raise TypeError(f"the model function returned a {type(module).__name__}, not an nn.Module")
        base = load_model(module, device=device, preprocessing=preprocessing)
    else:
        raise TypeError(
            f"model must be a spec string, an nn.Module, a LoadedModel or a function returning an nn.Module, "
            f"got {type(model).__name__}"
        )
    out = []
    for i, ckpt in enumerate(checkpoints):
        module = copy.deepcopy(base.module)
        source = str(ckpt) if isinstance(ckpt, (str, os.PathLike)) else f"checkpoint {i}"
        load_weights(module, ckpt, source)
        out.append(dataclasses.replace(base, module=module.eval(), weights=source))
    return out


def checkpoint_labels(checkpoints: Sequence) -> list[str]:
    """Short labels: the file names without their suffix (the parent folder too where stems
    repeat), ``checkpoint N`` for state dicts in memory."""
    stems = [Path(c).stem if isinstance(c, (str, os.PathLike)) else f"checkpoint {i}" for i, c in enumerate(checkpoints)]
    if len(set(stems)) < len(stems):
        stems = [f"{Path(c).parent.name}/{s}" if isinstance(c, (str, os.PathLike)) else s for c, s in zip(checkpoints, stems)]
    return stems


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then ``{``; a
    ``torch.save`` file is a zip (``PK``) or an old-style pickle (``\\x80``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


__all__ = ["CheckpointError", "PREFIXES", "WRAPPER_KEYS", "check_fit", "checkpoint_labels", "checkpoint_models", "fit_keys",
           "load_weights", "read_state_dict", "unwrap"]
