"""The command line: thin wrappers that parse arguments and call the library.

Each command lives in its own module in this package and attaches itself to :data:`main`;
every module here is imported when the CLI starts, so adding a command is adding a file.
"""
from __future__ import annotations

import importlib
import pkgutil

from ._common import main

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["main"]
