"""The settings of a scan: what a checkpoint records and checks (:func:`checkpoint_config`,
:func:`resume_from`), the checks of its numbers, its keyword options as one record
(:class:`ScanOptions`, for the scan on Ray), and which value ranks each layer's top images
(:func:`ranking`): the layer's output, or, for a layer whose output is a saturating activation
(ReLU6 ties at 6.0 in many images), that activation's input, the pre-activation.

>>> ranking(model.module, ["bn1", "blocks.2"], "auto")
{'bn1': Saturation(layer='bn1', activation='bn1.act', type='ReLU6', floor=0.0, ceiling=6.0), 'blocks.2': None}
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .choices import RANK_BY
from .errors import ArgumentError, ConvscopeError
from .saturation import Saturation, saturating_activations


@dataclasses.dataclass(frozen=True)
class ScanOptions:
    """How a scan runs: the keyword arguments of :func:`convscope.scan.scan`, with its defaults, for an engine
    that takes them all and runs the same scan elsewhere (:func:`convscope.distributed.scan_with`
    reads ``ScanOptions(**options)``; tests/test_distributed.py checks that the two agree)."""

    crops: object = None
    batch_size: int = 32
    workers: int | None = None
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 1000
    resume: bool = False
    offset: int = 0
    autocast: bool = False
    progress: bool | None = None
    on_skip: Callable[[str, str], None] | None = None
    rank_by: str = "auto"
    on_batch: Callable | None = None  # the snapshots of one process's scan; a scan on Ray calls it not


def check_rank_by(rank_by: str) -> None:
    """Raise :class:`~convscope.errors.ArgumentError` (one line) unless ``rank_by`` is one of
    :data:`convscope.choices.RANK_BY`."""
    if rank_by not in RANK_BY:
        raise ArgumentError(f"`rank_by` must be one of {', '.join(RANK_BY)}, got {rank_by!r}", param="rank_by")


def ranking(module: torch.nn.Module, names: Sequence[str], rank_by: str = "auto",
            input_size: tuple[int, int] | None = None) -> dict[str, Saturation | None]:
    """Per layer, the saturating activation whose input ranks its top images, or None where the
    layer's output does. ``rank_by``: ``"auto"`` (the pre-activation where
    :func:`~convscope.saturation.saturating_activations` finds one), ``"output"`` (every layer by
    its output, as before) or ``"pre-activation"`` (every layer; a layer without a saturating
    activation is a one-line error). ``input_size`` of the probe pass (default 64 x 64)."""
    check_rank_by(rank_by)
    if rank_by == "output":
        return {name: None for name in names}
    x = None
    if input_size is not None:
        p = next(module.parameters(), None)
        x = torch.full((1, 3, *input_size), 0.5, device=p.device if p is not None else "cpu",
                       dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    out = saturating_activations(module, list(names), x)  # one probe pass for every layer
    if rank_by == "pre-activation":
        for name, sat in out.items():
            if sat is None:
                raise ConvscopeError(
                    f"layer {name!r} does not end in a saturating activation (ReLU6, Hardtanh, Sigmoid...), so it has "
                    "no pre-activation to rank by; use rank_by='auto' (--rank-by auto) or leave the layer out")
    return out


def rank_choices(saturations: Mapping[str, Saturation | None]) -> dict[str, str]:
    """``{layer: "output" | "pre-activation"}`` of :func:`ranking`'s result (what a
    :class:`~convscope.scan.ScanState` records)."""
    return {name: "output" if s is None else "pre-activation" for name, s in saturations.items()}


def describe_ranking(saturation: Saturation | None) -> str:
    """What ranks a layer, in words: ``"output"`` or ``"pre-activation (input of ReLU6 'bn1.act')"``."""
    if saturation is None:
        return "output"
    return f"pre-activation (input of {saturation.type} {saturation.activation!r})"


def fingerprint(paths: Sequence[str]) -> str:
    """The sha256 of a photo list (absolute paths, in order): what a checkpoint was made of."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.abspath(p).encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


def check_arguments(top, batch_size: int, checkpoint_every: int) -> None:
    """The checks of :func:`scan`'s numbers, shared with the scan on Ray."""
    if not isinstance(top, int) or top < 1:
        raise ArgumentError(f"`top` must be a positive whole number, got {top!r}", param="top")
    if batch_size < 1:
        raise ArgumentError(f"`batch_size` must be at least 1, got {batch_size}", param="batch_size")
    if checkpoint_every < 1:
        raise ArgumentError(f"`checkpoint_every` must be at least 1 image, got {checkpoint_every}", param="checkpoint_every")


def checkpoint_config(spec, weights, input_size, names: Sequence[str], top: int, crops, photos_per_batch: int,
           offset: int, paths: Sequence[str], rank_by: Mapping[str, str] | None = None) -> dict:
    """What a checkpoint must have been made with to be resumed: the model, the layers, the
    settings that shape the result, and the photo list. ``rank_by`` (:func:`rank_choices`'s
    ``{layer: "output" | "pre-activation"}``) is part of it where some layer is ranked by its
    pre-activation (so checkpoints of output-ranked scans made before the choice existed resume)."""
    config = {
        "model": spec,
        "weights": weights,
        "input_size": list(input_size),
        "layers": list(names),
        "top": top,
        "crops": list(crops.levels),
        "photos_per_batch": photos_per_batch,
        "offset": offset,
        "photos": len(paths),
        "paths_sha256": fingerprint(paths),
    }
    if rank_by and any(v != "output" for v in rank_by.values()):
        config["rank_by"] = dict(rank_by)
    return config


def resume_from(checkpoint: str | os.PathLike | None, settings: dict) -> dict | None:
    """The checkpoint's data (``state``, ``extra``) when there is one to resume, after checking
    that it was made with ``settings`` (:func:`checkpoint_config`'s); None when there is none."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    data = load_checkpoint(checkpoint)
    old = data.get("extra", {}).get("config")
    if old != settings:
        diff = [k for k in dict.fromkeys([*settings, *(old or {})]) if (old or {}).get(k) != settings.get(k)]
        raise ConvscopeError(
            f"the checkpoint {checkpoint} was made with other settings ({', '.join(diff) or 'unknown'} differ); "
            "rerun with the same images and options, or start over with resume=False"
        )
    return data



def load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvscopeError(f"no scan checkpoint at {path}") from None
    except Exception as exc:
        raise ConvscopeError(
            f"cannot read scan checkpoint {path} ({type(exc).__name__}); delete it and start over"
        ) from None


__all__ = ["RANK_BY", "ScanOptions", "check_arguments", "checkpoint_config", "describe_ranking", "fingerprint", "load_checkpoint",
           "rank_choices", "ranking", "resume_from"]
