"""Process-wide settings for fast CPU tensor work: glibc's malloc keeps large freed blocks.

PyTorch allocates every CPU tensor with ``malloc``. glibc serves blocks above its mmap threshold
(at most 32 MiB, adjusted as blocks are freed) straight from the kernel and gives them back on
``free``, so each new large tensor is page-faulted in again, zero-filled by the kernel, one page
at a time. A projection's backward pass allocates dozens of such tensors (an EfficientNet
gradient at 112 x 112 is 38 MiB for a batch of 8), and on a 2-core CPU the page faults took a
third of the time: an elementwise op on one of them ran at 18 ms instead of 2 ms.

:func:`keep_freed_memory` raises the mmap and trim thresholds so freed blocks stay in the heap
for the next tensor of that size. The cost: memory freed by the process is not returned to the
operating system until it exits (the peak is unchanged). The command line calls it at start-up,
and the heavy library calls (:func:`convscope.scan.scan`, :func:`convscope.atlas.build`, every
projection through :func:`convscope.backproject.forward_pass`, occlusion maps) call it on first use, so that
`project` on a batch of 32 runs 3x faster (BENCHMARKS.md); set ``CONVSCOPE_KEEP_FREED_MEMORY=0``
to leave malloc alone. It does nothing off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the heap for reuse (see the module docstring). Returns whether
    the setting is in force: ``False`` where the C library is not glibc or
    ``CONVSCOPE_KEEP_FREED_MEMORY=0``. Safe to call any number of times."""
    global _done
    if _done:
        return True
    if os.environ.get("CONVSCOPE_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 1 GiB: tensors up to that size come from the heap; trimming the heap top: never
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    _done = ok
    return ok


__all__ = ["keep_freed_memory"]
