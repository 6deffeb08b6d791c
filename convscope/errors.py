"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class ConvscopeError(Exception):
    """Base class: the message is a complete sentence that says what to do next."""


class UnknownModelError(ConvscopeError, ValueError):
    pass


class UnknownLayerError(ConvscopeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(ConvscopeError):
    pass


class ImageError(ConvscopeError):
    """An input file that cannot be used as an image; ``reason`` is one line."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
