"""keep_freed_memory: large freed tensors stay in the heap (checked with glibc's own counters)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from torch import nn
    from convscope import runtime
    from convscope.backproject import project

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
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    project(net, torch.randn(1, 3, 8, 8), "1", [0])  # a projection turns the setting on
    on = runtime._done
    after = free_in_heap_after_a_big_tensor()
    print(before, on, runtime.keep_freed_memory(), after)
    """
)


def _run(env_value: str | None) -> tuple[int, str, str, int]:
    env = dict(os.environ)
    env.pop("CONVSCOPE_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["CONVSCOPE_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env).stdout.split()
    return int(out[0]), out[1], out[2], int(out[3])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_freed_tensors_stay_in_the_heap_after_a_projection():
    before, on, again, after = _run(None)
    assert on == again == "True"
    assert before < 32 * 2**20  # by default the 64 MiB block went back to the kernel
    assert after >= 64 * 2**20  # now it waits in the heap for the next tensor


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_setting_can_be_refused():
    before, on, again, after = _run("0")
    assert on == again == "False"
    assert before < 32 * 2**20 and after < 32 * 2**20
