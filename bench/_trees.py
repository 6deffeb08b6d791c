"""Two checkouts of convscope measured side by side in one run: ``--before DIR`` (and ``--after
DIR``, default this checkout), shared by ``bench/scan.py``, ``bench/search.py`` and
``bench/serve.py``.

Each checkout gets its own worker process: the bench script itself, started with
``--tree-worker`` and ``PYTHONPATH`` set to that checkout, so ``import convscope`` there finds
that checkout's code (checked: a worker that imports another convscope stops the run). The bench
code is the same for both: only convscope differs. The harness calls the script's module-level
functions in the workers, one JSON line each way, alternating which tree goes first round by
round (before, after; after, before; ...), so that a busy moment on a shared machine hits both
alike; then it prints each figure for both and the ratio after / before.

    trees = Trees.from_args(args)
    with trees.workers(__file__) as w:
        w.broadcast("load", spec="efficientnet_lite0")       # both at once (not measured)
        runs = w.interleave("measure", rounds=3, n=64)      # {"before": [r, r, r], "after": [...]}
    print_table("title", [Figure("images/s", med(runs["before"]), med(runs["after"]), "higher")])

Whole commands (``python -m convscope ...``, a server) run through :meth:`Tree.env` /
:meth:`Tree.command` instead. The harness itself never imports convscope.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER_FLAG = "--tree-worker"


@dataclasses.dataclass(frozen=True)
class Tree:
    """One checkout of convscope: ``label`` ("before" or "after") and its root folder."""

    label: str
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment with ``PYTHONPATH`` = the checkout alone."""
        # no bytecode written into the checkouts (the same for both trees)
        return {**os.environ, "PYTHONPATH": str(self.root), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def command(self, *args: str) -> list[str]:
        """``python -m convscope ARGS``; run it with ``env=self.env()`` and a ``cwd`` outside any
        checkout (``-m`` puts the current folder first on ``sys.path``)."""
        return [sys.executable, "-m", "convscope", *args]

    def run(self, *args: str, cwd: str | os.PathLike) -> subprocess.CompletedProcess:
        """Run ``python -m convscope ARGS`` to the end; a failure stops the bench with its stderr."""
        res = subprocess.run(self.command(*args), env=self.env(), cwd=cwd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"[{self.label}] convscope {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        return res

    def describe(self) -> str:
        """The folder, its commit and whether it has uncommitted changes."""
        def git(*a):
            r = subprocess.run(["git", "-C", str(self.root), *a], capture_output=True, text=True)
            return r.stdout.strip() if r.returncode == 0 else ""

        commit = git("rev-parse", "--short", "HEAD") or "no git"
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
        return f"{self.label:6s} {self.root} ({commit}{dirty})"


@dataclasses.dataclass(frozen=True)
class Trees:
    before: Tree
    after: Tree

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--before", type=Path, default=None, metavar="DIR",
                            help="another checkout of convscope (e.g. a `git worktree` of an older commit): every "
                                 "figure is measured for it and for --after, alternately, in one run")
        parser.add_argument("--after", type=Path, default=ROOT, metavar="DIR",
                            help="with --before: the checkout compared with it (default: this one)")
        parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)

    @classmethod
    def from_args(cls, args) -> "Trees | None":
        """The two trees of ``--before``/``--after``, or ``None`` without ``--before``."""
        if args.before is None:
            return None
        trees = cls(Tree("before", args.before.resolve()), Tree("after", args.after.resolve()))
        for t in trees:
            if not (t.root / "convscope" / "__init__.py").is_file():
                raise SystemExit(f"--{t.label} {t.root}: not a convscope checkout (no convscope/__init__.py)")
        return trees

    def __iter__(self):
        return iter((self.before, self.after))

    def header(self) -> str:
        return "\n".join(t.describe() for t in self)

    def workers(self, script: str, *args: str) -> "Workers":
        return Workers(self, script, args)


