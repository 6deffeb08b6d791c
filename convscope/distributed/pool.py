"""Ray actors that hold the model once each and run shards of work on it: the mechanism under
:mod:`convscope.distributed.ray_scan` (the policy: what a shard computes and how results merge).

:func:`connect` starts a local Ray or joins a cluster for the length of a block. A :class:`Pool`
starts ``num_workers`` actors (a GPU each when the cluster has GPUs), each loading the model from
one :class:`~convscope.distributed.spec.ModelSpec` put once in the object store. :meth:`Pool.map`
sends jobs (a module-level function and its arguments, which the actor calls as
``fn(model, worker_info, *args)``), keeps two jobs in flight per actor so that none waits for
the driver, and yields results as they finish. Ray restarts an actor whose process dies
(``max_restarts``) and runs its unfinished jobs again (``max_task_retries``); a job must
therefore compute the same result every time it runs. An actor that dies more often than that
is dropped and its jobs go to the others; a job that has killed two actors is reported, not
retried forever; a job out for far longer than the others runs a second time on an idle actor
at the end, and the first copy back counts.

>>> with connect(None, num_cpus=2), Pool(load_model(), num_workers=2) as pool:
...     for index, result in pool.map(work, [(paths[:64],), (paths[64:],)]):
...         ...
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
import statistics
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import ray
import torch

from ..errors import ConvscopeError
from .spec import ModelSpec

#: Jobs queued per actor: one running, one waiting, so an actor never idles while the driver
#: merges the previous result.
IN_FLIGHT = 2
#: Restarts of a dead actor process (and retries of its unfinished jobs) before it is dropped.
MAX_RESTARTS = 3
#: Actors a job may kill before it is reported as the cause rather than retried.
JOB_KILLS = 2
#: How often the driver looks for late jobs while it waits for results.
WAIT_SECONDS = 1.0
#: How long the first call waits for the actors to be placed before it says why it waits.
PLACE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where an actor runs: its process id, ``node`` (the host name and address, as a person
    finds the machine), ``device`` and torch's intra-op ``threads``."""

    pid: int
    node: str
    device: str
    threads: int


class Worker:
    """The actor body: the model, loaded on the first call (again after a restart), and jobs run
    on it. Every call carries the model's object reference (inside a list, so that Ray passes it
    unresolved): a constructor argument in the object store would not survive a restart
    (ray-project/ray#53727), while a call's arguments are kept until it finishes."""

    def __init__(self, threads: int, gpus: float):
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model = None
        self.info = None

    def _load(self, spec_ref: list) -> None:
        if self.model is not None:
            return
        model = ray.get(spec_ref[0]).load(self.device)
        # What every job needs first (torchvision's transforms import, the layer catalogue's
        # probe) is paid here, while the actors start together, not by each one's first job.
        model.transform, model.layers
        self.model = model
        self.info = WorkerInfo(os.getpid(), f"{socket.gethostname()} at {ray.util.get_node_ip_address()}",
                               str(model.device), torch.get_num_threads())

    def describe(self, spec_ref: list) -> WorkerInfo:
        self._load(spec_ref)
        return self.info

    def run(self, spec_ref: list, fn: Callable, *args) -> Any:
        self._load(spec_ref)
        return fn(self.model, self.info, *args)


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the length of the block: the one this process already joined; a cluster at
    ``address`` (``"auto"``: the one ``ray start`` runs on this machine; also ``RAY_ADDRESS``);
    or, with neither, a local Ray of ``num_cpus`` CPUs (default: all), shut down afterwards."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many actors, and the CPUs and GPUs each asks Ray for."""

    workers: int
    cpus: int
    gpus: float


