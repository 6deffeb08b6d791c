"""convscope: see what a convolutional image classifier has learned."""
from .errors import ConvscopeError, ImageError, UnknownLayerError, UnknownModelError, WeightsUnavailableError
from .models import DEFAULT_MODEL, LoadedModel, Preprocessing, available_models, load_model

__version__ = "0.1.0"

__all__ = [
    "ConvscopeError",
    "DEFAULT_MODEL",
    "ImageError",
    "LoadedModel",
    "Preprocessing",
    "UnknownLayerError",
    "UnknownModelError",
    "WeightsUnavailableError",
    "available_models",
    "load_model",
]
