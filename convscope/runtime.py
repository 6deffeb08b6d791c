"""Process-wide settings for fast CPU tensor work: glibc's malloc keeps large freed blocks.

PyTorch allocates every CPU tensor with ``malloc``. glibc serves blocks above its mmap threshold
(at most 32 MiB, adjusted as blocks are freed) straight from the kernel and gives them back on
``free``, so each new large tensor is page-faulted in again, zero-filled by the kernel, one page
at a time. A projection's backward pass allocates dozens of such tensors (an EfficientNet
gradient at 112 x 112 is 38 MiB for a batch of 8), and on a 2-core CPU the page faults took a
third of the time: an elementwise op on one of them ran at 18 ms instead of 2 ms.

:func:`keep_freed_memory` raises the mmap and trim thresholds so freed blocks stay in the heap
for the next tensor of that size. The cost: memory freed by the process is not returned to the
operating system until it exits (the peak is unchanged). The command line calls it; library
users who build atlases call it themselves (once, at start-up) if they want the speed. It does
nothing off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the heap for reuse (see the module docstring). Returns whether
    the setting is in force: ``False`` where the C library is not glibc. Safe to call twice."""
    global _done
    if _done:
        return True
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
