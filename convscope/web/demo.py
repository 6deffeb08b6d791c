"""The demo: an atlas of the default model over scikit-image's sample photos, and an index of
the same photos for the search pages, ready for the gallery.

One recipe (:data:`RECIPE`) sized to finish in minutes on a laptop's CPU: seven stages from edges
to objects, every photo also seen as 2x2 and 3x3 overlapping crops while there are at most
:data:`CROPS_UP_TO` photos (so small patterns have their own examples), top 6 examples per unit with deconvnet and guided projections for the top
3, and feature visualizations for the first units of each layer. A stamp file beside the atlas
records the recipe and the photos (path, size, modification time); the next run reuses the atlas
while both are unchanged, resumes an interrupted build, and rebuilds otherwise. The index lives
in the atlas folder's ``index/`` with a stamp of its own: reused while its model and photos are
unchanged, updated when photos came, changed or went, resumed when its build stopped.

>>> atlas_dir = ensure_demo_atlas()          # builds once, then reuses
>>> index_dir = ensure_demo_index(atlas_dir)  # atlas_dir / "index"
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

from ..files import cache_dir, write_text_atomic

RECIPE = {
    "version": 2,
    "model": "efficientnet_lite0",
    "pretrained": True,
    # edges and colours, textures, object parts, objects: about 5 minutes on 2 CPU cores
    "layers": ["bn1", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "bn2"],
    "top": 6,
    "project": 3,
    "crops": "1,2,3",
    "featvis": {"units": 8, "steps": 128, "size": 96},
}
#: The demo scans each photo as the recipe's 14 crops only while it has at most this many photos
#: (its own 15 and a few of the user's): crops let a dozen photos fill each unit's top examples,
#: but on 150 dev photos they cost 23 times the scan's time and filled 62% of bn1's top-9 slots
#: (38% of bn2's) with another window of a photo already there (docs/atlas.md, *Crops*).
CROPS_UP_TO = 50
STAMP = "demo.json"
#: Photos per forward pass of the demo's index: a snapshot is published where a batch ends, so
#: the first search answers after the first batch.
INDEX_BATCH = 16
#: The demo index's folder and stamp, inside the demo folder.
INDEX_DIR = "index"
INDEX_STAMP = "demo-index.json"


def default_dir() -> Path:
    return cache_dir("demo-atlas")


def _photos(extra: Iterable[str | os.PathLike]) -> tuple[list[str], list[dict]]:
    from ..data import expand_inputs, sample_photos

    paths = [str(p) for p in sample_photos()]
    found, errors = expand_inputs([str(e) for e in extra])
    for err in errors:
        raise ValueError(f"--images {err.path}: {err.reason}")
    paths += [str(p) for p in found]
    listing = []
    for p in paths:
        st = os.stat(p)
        listing.append({"path": os.path.abspath(p), "size": st.st_size, "mtime": int(st.st_mtime)})
    return paths, listing


def _read_stamp(out: Path, name: str = STAMP) -> dict | None:
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def ensure_demo_atlas(
    out: str | os.PathLike | None = None,
    images: Iterable[str | os.PathLike] = (),
    rebuild: bool = False,
    echo: Callable[[str], None] = print,
    recipe: dict | None = None,
    up_front: bool = True,
) -> Path:
    """Build the demo atlas in ``out`` (default :func:`default_dir`) over the sample photos and
    ``images``, or reuse it when it is up to date; returns its folder. Progress goes to stderr.

    ``up_front=False`` (``convscope demo``, which serves the gallery meanwhile: :class:`DemoBuild`)
    builds the scan only, publishing snapshots as it goes (``build(snapshots=True)``), for the
    gallery to cut each unit's patches and compute its projections and feature visualization
    when its page is opened (:mod:`convscope.web.fill_pages`); such an atlas is reused by a
    later serving run, and built again by an ``up_front`` one (``--no-serve``)."""
    from ..atlas import DB_NAME, Atlas, build
    from ..errors import ConvscopeError
    from ..models import load_model
    from ..stores import State, state

    recipe = dict(recipe or RECIPE)
    out = Path(out) if out else default_dir()
    paths, listing = _photos(images)
    if len(paths) > CROPS_UP_TO:  # whole photos: see CROPS_UP_TO
        recipe["crops"] = "1"
    wanted = {"recipe": recipe, "photos": listing}
    stamp = _read_stamp(out)
    enough = stamp is not None and (stamp.get("up_front", True) or not up_front)
    if not rebuild and enough and stamp.get("recipe") == recipe and stamp.get("photos") == listing:
        try:
            Atlas.open(out).close()
            echo(f"reusing the demo atlas in {out} (up to date; --rebuild to build it again)")
            return out
        except ConvscopeError:
            pass
    # an interrupted demo build (no stamp yet) is resumed; anything else stale is replaced
    found = state(out, DB_NAME)
    resume = not rebuild and found.unfinished and stamp is None
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in held if name not in (INDEX_DIR, INDEX_STAMP, STAMP)]
    # a folder holding only the demo's index is the demo's: the atlas is built beside it
    overwrite = not resume and (found not in (State.ABSENT, State.FOREIGN) or bool(held) and not foreign)
    if (out / STAMP).exists():
        (out / STAMP).unlink()
    if out.exists() and not resume and not overwrite and foreign:
        raise ConvscopeError(f"{out} is not empty and holds no demo atlas; give another --out")
    echo(
        f"building the demo atlas in {out}: {recipe['model']} over {len(paths)} photos "
        f"(crops {recipe['crops']}), layers {', '.join(recipe['layers'])}"
        + (" (resuming the interrupted build)" if resume else "")
    )
    started = time.time()
    model = load_model(recipe["model"], device="cpu", pretrained=recipe.get("pretrained", True))

    def run(resume: bool, overwrite: bool):
        return build(
            model, paths, out, layers=recipe["layers"], top=recipe["top"], crops=recipe["crops"],
            project=recipe["project"] if up_front else 0, resume=resume, overwrite=overwrite, progress=True,
            on_skip=lambda p, r: echo(f"skipped {p}: {r}"), snapshots=not up_front, patches=up_front,
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            atlas = run(resume, overwrite)
        except ConvscopeError as exc:
            if not resume:
                raise
            echo(f"cannot resume ({exc}); starting again")
            atlas = run(False, True)
    for w in caught:  # the rest were only notes about ReLU6 taken as ReLU by the projections
        if not issubclass(w.category, UserWarning) or "ActivationRule" not in w.category.__name__:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    relu6 = sum(1 for w in caught if "ActivationRule" in w.category.__name__)
    if up_front:
        echo(f"scanned and projected in {time.time() - started:.0f} s")
        _featvis(model, atlas, recipe["featvis"], echo)
    else:
        echo(f"scanned in {time.time() - started:.0f} s; each unit's patches, projections and feature visualization "
             "are computed when its page is first opened")
    atlas.close()
    write_text_atomic(out / STAMP, json.dumps({**wanted, "complete": True, "up_front": up_front}, indent=1))
    if relu6:
        echo("note: this model's activations are ReLU6, which the deconvnet and guided projections treat as ReLUs")
    echo(f"demo atlas ready in {time.time() - started:.0f} s")
    return out


def _index_inputs(images: Iterable[str | os.PathLike]) -> tuple[list[str], list[dict]]:
    """The demo index's inputs (the sample photos' folder, then ``images`` as given: folders
    stay folders, so photos added to them are found next time) and a listing of their files
    (path, size, modification time)."""
    from ..data import sample_photos
    from ..index.media import expand_media

    samples = sample_photos()
    inputs = ([str(samples[0].parent)] if samples else []) + [os.path.abspath(os.fspath(e)) for e in images]
    paths, errors = expand_media(inputs)
    for err in errors:
        raise ValueError(f"--images {err.path}: {err.reason}")
    listing = []
    for p in paths:
        st = os.stat(p)
        listing.append({"path": str(p), "size": st.st_size, "mtime": st.st_mtime_ns})
    return inputs, listing


def empty_index(out: str | os.PathLike | None = None, recipe: dict | None = None) -> Path:
    """An index of no photo, with the recipe's model (``out/index-empty``): what the search
    pages serve, finding nothing, until the demo's own index is built."""
    from ..index import Index
    from ..index.store import DB_NAME
    from ..models import load_model
    from ..stores import state

    recipe = dict(recipe or RECIPE)
    folder = (Path(out) if out else default_dir()) / "index-empty"
    if state(folder, DB_NAME).committed:
        with Index.open(folder) as old:
            if old.meta["model"]["spec"] == recipe["model"]:
                return folder
    shutil.rmtree(folder, ignore_errors=True)
    model = load_model(recipe["model"], device="cpu", pretrained=recipe.get("pretrained", True))
    Index.build(model, [], folder, progress=False, text=False).close()
    return folder