class Worker:
    """``python SCRIPT --tree-worker ARGS`` under one tree; its stderr goes to a log file."""

    def __init__(self, tree: Tree, script: str, args, log_dir: Path):
        self.tree = tree
        self.log = log_dir / f"{tree.label}.log"
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(script).resolve()), WORKER_FLAG, *args],
                                     env=tree.env(), cwd=log_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True)

    def send(self, call: str, kwargs: dict) -> None:
        self.proc.stdin.write(json.dumps({"call": call, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-40:])
            raise SystemExit(f"[{self.tree.label}] the bench worker stopped (status {self.proc.returncode}); "
                             f"the end of its log:\n{tail}")
        return json.loads(line)

    def call(self, call: str, /, **kwargs):
        self.send(call, kwargs)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


class Workers:
    """A worker per tree (a context manager), started together."""

    def __init__(self, trees: Trees, script: str, args):
        self.trees, self.script, self.args = trees, script, args

    def __enter__(self) -> "Workers":
        self._tmp = tempfile.TemporaryDirectory(prefix="convscope-bench-trees-")
        self.by_label: dict[str, Worker] = {}
        for t in self.trees:
            self.by_label[t.label] = Worker(t, self.script, self.args, Path(self._tmp.name))
        for w in self.by_label.values():  # each names the convscope it imported, before any work
            hello = w.receive()
            found = Path(hello["convscope"]).resolve()
            if w.tree.root not in found.parents:
                raise SystemExit(f"[{w.tree.label}] imported convscope from {found}, not from {w.tree.root}")
        return self

    def __exit__(self, *exc) -> None:
        for w in self.by_label.values():
            w.close()
        self._tmp.cleanup()

    def call(self, label: str, call: str, /, **kwargs):
        """``call(**kwargs)`` in one tree's worker."""
        return self.by_label[label].call(call, **kwargs)

    def broadcast(self, call: str, /, **kwargs) -> dict:
        """``call(**kwargs)`` in both workers at the same time (set-up, not measured)."""
        for w in self.by_label.values():
            w.send(call, kwargs)
        return {label: w.receive() for label, w in self.by_label.items()}

    def interleave(self, call: str, rounds: int, /, **kwargs) -> dict[str, list]:
        """``call(**kwargs)`` ``rounds`` times in each worker, one at a time, the order swapped
        every round; returns each tree's results in order."""
        out: dict[str, list] = {label: [] for label in self.by_label}
        labels = list(self.by_label)
        for r in range(rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                out[label].append(self.call(label, call, **kwargs))
        return out


def is_worker(argv=None) -> bool:
    return WORKER_FLAG in (sys.argv if argv is None else argv)


def serve_calls(namespace: dict) -> None:
    """The worker's loop (called by a bench script started with ``--tree-worker``): says which
    convscope it imported, then runs each requested function of ``namespace`` (the script's
    globals) and writes its JSON result, until stdin closes. An exception ends the worker; the
    harness then stops with the end of the worker's log."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the library prints goes to the log, not into the replies
    import convscope

    proto.write(json.dumps({"convscope": convscope.__file__}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        result = namespace[request["call"]](**request["kwargs"])
        proto.write(json.dumps(result) + "\n")


def two_tree_run(args, namespace: dict, compare) -> bool:
    """The two-tree part of a bench script's ``main``: a worker serves ``namespace``'s calls; with
    ``--before`` the driver runs ``compare(args, trees)``. True when either ran (``main`` returns)."""
    if is_worker():
        serve_calls(namespace)
        return True
    trees = Trees.from_args(args)
    if trees is not None:
        compare(args, trees)
        return True
    return False


def dev_photos_dir() -> Path:
    """The dev photos (500 ImageNet photos, beside ``imagenet-samples-labels.tsv``):
    ``shared/data/imagenet-samples`` in the first folder above this checkout that has it. Benches
    only; never the tests."""
    for folder in ROOT.parents:
        if (folder / "shared" / "data" / "imagenet-samples").is_dir():
            return folder / "shared" / "data" / "imagenet-samples"
    return ROOT.parent / "shared" / "data" / "imagenet-samples"


# --------------------------------------------------------------------------- figures


def median(values):
    return statistics.median(values)


@dataclasses.dataclass
class Figure:
    """One figure for both trees. ``better``: "higher" or "lower" (which way is faster or
    smaller); ``unit`` is printed after each value."""

    name: str
    before: float | None
    after: float | None
    better: str = "higher"
    unit: str = ""
    digits: int = 1

    @property
    def ratio(self) -> float | None:
        if self.before in (None, 0) or self.after is None:
            return None
        return self.after / self.before


def print_table(title: str, figures: list[Figure]) -> None:
    """``figure | before | after | after/before | better``, a line each."""
    def value(v, f):
        return "n/a" if v is None else f"{v:.{f.digits}f}{(' ' + f.unit) if f.unit else ''}"

    width = max([len(f.name) for f in figures] + [len("figure")])
    cells = [(f.name, value(f.before, f), value(f.after, f),
              "n/a" if f.ratio is None else f"{f.ratio:.3f}", f.better) for f in figures]
    w1 = max([len(c[1]) for c in cells] + [6])
    w2 = max([len(c[2]) for c in cells] + [5])
    print(title)
    print(f"  {'figure':{width}s}  {'before':>{w1}s}  {'after':>{w2}s}  {'after/before':>12s}  better")
    for name, b, a, r, better in cells:
        print(f"  {name:{width}s}  {b:>{w1}s}  {a:>{w2}s}  {r:>12s}  {better}")
    sys.stdout.flush()
