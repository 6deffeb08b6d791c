"""Names a package loads on first use (PEP 562): ``import convscope`` and the command line's
``--help`` import no torch, and ``import convscope.distributed`` no Ray, until a name is used."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str],
                 missing: Callable[[ModuleNotFoundError], Exception | None] | None = None):
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public names (``exports``: name
    -> the submodule that defines it) load on first use and are kept. ``missing``: for an
    import that fails for want of a third-party package, the error to raise instead (or None to
    let the import's own error through).

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"scan": "scan"})
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
        except ModuleNotFoundError as exc:
            error = missing(exc) if missing is not None else None
            if error is None:
                raise
            raise error from None
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