def ensure_demo_index(
    out: str | os.PathLike | None = None,
    images: Iterable[str | os.PathLike] = (),
    rebuild: bool = False,
    echo: Callable[[str], None] = print,
    recipe: dict | None = None,
    snapshots: bool = False,
) -> Path:
    """Index the demo's photos (the sample photos and ``images``) with the recipe's model into
    ``out/index`` (``out``: the demo folder, default :func:`default_dir`), for the search
    pages; returns the index folder. The next run reuses it while the model and the photos are
    unchanged, updates it when photos came, changed or went, resumes a build that stopped, and
    builds it again for another model or with ``rebuild``. Progress goes to stderr.
    ``snapshots``: a new build publishes what it holds so far, for the search pages to serve
    meanwhile (:func:`convscope.web.app.follow_index`)."""
    from ..errors import ConvscopeError
    from ..index import Index
    from ..index.store import DB_NAME
    from ..models import load_model
    from ..stores import state

    recipe = dict(recipe or RECIPE)
    demo_dir = Path(out) if out else default_dir()
    folder = demo_dir / INDEX_DIR
    inputs, listing = _index_inputs(images)
    model_key = {"model": recipe["model"], "pretrained": recipe.get("pretrained", True)}
    wanted = {**model_key, "inputs": inputs, "photos": listing, "complete": True}
    stamp = _read_stamp(demo_dir, INDEX_STAMP)
    if rebuild or (stamp is not None and {k: stamp.get(k) for k in model_key} != model_key):
        shutil.rmtree(folder, ignore_errors=True)  # asked for, or another model's: of no use
    elif stamp == wanted and not state(folder, DB_NAME).unfinished:
        try:
            Index.open(folder).close()
            echo(f"reusing the demo index in {folder} (up to date; --rebuild to build it again)")
            return folder
        except ConvscopeError:
            shutil.rmtree(folder, ignore_errors=True)
    if (demo_dir / INDEX_STAMP).exists():
        (demo_dir / INDEX_STAMP).unlink()  # a stamp stands for a finished index only
    found = state(folder, DB_NAME)
    update, resume = found.committed, found.unfinished
    doing = "updating" if update else "building"
    echo(f"{doing} the demo index in {folder}: {recipe['model']} over {len(listing)} photos"
         + (" (resuming the interrupted build)" if resume else ""))
    started = time.time()
    model = load_model(recipe["model"], device="cpu", pretrained=recipe.get("pretrained", True))

    def run(update: bool, resume: bool) -> None:
        Index.build(model, inputs, folder, update=update, resume=resume, progress=True, snapshots=snapshots,
                    batch_size=INDEX_BATCH,
                    on_skip=lambda p, r: echo(f"skipped {p}: {r}")).close()

    try:
        run(update, resume)
    except ConvscopeError as exc:
        if not (update or resume):
            raise
        echo(f"cannot go on with the index there ({exc}); building it again")
        shutil.rmtree(folder, ignore_errors=True)
        run(False, False)
    write_text_atomic(demo_dir / INDEX_STAMP, json.dumps(wanted, indent=1))
    echo(f"demo index ready in {time.time() - started:.0f} s")
    return folder


