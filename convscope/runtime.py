"""Process-wide malloc settings: large freed blocks are kept for reuse, and given back on demand.

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

A long-running process also wants its memory back after a burst of work: :func:`release_memory`
hands the free pages of every heap back to the kernel at once (glibc's ``malloc_trim``), whatever
the thresholds. The gallery server calls it after each decode and when its uploads go idle
(:mod:`convscope.web.workers`), and keeps the setting for the speed it gives during a burst.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


@functools.cache
def _libc():
    """glibc through ctypes, or ``None`` off Linux or off glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the heap for reuse (see the module docstring). Returns whether
    the setting is in force: ``False`` where the C library is not glibc or
    ``CONVSCOPE_KEEP_FREED_MEMORY=0``. Safe to call any number of times."""
    global _done
    if _done:
        return True
    if os.environ.get("CONVSCOPE_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    libc = _libc()
    if libc is None:
        return False
    # 1 GiB: tensors up to that size come from the heap; trimming the heap top: never
    ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) == 1
    _done = ok
    return ok


def release_memory() -> bool:
    """Give the free pages of every malloc heap back to the kernel now (glibc's
    ``malloc_trim(0)``); the process's resident size drops by what it had freed but kept, and
    the next large blocks are page-faulted in again. Returns whether anything was released
    (``False`` off glibc).

    >>> release_memory()        # after a burst of work, before the process waits
    True
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


__all__ = ["keep_freed_memory", "release_memory"]
