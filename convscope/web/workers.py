"""Where a gallery server's heavy work runs, in what order, and how its memory comes back afterwards.

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

The model thread has two lanes. Interactive jobs (a Grad-CAM, a unit search, an upload, the
health report: a person waits for each) go before batch jobs (a unit's fill, which no one
watches). A batch job is a sequence of small steps (a photo read, one projection batch, one
feature-visualization step) and calls :attr:`Workers.pause` between them: there, with the model
as it was given (no hooks, its lock released), the interactive jobs waiting run first. So an
interactive job waits for at most one step of a batch job, never for the whole of it.

Every queue is bounded: at most ``max_waiting`` interactive jobs, and as many decodes, wait for
their thread; one more is refused (:class:`Busy`: 503, one line, ``Retry-After``). The batch
lane's bound is its one user's (the fill queue, :mod:`convscope.web.fill_pages`). A job given
its ``request`` is dropped, not computed, when the client goes away before it starts
(:class:`Abandoned`).

>>> workers = Workers(decoders=2)
>>> async with workers.job():
...     image = await workers.decode(load_image_bytes, data, request=request)
...     result = await workers.model(analyzer.analyze, image, request=request)
>>> await workers.batch(filler.fill, "blocks.2", 7, pause=workers.pause)  # yields to the above
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import ConvscopeError
from ..runtime import release_memory

#: Interactive jobs, and decodes, that may wait for their thread at once; more get 503.
MAX_WAITING = 16
#: Seconds a client refused by a full queue is told to wait (``Retry-After``).
RETRY_AFTER = 2
logger = logging.getLogger("convscope.web")


class Busy(ConvscopeError):
    """A queue is full: 503 with the reason and ``Retry-After: retry_after`` (seconds)."""

    status = 503

    def __init__(self, message: str, retry_after: int = RETRY_AFTER):
        super().__init__(message)
        self.headers = {"Retry-After": str(int(retry_after))}


class Abandoned(ConvscopeError):
    """The client went away before its job started; the job was dropped (no one reads this)."""

    status = 499  # nginx's "client closed request"


class Pause:
    """What a batch job calls between its steps (:attr:`Workers.pause`): ``pause.wanted()``
    says whether interactive jobs wait; ``pause()``, on the model thread, runs them and returns
    when none waits. Call it only where the model is as it was given: no hooks on it, its lock
    (:func:`convscope.hooks.model_lock`) not held, its settings restored."""

    def __init__(self, lane: "_ModelLane"):
        self._lane = lane

    def wanted(self) -> bool:
        return self._lane.count(INTERACTIVE) > 0

    def __call__(self) -> None:
        self._lane.run_interactive()


INTERACTIVE, BATCH = "interactive", "batch"


class _ModelLane:
    """The one model thread: jobs of the interactive lane before those of the batch lane."""

    def __init__(self):
        self.waiting: dict[str, collections.deque] = {INTERACTIVE: collections.deque(), BATCH: collections.deque()}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def count(self, lane: str) -> int:
        """Jobs waiting in ``lane``, those dropped meanwhile (their client went away) let go."""
        with self._cond:
            queue = self.waiting[lane]
            if any(future.cancelled() for future, _fn in queue):
                kept = [job for job in queue if not job[0].cancelled()]
                queue.clear()
                queue.extend(kept)
            return len(queue)

    def submit(self, future: Future, fn, lane: str) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="convscope-model", daemon=True)
                self._thread.start()
            self.waiting[lane].append((future, fn))
            self._cond.notify()

    def _next(self, lanes) -> tuple | None:
        for lane in lanes:
            if self.waiting[lane]:
                return self.waiting[lane].popleft()
        return None

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while self._thread is me and not (job := self._next((INTERACTIVE, BATCH))):
                    self._cond.wait()
                if self._thread is not me:  # closed (a thread started since is the model thread)
                    return
            _run(*job)

    def run_interactive(self) -> None:
        if threading.current_thread() is not self._thread:
            raise RuntimeError("Workers.pause runs the waiting jobs on the model thread: call it from a batch job")
        while True:
            with self._cond:
                job = self._next((INTERACTIVE,))
            if job is None:
                return
            _run(*job)

    def close(self) -> None:
        with self._cond:
            self._thread = None
            for lane in self.waiting.values():
                while lane:
                    lane.popleft()[0].cancel()
            self._cond.notify_all()


def _run(future: Future, fn) -> None:
    if not future.set_running_or_notify_cancel():
        return  # its client went away: dropped
    try:
        result = fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the request that waits for it
        future.set_exception(exc)
    else:
        future.set_result(result)


class Workers:
    """``decoders`` decode threads and one model thread, started on first use; :meth:`close`
    stops them (the next use starts them again). The coroutines run on the server's event loop.
    ``max_waiting``: interactive jobs, and decodes, that may wait at once (see the module's
    docstring)."""

    def __init__(self, decoders: int = 2, max_waiting: int = MAX_WAITING):
        if decoders < 1:
            raise ValueError(f"decoders must be at least 1, got {decoders}")
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be at least 1, got {max_waiting}")
        self.decoders = decoders
        self.max_waiting = max_waiting
        self._decode: ThreadPoolExecutor | None = None
        self._decodes = 0  # submitted and not finished
        self._lane = _ModelLane()
        #: Given to a batch job, to call between its steps (:class:`Pause`).
        self.pause = Pause(self._lane)
        self.jobs = 0  # in progress
        self._closed = 0

    async def decode(self, fn, *args, request=None):
        """``fn(*args)`` on a decode thread; dropped if ``request``'s client goes away first."""
        if self._decodes >= self.decoders + self.max_waiting:
            raise Busy(f"the server is decoding {self._decodes} images already (at most {self.max_waiting} wait); "
                       f"try again in {RETRY_AFTER} s")
        if self._decode is None:
            self._decode = ThreadPoolExecutor(self.decoders, thread_name_prefix="convscope-decode")
        self._decodes += 1
        try:
            future = self._decode.submit(fn, *args)
            return await _wait(future, request)
        finally:
            self._decodes -= 1

    async def model(self, fn, *args, request=None):
        """``fn(*args)`` on the model thread, before any batch job's next step; dropped if
        ``request``'s client goes away before it starts (:class:`Abandoned`)."""
        waiting = self._lane.count(INTERACTIVE)
        if waiting >= self.max_waiting:
            raise Busy(f"the model has {waiting} requests waiting already (at most {self.max_waiting}); "
                       f"try again in {RETRY_AFTER} s")
        return await self._submit(INTERACTIVE, functools.partial(fn, *args), request)

    async def batch(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the model thread when no interactive job waits; it should
        call :attr:`pause` between its steps (give it ``pause=workers.pause``)."""
        return await self._submit(BATCH, functools.partial(fn, *args, **kwargs), None)

    def batch_future(self, fn, *args, generation: int | None = None, **kwargs) -> Future:
        """:meth:`batch` for a thread of its own (not the event loop): the job's
        :class:`concurrent.futures.Future`, cancelled if the workers are closed before it runs.
        Given the :attr:`generation` its thread started in, a job submitted after :meth:`close`
        is cancelled at once, so a background thread never starts the model thread again."""
        future: Future = Future()
        if generation is not None and generation != self.generation:
            future.cancel()
            return future
        self._lane.submit(future, functools.partial(fn, *args, **kwargs), BATCH)
        return future

    @property
    def generation(self) -> int:
        """How many times the workers were closed: a background thread notes it when it starts
        and stops when it changed (:meth:`batch_future`)."""
        return self._closed

    async def _submit(self, lane: str, fn, request):
        future: Future = Future()
        self._lane.submit(future, fn, lane)
        return await _wait(future, request)

    @contextlib.asynccontextmanager
    async def job(self):
        """A request's heavy work in progress: when the last one ends, every heap is trimmed."""
        self.jobs += 1
        try:
            yield
        finally:
            self.jobs -= 1
            if self.jobs == 0:
                await self._submit(BATCH, release_memory, None)

    def close(self) -> None:
        self._closed += 1
        self._lane.close()
        pool, self._decode = self._decode, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


async def _wait(future: Future, request):
    """The result of ``future``; if ``request``'s client goes away before it started, it is
    cancelled (never run) and :class:`Abandoned` raised. A job already running is waited for."""
    waiting = asyncio.wrap_future(future)
    if request is None:
        return await waiting
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done() and future.cancel():
            logger.info("%s %s dropped before it started: the client went away", request.method, request.url.path)
            raise Abandoned("the client went away before its request was computed")
        return await waiting
    finally:
        gone.cancel()
        future.cancel()  # when the request itself is cancelled (a server shutting down): never started


async def _disconnected(receive) -> None:
    """Returns when the client has gone away. Once a request's body is read, an ASGI server's
    ``receive`` waits for the disconnect; one that answers at once again is asked less often."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


__all__ = ["Abandoned", "Busy", "MAX_WAITING", "Pause", "RETRY_AFTER", "Workers"]
