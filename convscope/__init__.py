"""convscope: see what a convolutional image classifier has learned.

The names below load on first use (PEP 562), so that ``import convscope`` and the command
line's ``--help`` do not import torch.
"""
from __future__ import annotations

import sys
import types

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ConvscopeError": "errors", "ImageError": "errors", "UnknownLayerError": "errors",
    "UnknownModelError": "errors", "WeightsUnavailableError": "errors",
    "classify": "classify",
    "expand_inputs": "data", "iter_batches": "data", "load_image": "data", "sample_photos": "data",
    "DEFAULT_MODEL": "models", "LoadedModel": "models", "Preprocessing": "models",
    "available_models": "models", "load_model": "models",
    "ScanState": "scan", "scan": "scan",
    "Atlas": "atlas",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """``convscope.scan`` and ``convscope.classify`` are the functions, as they were when this
    package imported everything eagerly: importing the submodule of the same name (which sets
    the package's attribute to the module) keeps the function there instead."""

    def __setattr__(self, name: str, value) -> None:
        if (name in ("scan", "classify") and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
