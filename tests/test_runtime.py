"""keep_freed_memory: large freed tensors stay in the heap (checked with glibc's own counters)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from convscope.runtime import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2

    def free_in_heap_after_a_big_tensor():
        t = torch.ones(64 * 2**20 // 4)  # 64 MiB: above glibc's largest automatic mmap threshold
        del t
        return libc.mallinfo2().fordblks

    before = free_in_heap_after_a_big_tensor()
    on = keep_freed_memory()
    after = free_in_heap_after_a_big_tensor()
    print(before, on, keep_freed_memory(), after)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_freed_tensors_stay_in_the_heap():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    before, on, again, after = int(out[0]), out[1], out[2], int(out[3])
    assert on == again == "True"
    assert before < 32 * 2**20  # by default the 64 MiB block went back to the kernel
    assert after >= 64 * 2**20  # now it waits in the heap for the next tensor
