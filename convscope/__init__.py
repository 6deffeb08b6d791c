"""convscope: see what a convolutional image classifier has learned."""
from .errors import ConvscopeError, ImageError, UnknownLayerError, UnknownModelError, WeightsUnavailableError
from .classify import classify
from .data import expand_inputs, iter_batches, load_image, sample_photos
from .models import DEFAULT_MODEL, LoadedModel, Preprocessing, available_models, load_model
from .scan import ScanState, scan
from .atlas import Atlas

__version__ = "0.1.0"

__all__ = [
    "Atlas",
    "ConvscopeError",
    "DEFAULT_MODEL",
    "ImageError",
    "LoadedModel",
    "Preprocessing",
    "ScanState",
    "UnknownLayerError",
    "UnknownModelError",
    "WeightsUnavailableError",
    "available_models",
    "classify",
    "expand_inputs",
    "iter_batches",
    "load_image",
    "sample_photos",
    "load_model",
    "scan",
]
