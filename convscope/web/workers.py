"""Where a gallery server's heavy work runs, and how its memory comes back afterwards.

glibc's malloc gives each thread that allocates a heap (an arena) of its own, up to 8 per core,
and a heap keeps what was freed in it: under :func:`convscope.runtime.keep_freed_memory`, which
the CLI and the heavy library calls turn on, until the process ends. Work spread over the 40
threads of the request pool leaves up to 16 heaps (on 2 cores) each as large as its largest
decode or analysis; that is how a server grew from 941 MB to 3 GB and stayed there.

So the heavy work runs on a few long-lived threads: ``decoders`` threads decode images (an
upload, or an atlas photo for its source page), and one thread runs the model (analyses run one
at a time anyway: the model's lock serializes them). During a burst each of these heaps reuses
its own freed blocks, as a batch job does, so the memory held is bounded by the number of
threads, not by the number of requests; when the last job in progress ends, every heap is
trimmed (glibc's ``malloc_trim``, :func:`convscope.runtime.release_memory`). Giving freed blocks
back at once instead made each analysis page-fault its tensors in again: 2.2x the CPU for a
classification and 2.4x with occlusion and Grad-CAM (EfficientNet-Lite0). And the model on one
thread of its own took a tenth of the CPU per classification of the model on whichever pool
thread came next (about 60 ms instead of 560 ms on a loaded 2-core machine).

>>> workers = Workers(decoders=2)
>>> async with workers.job():
...     image = await workers.decode(load_image_bytes, data)
...     result = await workers.model(analyzer.analyze, image)
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

from ..runtime import release_memory


class Workers:
    """``decoders`` decode threads and one model thread, started on first use; :meth:`close`
    stops them (the next use starts them again). The coroutines run on the server's event loop."""

    def __init__(self, decoders: int = 2):
        if decoders < 1:
            raise ValueError(f"decoders must be at least 1, got {decoders}")
        self.decoders = decoders
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.jobs = 0  # in progress

    def _pool(self, kind: str) -> ThreadPoolExecutor:
        if kind not in self._pools:
            size = self.decoders if kind == "decode" else 1
            self._pools[kind] = ThreadPoolExecutor(size, thread_name_prefix=f"convscope-{kind}")
        return self._pools[kind]

    async def decode(self, fn, *args):
        """``fn(*args)`` on a decode thread."""
        return await self._run(self._pool("decode"), fn, *args)

    async def model(self, fn, *args):
        """``fn(*args)`` on the model thread."""
        return await self._run(self._pool("model"), fn, *args)

    @contextlib.asynccontextmanager
    async def job(self):
        """A request's heavy work in progress: when the last one ends, every heap is trimmed."""
        self.jobs += 1
        try:
            yield
        finally:
            self.jobs -= 1
            if self.jobs == 0:
                await self._run(self._pool("model"), release_memory)

    def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    async def _run(executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