#: When ``convscope demo`` starts its index beside the atlas (:class:`DemoBuild`): ``"scan"``
#: once the atlas's scan has published its first snapshot (the gallery is open), the index's
#: forward passes then sharing the cores with the scan's; ``"scanned"`` once the scan has passed
#: every photo; ``"atlas"`` once the atlas is committed. Measured (docs/search.md, *An index that
#: answers while it builds*; ``bench/index_start.py``): on 2 cores ``"scan"`` answers the first
#: search soonest and costs the first atlas page nothing, since it starts after that page.
INDEX_START = "scan"
INDEX_STARTS = ("scan", "scanned", "atlas")


class DemoBuild:
    """The demo's atlas and its index, built on threads while the gallery serves: the atlas
    publishes snapshots (:func:`ensure_demo_atlas` with ``up_front=False``), so
    :meth:`wait_servable` returns after its first batch of photos, not after the whole scan;
    the index starts at ``index_start`` (:data:`INDEX_START`) and publishes snapshots too, which
    the search pages follow (:meth:`follow`). ``error``: the one line of a build that stopped
    (the gallery keeps its last snapshot); ``index_dir``: the index once it is built
    (``index_done`` set then, or when its build stopped).

    >>> demo = DemoBuild(None, ["my_photos/"], echo=print)
    >>> app = create_app(demo.wait_servable(), index=demo.servable_index())  # within seconds
    >>> demo.follow(app)                     # search answers from the first indexed photos on
    """

    def __init__(self, out: str | os.PathLike | None, images: Iterable[str | os.PathLike] = (), rebuild: bool = False,
                 recipe: dict | None = None, echo: Callable[[str], None] = print, index_start: str = INDEX_START):
        if index_start not in INDEX_STARTS:
            raise ValueError(f"index_start must be one of {', '.join(INDEX_STARTS)}, got {index_start!r}")
        self.out = Path(out) if out else default_dir()
        self.index_folder = self.out / INDEX_DIR
        self.error: str | None = None
        self.index_dir: Path | None = None
        self.atlas_done = threading.Event()
        self.index_done = threading.Event()
        self.index_start = index_start
        self._stand_in: Path | None = None  # the empty index served until the index's first snapshot
        self._stand_in_ready = threading.Event()
        self._indexed: Callable[[Path], None] | None = None
        self._lock = threading.Lock()
        self._args = (list(images), rebuild, recipe, echo)
        self.thread = threading.Thread(target=self._run, name="convscope-demo-build", daemon=True)
        self.index_thread = threading.Thread(target=self._run_index, name="convscope-demo-index", daemon=True)
        self.thread.start()
        self.index_thread.start()

    def _stopped(self, exc: Exception) -> None:
        self.error = str(exc).splitlines()[0]
        self._args[3](f"the demo build stopped: {self.error}")

    def _run(self) -> None:
        from ..errors import ConvscopeError

        images, rebuild, recipe, echo = self._args
        try:
            ensure_demo_atlas(self.out, images, rebuild=rebuild, echo=echo, recipe=recipe, up_front=False)
        except (ConvscopeError, ValueError, OSError) as exc:  # one line; the gallery keeps what it has
            self._stopped(exc)
        finally:
            self.atlas_done.set()

    def _index_may_start(self) -> bool:
        """Whether the atlas build is far enough for the index to start (``index_start``): it
        has begun, so the atlas finds its folder as it left it, and the index's work comes
        after the gallery's first page."""
        from ..atlas import Atlas
        from ..atlas.store import SNAPSHOT_NAME
        from ..errors import ConvscopeError
        from ..stores import PARTIAL

        if self.atlas_done.is_set() or self.index_start == "atlas":
            return self.atlas_done.is_set()
        if not (self.out / PARTIAL / SNAPSHOT_NAME).is_file():
            return False
        if self.index_start == "scan":
            return True
        try:
            with Atlas.open(self.out, building=True) as atlas:
                return atlas.building is None or atlas.building["phase"] != "scanning"
        except ConvscopeError:  # between its last snapshot and its commit
            return False

    def _begun(self) -> bool:
        """Whether the atlas build has looked at its folder (it refuses one holding something
        else: nothing of the index's may be there before)."""
        from ..atlas import DB_NAME
        from ..stores import PARTIAL

        return self.atlas_done.is_set() or (self.out / PARTIAL).is_dir() or (self.out / DB_NAME).is_file()

    def _run_index(self) -> None:
        from ..errors import ConvscopeError
        from ..index import Index

        images, rebuild, recipe, echo = self._args
        try:
            try:  # the stand-in, made while the atlas scans its first photos (not after: the first page waits for it)
                while not self._begun():
                    time.sleep(0.1)
                if self.error is not None:
                    return  # the atlas stopped: so does the demo
                try:
                    Index.open(self.index_folder, building=True).close()
                except ConvscopeError:
                    self._stand_in = empty_index(self.out, recipe)
            finally:
                self._stand_in_ready.set()
            while not self._index_may_start():
                time.sleep(0.2)
            if self.error is not None:
                return  # the atlas stopped: so does the demo
            folder = ensure_demo_index(self.out, images, rebuild=rebuild, echo=echo, recipe=recipe, snapshots=True)
            with self._lock:
                self.index_dir, then = folder, self._indexed
            if then is not None:
                then(folder)
        except (ConvscopeError, ValueError, OSError) as exc:  # one line; the search pages keep what they have
            self._stopped(exc)
        finally:
            self.index_done.set()

    def when_indexed(self, then: Callable[[Path], None]) -> None:
        """Call ``then(index_dir)`` once the index is built (now, if it is already)."""
        with self._lock:
            done, self._indexed = self.index_dir, then
        if done is not None:
            then(done)

    def servable_index(self) -> Path:
        """An index folder the search pages can open now: the demo's own (finished, or a
        snapshot of its build), else an empty one (:func:`empty_index`) until its first
        snapshot, which :meth:`follow` then takes up."""
        from ..errors import ConvscopeError
        from ..index import Index

        self._stand_in_ready.wait()
        try:
            Index.open(self.index_folder, building=True).close()
            return self.index_folder
        except ConvscopeError:
            return self._stand_in or empty_index(self.out, self._args[2])

    def follow(self, app) -> None:
        """Let the search pages of ``app`` follow the demo's index: each new snapshot of its
        build (at most one every few seconds), then the finished index
        (:func:`convscope.web.app.follow_index`)."""
        from .app import follow_index

        after = {"scan": "the atlas's first photos are scanned", "scanned": "the atlas's scan is done",
                 "atlas": "the atlas is built"}[self.index_start]
        waiting = f"Indexing the photos starts once {after}; search finds them as they are indexed."
        follow_index(app, self.index_folder, until=self.index_done.is_set, waiting=waiting)

    def wait_servable(self, timeout: float | None = None) -> Path:
        """The atlas folder, once the gallery can serve it: the finished atlas (reused or built),
        or the first snapshot of this build. A build that stopped before either is its error."""
        from ..atlas import Atlas
        from ..atlas.store import SNAPSHOT_NAME
        from ..errors import ConvscopeError
        from ..stores import PARTIAL

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = self.atlas_done.wait(0.1)
            if done or (self.out / PARTIAL / SNAPSHOT_NAME).is_file():
                try:
                    Atlas.open(self.out, building=True).close()
                    return self.out
                except ConvscopeError:
                    if done:
                        raise ConvscopeError(self.error or f"the demo atlas in {self.out} could not be built") from None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the demo atlas in {self.out} was not ready in {timeout} s")