def plan(num_workers: int | None = None, num_gpus_per_worker: float | str = "auto",
         num_cpus_per_worker: int | None = None) -> Plan:
    """Size the pool from the cluster's live nodes. With GPUs (``"auto"``: one per worker when
    the cluster has any), a worker per GPU and the GPU nodes' CPUs shared among them; without, a
    worker per node using all of that node's CPUs (torch's threads), or ``num_workers`` workers
    sharing the CPUs that are free. A cluster that adds nodes on demand (an autoscaler, KubeRay
    from zero replicas) has none yet to count: give ``num_workers`` (and ``num_gpus_per_worker``)
    and the actors wait for their nodes."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if num_gpus_per_worker == "auto":
        num_gpus_per_worker = 1 if any(r.get("GPU", 0) for r in nodes) else 0
    if not isinstance(num_gpus_per_worker, (int, float)) or num_gpus_per_worker < 0:
        raise ValueError(f"num_gpus_per_worker must be 'auto' or a number of GPUs >= 0, got {num_gpus_per_worker!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"num_workers must be a whole number >= 1, got {num_workers!r}")
    if num_gpus_per_worker > 0:
        slots = {i: int(r["GPU"] // num_gpus_per_worker) for i, r in enumerate(nodes)
                 if r.get("GPU", 0) >= num_gpus_per_worker}
        if not slots and num_workers is None:
            raise ConvscopeError(f"the Ray cluster has no node with {num_gpus_per_worker} GPU(s); pass "
                                 "num_gpus_per_worker=0 to scan on CPUs, or num_workers=N for nodes still to come")
        cpus = min((int(nodes[i].get("CPU", 0) // s) for i, s in slots.items()), default=1)
        workers = num_workers or sum(slots.values())
    else:
        cpu_nodes = [int(r.get("CPU", 0)) for r in nodes if r.get("CPU", 0) >= 1]
        if not cpu_nodes and num_workers is None:
            raise ConvscopeError("the Ray cluster has no node with a CPU; pass num_workers=N for nodes still to come")
        workers = num_workers or len(cpu_nodes)
        cpus = max(1, min(max(cpu_nodes, default=1), sum(cpu_nodes) // workers))
        free = int(ray.available_resources().get("CPU", 0))
        if free >= workers:  # another pool holds some: share what is left rather than wait for it
            cpus = min(cpus, free // workers)
    return Plan(workers, max(1, num_cpus_per_worker or cpus), float(num_gpus_per_worker))


def unwrap(exc: ray.exceptions.RayTaskError) -> BaseException:
    """The user-facing error a job raised (a wrong layer name, a bad argument), without Ray's
    wrapping; anything else stays wrapped, with the worker's traceback."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, (ConvscopeError, ValueError, TypeError)) else exc


