"""The model specs that ``--model`` accepts, without importing torch.

``convscope --help`` and every command's ``--help`` list them from here; :mod:`convscope.models`
registers its builders under the same names and takes :data:`DEFAULT_MODEL` from here
(tests/test_cli.py checks that :data:`BUILTIN` is what ``available_models()`` returns).
"""
from __future__ import annotations

DEFAULT_MODEL = "efficientnet_lite0"

# Registered names, then family prefixes, in the order `convscope models` lists them.
BUILTIN: tuple[str, ...] = (DEFAULT_MODEL, "timm:NAME", "torchvision:NAME")