def fill_settings(recipe: dict | None = None) -> dict:
    """The gallery's fill settings for a demo atlas (``create_app(fill=...)``): the recipe's
    feature-visualization steps and size, so a filled unit looks like one built up front."""
    fv = (recipe or RECIPE)["featvis"]
    return {"steps": fv["steps"], "size": fv["size"]}


def _featvis(model, atlas, settings: dict, echo) -> None:
    import tempfile

    from .. import featvis

    from ..featvis.render import DEFAULT_BATCH
    from ..progress import Bar

    plan = {layer: list(range(min(settings["units"], atlas.layer(layer)["shape"][0]))) for layer in atlas.layers}
    # one bar for the phase: each render's own bar counts steps x batches into it
    total = sum(settings["steps"] * math.ceil(len(units) / min(DEFAULT_BATCH, len(units))) for units in plan.values())
    t = time.time()
    with tempfile.TemporaryDirectory(prefix="convscope-demo-fv-") as tmp, Bar(total, "feature visualizations"):
        for layer, units in plan.items():
            result = featvis.render(model, layer, units, steps=settings["steps"], size=settings["size"], progress=True)
            for i, u in enumerate(units):
                png = Path(tmp) / f"{u}.png"
                result.image(i).save(png)
                atlas.set_featvis(layer, u, png)
    echo(f"feature visualizations of {len(plan)} layers in {time.time() - t:.0f} s")