class Pool:
    """``num_workers`` actors holding ``model`` (anything :meth:`ModelSpec.of` takes), sized by
    :func:`plan`. Use as a context manager (the actors end with the block) inside :func:`connect`.

    >>> with Pool("torchvision:resnet18", num_gpus_per_worker=1) as pool:
    ...     pool.infos()
    """

    def __init__(self, model, *, num_workers: int | None = None, num_gpus_per_worker: float | str = "auto",
                 num_cpus_per_worker: int | None = None, max_restarts: int = MAX_RESTARTS,
                 straggler_seconds: float | None = None):
        self.spec = ModelSpec.of(model)
        self.straggler_seconds = straggler_seconds
        self.plan = plan(num_workers, num_gpus_per_worker, num_cpus_per_worker)
        self._spec = [ray.put(self.spec)]  # once in the object store; each node fetches it once
        cls = ray.remote(Worker).options(
            num_cpus=self.plan.cpus, num_gpus=self.plan.gpus, max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
        self.actors = [cls.remote(self.plan.cpus, self.plan.gpus) for _ in range(self.plan.workers)]

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def infos(self) -> list[WorkerInfo]:
        """Each actor's :class:`WorkerInfo` (waits for the model to load)."""
        return self._get([a.describe.remote(self._spec) for a in self.actors])

    def call(self, fn: Callable, *args) -> Any:
        """``fn(model, info, *args)`` on the first actor, for what every actor would answer alike."""
        return self._get(self.actors[0].run.remote(self._spec, fn, *args))

    def _get(self, refs):
        """``ray.get``, saying once why it waits when the actors are not placed after a minute
        (the cluster is busy, or still adding nodes), and without Ray's wrapping of our errors."""
        pending = list(refs) if isinstance(refs, list) else [refs]
        _done, rest = ray.wait(pending, num_returns=len(pending), timeout=PLACE_SECONDS)
        if rest:
            free = ray.available_resources()
            warnings.warn(
                f"the Ray workers have not started after {PLACE_SECONDS:.0f} s: each asks for {self.plan.cpus} CPUs "
                f"and {self.plan.gpus:g} GPUs, and the cluster has {free.get('CPU', 0):g} CPUs and "
                f"{free.get('GPU', 0):g} GPUs free; they start when there is room (Ctrl-C stops)",
                RuntimeWarning, stacklevel=3,
            )
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    def map(self, fn: Callable, jobs: Sequence[tuple], in_flight: int = IN_FLIGHT, *,
            ordered: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, fn(model, info, *jobs[index]))`` for every job, as they finish (any order),
        or with ``ordered=True`` in job order (results that come early wait on the driver: for
        a consumer that appends, such as an index's rows).

        Once nothing is left to hand out, an idle actor runs a second copy of a job that has
        been out longer than ``straggler_seconds`` (default: three times the median job plus
        10 s): a node that hangs on its disk, or an actor that Ray cannot restart for want of a
        free GPU, then delays the map by that much instead of stopping it. A job gives the same
        result wherever it runs, so the first copy back is kept and the other ignored."""
        if ordered:
            early: dict[int, Any] = {}
            ready = 0
            for job, result in self.map(fn, jobs, in_flight):
                early[job] = result
                while ready in early:
                    yield ready, early.pop(ready)
                    ready += 1
            return
        todo = list(range(len(jobs)))[::-1]  # a stack: pop() gives the lowest index
        alive = list(self.actors)
        load = {id(a): 0 for a in alive}
        running: dict[ray.ObjectRef, tuple[int, Any, float]] = {}  # job, actor, when sent
        finished: set[int] = set()
        walls: list[float] = []
        kills: dict[int, int] = {}

        def send(job: int, actor) -> None:
            running[actor.run.remote(self._spec, fn, *jobs[job])] = (job, actor, time.monotonic())
            load[id(actor)] += 1

        def fill() -> None:  # round the actors: every one gets a first job before any a second
            for level in range(1, in_flight + 1):
                for actor in alive:
                    if todo and load[id(actor)] < level:
                        send(todo.pop(), actor)

        def copy_stragglers() -> None:
            idle = [a for a in alive if load[id(a)] == 0]
            if todo or not idle or (self.straggler_seconds is None and not walls):
                return
            limit = self.straggler_seconds if self.straggler_seconds is not None else 3 * statistics.median(walls) + 10
            now = time.monotonic()
            copies = collections.Counter(job for job, _a, _t in running.values())
            late = sorted((t, job) for job, _a, t in running.values()
                          if job not in finished and copies[job] == 1 and now - t > limit)
            for (_t, job), actor in zip(late, idle):
                send(job, actor)

        fill()
        while len(finished) < len(jobs):
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
            if not ready:
                copy_stragglers()
                continue
            job, actor, sent = running.pop(ready[0])
            load[id(actor)] -= 1
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                if job in finished:
                    continue
                raise unwrap(exc) from None
            except ray.exceptions.RayActorError as exc:
                # Ray restarted this actor max_restarts times and it died again: drop it, and
                # give its jobs to the others, unless this job is what kills them.
                alive = [a for a in alive if a is not actor]
                if job in finished or any(j == job for j, _a, _t in running.values()):
                    continue
                kills[job] = kills.get(job, 0) + 1
                if kills[job] >= JOB_KILLS:
                    raise ConvscopeError(f"job {job} killed {kills[job]} workers ({type(exc).__name__}); "
                                         "see the Ray logs of its node for why") from None
                if not alive:
                    raise ConvscopeError(f"every Ray worker died ({type(exc).__name__}); see the Ray logs, "
                                         "then run again with resume=True") from None
                todo.append(job)
                fill()
                continue
            fill()
            if job in finished:  # the other copy was back first
                continue
            finished.add(job)
            walls.append(time.monotonic() - sent)
            yield job, result


@contextlib.contextmanager
def cluster(model, address: str | None = None, *, num_workers: int | None = None,
            num_gpus_per_worker: float | str = "auto", num_cpus: int | None = None) -> Iterator[Pool]:
    """:func:`connect` and a :class:`Pool` of ``model`` in one block: what a build that runs
    several steps on the same actors (the scan, then the projections) opens once.

    >>> with cluster(model, "auto") as pool:
    ...     result = scan_with(pool, ["photos/"], top=9)
    """
    with connect(address, num_cpus):
        with Pool(model, num_workers=num_workers, num_gpus_per_worker=num_gpus_per_worker) as pool:
            yield pool


@contextlib.contextmanager
def open_pool(ray: "Pool | bool | str", model, num_workers: int | None = None) -> Iterator[Pool]:
    """The pool a build runs on, as a build's ``ray=`` argument names it: a running :class:`Pool`
    (used as it is, and left running: several builds, one start-up); ``True`` (a local Ray, or the
    one this process joined); or a cluster's address (``"auto"``, ``"HOST:PORT"``). The last two
    open :func:`cluster` of ``model`` with ``num_workers`` actors for the block. The one way every
    engine opens its pool.

    >>> with open_pool("auto", model, num_workers=4) as pool:
    ...     result = scan_with(pool, ["photos/"], top=9)
    """
    if isinstance(ray, Pool):
        yield ray
        return
    with cluster(model, None if ray is True else ray, num_workers=num_workers) as pool:
        yield pool


__all__ = ["Plan", "Pool", "Worker", "WorkerInfo", "cluster", "connect", "open_pool", "plan"]
