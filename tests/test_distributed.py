"""The scan on Ray equals the one-process scan: the same state, paths, layers, hashes and skipped
files, also after a worker is killed mid-scan and after a driver stops and resumes; so do whole
atlas builds and indexes on Ray (every table, PNG file, record, vector and thumbnail), also
with a worker killed mid-build; a path no worker can read is a bad file with the node's name;
nothing imports Ray unless asked to.

One local Ray (2 CPUs) and one pool of two actors serve the whole module: starting them takes
most of its time.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import sample_photos
from convscope.errors import ConvscopeError
from convscope.scan import scan

from .test_scan import LAYERS, tiny_model
from .tiny import TinyNet, pooled

pytestmark = [pytest.mark.usefixtures("one_thread")]
TOP = 5
BATCH = 4  # photos per forward pass; shards hold whole batches
SHARD = 4


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-image's sample photos, 24 small generated ones (two byte-identical) and a bad file."""
    d = tmp_path_factory.mktemp("photos")
    paths = [str(p) for p in sample_photos(d / "samples")]
    rng = np.random.default_rng(1)
    for i in range(22):
        h, w = int(rng.integers(32, 64)), int(rng.integers(32, 64))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[: h // 2] //= 1 + i % 4
        Image.fromarray(arr).save(d / f"g{i:02d}.png")
        paths.append(str(d / f"g{i:02d}.png"))
    for src in (3, 9):  # ties: the lower id wins, wherever the copy's shard ran
        (d / f"g{20 + src:02d}.png").write_bytes((d / f"g{src:02d}.png").read_bytes())
        paths.append(str(d / f"g{20 + src:02d}.png"))
    (d / "zz_bad.png").write_bytes(b"not an image")
    paths.append(str(d / "zz_bad.png"))
    return paths


@pytest.fixture(scope="module")
def pool(model):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from convscope.distributed import Pool, connect

    # Ray counts 4 CPUs on the 2 cores: the pool's 2 actors hold 2 (a thread each), and
    # distributed.scan, which joins this Ray, starts its own actor on the other 2.
    with connect(None, num_cpus=4), Pool(model, num_workers=2, num_cpus_per_worker=1) as pool:
        assert ray.is_initialized()
        yield pool


@pytest.fixture(scope="module")
def reference(model, photos):
    return scan(model, photos, LAYERS, TOP, batch_size=BATCH, workers=0, progress=False)


def assert_same(result, reference, on_node=True):
    assert result.state == reference.state
    assert (result.paths, result.layers, result.crops, result.offset) == (
        reference.paths, reference.layers, reference.crops, reference.offset)
    assert result.hashes == reference.hashes
    assert [p for p, _ in result.skipped] == [p for p, _ in reference.skipped]
    for (_, got), (_, want) in zip(result.skipped, reference.skipped):
        assert got.startswith(want) and (" (on node " in got) == on_node


@pytest.mark.slow
def test_ray_scan_equals_one_process_scan(pool, photos, reference, capfd):
    from convscope.distributed import scan_with

    seen = []
    result = scan_with(pool, photos, LAYERS, TOP, batch_size=BATCH, workers=0, shard_size=SHARD, progress=True,
                       on_shard=seen.append)
    assert_same(result, reference)
    assert reference.skipped and reference.photos_scanned == len(photos) - 1
    assert sorted(r.first for r in seen) == list(range(0, len(photos), SHARD))
    # which actor takes which shard is Ray's choice (on a loaded machine one may take them all);
    # the result is the same either way, which assert_same checked
    assert 1 <= len({r.pid for r in seen}) <= 2
    assert result.examples(LAYERS[0], 0) == reference.examples(LAYERS[0], 0)
    err = capfd.readouterr().err
    assert f"scanning {len(photos)}/{len(photos)}" in err  # one bar on the driver, over all workers


@pytest.mark.slow
def test_distributed_scan_takes_the_one_process_arguments(pool, model, photos, reference):
    from convscope import distributed

    result = distributed.scan(model, photos, LAYERS, TOP, batch_size=BATCH, workers=0, progress=False,
                              num_workers=1, shard_size=2 * SHARD)  # joins the module's Ray
    assert_same(result, reference)


@pytest.mark.slow
def test_a_worker_killed_mid_scan_gives_the_same_result(pool, photos, reference):
    from convscope.distributed import scan_with

    before = {i.pid for i in pool.infos()}
    killed = []

    def kill_once(result):
        if not killed:  # its actor holds the next shard (two are in flight per actor)
            os.kill(result.pid, signal.SIGKILL)
            killed.append(result.pid)

    result = scan_with(pool, photos, LAYERS, TOP, batch_size=BATCH, workers=0, shard_size=SHARD, progress=False,
                       on_shard=kill_once)
    assert_same(result, reference)
    after = {i.pid for i in pool.infos()}
    assert killed[0] in before and killed[0] not in after and len(after) == 2  # Ray restarted that actor


@pytest.mark.slow
def test_a_path_no_worker_can_read_is_a_bad_file_with_the_node_name(pool, photos, model, tmp_path):
    from convscope.distributed import scan_with

    gone = tmp_path / "on-another-disk" / "x.png"  # an @LIST names files without looking at them
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([photos[0], str(gone), photos[-2]]) + "\n")
    skips = []
    result = scan_with(pool, [f"@{listing}"], LAYERS, TOP, batch_size=BATCH, workers=0, shard_size=SHARD,
                       progress=False, on_skip=lambda p, r: skips.append((p, r)))
    one = scan(model, [f"@{listing}"], LAYERS, TOP, batch_size=BATCH, workers=0, progress=False)
    assert_same(result, one)
    assert skips == result.skipped and [p for p, _ in skips] == [str(gone)]
    node = pool.infos()[0].node
    assert skips[0][1].endswith(f"(on node {node})") and "no such file" in skips[0][1].lower()


@pytest.mark.slow
def test_a_stopped_driver_resumes_from_its_checkpoint(pool, photos, reference, tmp_path):
    from convscope.distributed import scan_with

    ckpt = tmp_path / "scan.ckpt"
    kwargs = dict(batch_size=BATCH, workers=0, shard_size=SHARD, progress=False, checkpoint=ckpt, checkpoint_every=1)

    class Stop(Exception):
        pass

    first = []

    def stop_after_three(result):
        first.append(result.first)
        if len(first) == 3:
            raise Stop  # the driver dies here; two shards are in the checkpoint

    with pytest.raises(Stop):
        scan_with(pool, photos, LAYERS, TOP, on_shard=stop_after_three, **kwargs)
    assert ckpt.exists()
    second = []
    kwargs["shard_size"] = 3 * SHARD  # a resume may cut the rest otherwise (another cluster)
    result = scan_with(pool, photos, LAYERS, TOP, resume=True, on_shard=second.append, **kwargs)
    assert_same(result, reference)
    again = {p for r in second for p in range(r.first, r.first + r.photos)}
    assert again.isdisjoint(p for a in first[:2] for p in range(a, a + SHARD))  # not scanned again
    assert len(again) == len(photos) - 2 * SHARD
    with pytest.raises(ConvscopeError, match="other settings .*top"):
        scan_with(pool, photos, LAYERS, TOP + 1, resume=True, **kwargs)


@pytest.mark.slow
def test_projections_on_ray_equal_the_one_process_ones(pool, model, reference, tmp_path):
    from convscope.atlas.builder import RenderJob, _records, image_chunks, render
    from convscope.atlas.store import METHODS
    from convscope.distributed import ray_project

    def run(out, how):
        records, stats = _records(reference, model), {}
        job = RenderJob(reference, records, out, TOP, METHODS, 4, image_chunks(records, 16), False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            incomplete = how(job, stats)
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}
        return records, stats, incomplete, files, list(dict.fromkeys(str(w.message) for w in caught))

    one = run(tmp_path / "one", lambda job, st: render(model, job, st))
    ray = run(tmp_path / "ray", lambda job, st: ray_project.render(pool, render, job, st, job_images=16))  # several jobs
    assert len(one[0].images) > 16 and len(one[3]) > 50  # two jobs or more; files of every kind
    for a, b in zip(one, ray):
        assert a == b


def _slow_once(_model, info, marker: str, seconds: float) -> int:
    """A job that hangs the first time any worker runs it (the marker says it ran). The marker is
    made atomically: two workers starting at once must not both think they are the first."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return info.pid
    time.sleep(seconds)
    return info.pid


@pytest.mark.slow
def test_a_job_that_hangs_runs_again_on_an_idle_worker(pool, tmp_path):
    marker = str(tmp_path / "ran")
    pool.infos()  # the model loaded on every actor
    pool.straggler_seconds = 1.0
    try:
        started = time.monotonic()
        results = list(pool.map(_slow_once, [(marker, 20.0)] * 3, ordered=True))
        took = time.monotonic() - started
    finally:
        pool.straggler_seconds = None
    assert [k for k, _pid in results] == [0, 1, 2] and took < 12.0  # not the 20 s of the hung copy


@pytest.mark.slow
def test_open_pool_takes_a_running_pool_as_it_is(pool, model):
    from convscope.distributed import open_pool

    with open_pool(pool, model, 5) as got:
        assert got is pool
    assert len(pool.actors) == 2  # left running, for the next build


def test_model_spec_loads_the_same_model_from_a_module_or_a_factory(model):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from convscope.distributed import ModelSpec

    x = torch.randn(2, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    want = model(x)
    packed = ModelSpec.of(model).load("cpu")
    assert packed.preprocessing == model.preprocessing and packed.spec == model.spec
    assert torch.equal(packed(x), want) and next(model.module.parameters()).device.type == "cpu"
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    made = ModelSpec(factory=_tiny_net, state_dict=state, preprocessing=model.preprocessing).load("cpu")
    assert torch.equal(made(x), want)
    with pytest.raises(ValueError, match="exactly one"):
        ModelSpec(spec="efficientnet_lite0", factory=_tiny_net)


def test_scan_with_takes_the_keywords_of_scan():
    """One list of scan's keyword arguments (ScanOptions) for the engines that forward them."""
    import dataclasses
    import inspect

    from convscope.scan_settings import ScanOptions

    keywords = {name: p.default for name, p in inspect.signature(scan).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == {f.name: f.default for f in dataclasses.fields(ScanOptions)}


def test_the_render_on_ray_cuts_whole_chunks_of_the_builder(model, reference):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    from convscope.atlas.builder import RenderJob, _records, image_chunks
    from convscope.atlas.store import METHODS
    from convscope.distributed.ray_project import _runs

    records = _records(reference, model)
    chunks = image_chunks(records, 8)
    assert [i for c in chunks for i in c] == sorted(records.images) and {len(c) for c in chunks[:-1]} == {8}
    job = RenderJob(reference, records, "out", TOP, METHODS, 2, chunks, None)
    runs = _runs(job, 20)  # three chunks a run
    assert [c for r in runs for c in r.chunks] == chunks and all(len(r.chunks) == 3 for r in runs[:-1])
    for r in runs:
        ids = [i for c in r.chunks for i in c]
        assert sorted(r.records.images) == ids and {e.image_id for e in r.records.examples} == set(ids)
        assert r.result is None and r.progress is False
    assert sum(sum(r.work().values()) for r in runs) == sum(job.work().values())


def _tiny_net():
    """tiny_model's architecture, with other weights (the factory's state dict replaces them)."""
    return TinyNet(*pooled(batchnorm=True))


def test_nothing_imports_ray_unless_asked():
    code = textwrap.dedent("""
        import sys
        import convscope, convscope.scan, convscope.atlas, convscope.distributed
        from convscope.distributed import ModelSpec
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))[:5]
        import importlib.util
        if importlib.util.find_spec("ray") is not None:  # and asked for, it is
            convscope.distributed.scan
            assert "ray" in sys.modules
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- whole builds on Ray


def atlas_contents(root) -> tuple[dict, dict]:
    """Every table of an atlas (the timings and a bad file's node aside) and every PNG file's bytes."""
    db = sqlite3.connect(root / "atlas.sqlite")
    tables = {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        rows = db.execute(f"SELECT * FROM {name}").fetchall()
        if name == "meta":
            rows = [r for r in rows if r[0] not in ("created", "seconds", "build_seconds")]
        tables[name] = sorted(tuple(str(v).split(" (on node ")[0] for v in r) for r in rows)
    db.close()
    return tables, {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def one_atlas(model, photos, tmp_path_factory):
    from convscope.atlas import build

    out = tmp_path_factory.mktemp("atlas") / "one"
    build(model, photos, out, LAYERS, TOP, batch_size=BATCH, workers=0, progress=False)
    return atlas_contents(out)


@pytest.mark.slow
def test_atlas_build_on_ray_equals_the_one_process_build(pool, model, photos, one_atlas, tmp_path, monkeypatch):
    from convscope.atlas import Atlas, build
    from convscope.distributed import ray_scan

    monkeypatch.setattr(ray_scan, "SHARD_SIZE", SHARD)  # several shards (the default is 1,024 photos)
    skips = []
    atlas = build(model, photos, tmp_path / "ray", LAYERS, TOP, batch_size=BATCH, workers=0, progress=False,
                  ray=True, ray_workers=2, on_skip=lambda p, r: skips.append((p, r)))  # joins the module's Ray
    tables, files = atlas_contents(tmp_path / "ray")
    assert tables == one_atlas[0]  # examples, values, positions, boxes, images, photos, hashes, skipped
    assert files == one_atlas[1] and len(files) > 50  # patches and projections, byte for byte
    assert len(tables["examples"]) == sum(i.shape[0] for i in model.layers.select(LAYERS)) * TOP
    assert [p for p, _ in skips] == [photos[-1]] and skips[0][1].endswith(f"(on node {pool.infos()[0].node})")
    with Atlas.open(tmp_path / "ray") as a:
        assert a.info()["images"]["skipped"] == 1
    assert isinstance(atlas, Atlas)


@pytest.fixture(scope="module")
def library(photos, tmp_path_factory):
    """The module's photos (a bad one among them), another bad photo first, a clip of 3 s (3 frames at fps 1, in two pieces
    with SEGMENT_FRAMES at 2) and a bad video."""
    from .test_index import write_clip

    d = tmp_path_factory.mktemp("library")
    for p in photos:
        os.symlink(p, d / os.path.basename(p))
    write_clip(d / "clip.mp4")
    (d / "aa_bad.png").write_bytes(b"not an image either")  # in the first shard
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    return d


def index_contents(root) -> dict:
    """Every record, row, vector and thumbnail of an index (the timings and a bad file's node aside)."""
    from convscope.index import Index

    with Index.open(root) as index:
        files = sorted((f["id"], f["path"], f["kind"], f["sha256"], f["first_row"], f["rows"], f["width"],
                        f["duration"]) for f in index.files().values())
        entries = [tuple(r) for r in index.query("SELECT row, file, time FROM entries ORDER BY row")]
        thumbs = [index.thumbnail(r) for r in range(index.entries)]
        skipped = sorted((r["path"], r["reason"].split(" (on node ")[0]) for r in index.query("SELECT * FROM skipped"))
        arrays = {name: np.asarray(getattr(index, name)).tobytes()
                  for name in ("top_class", "top_prob", "embedding", "units", "unit_pos", "entry_file", "entry_date")}
        return {"files": files, "entries": entries, "thumbs": thumbs, "skipped": skipped, "arrays": arrays,
                "layers": index.meta["layers"], "model": index.meta["model"]}


@pytest.fixture(scope="module")
def one_index(model, library, tmp_path_factory):
    from convscope.index import Index
    from convscope.index import build as index_build

    out = tmp_path_factory.mktemp("index") / "one"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_build, "SEGMENT_FRAMES", 2)
        Index.build(model, [library], out, batch_size=BATCH, workers=0, progress=False).close()
    return index_contents(out)


@pytest.fixture()
def small_shards(monkeypatch):
    from convscope.distributed import ray_index
    from convscope.index import build as index_build

    monkeypatch.setattr(index_build, "SEGMENT_FRAMES", 2)
    monkeypatch.setattr(ray_index, "SHARD_ITEMS", 5)  # several shards, one with the clip's two pieces


@pytest.mark.slow
def test_index_on_ray_equals_the_one_process_index(pool, model, library, one_index, small_shards, tmp_path, capfd):
    from convscope.index import Index

    skips = []
    Index.build(model, [library], tmp_path / "ray", batch_size=BATCH, workers=0, progress=True, ray=True,
                ray_workers=1, on_skip=lambda p, r: skips.append((p, r))).close()  # two: the kill test
    got = index_contents(tmp_path / "ray")
    assert got == one_index
    assert len(got["entries"]) == len(got["files"]) + 2 > 25  # one row a photo, three for the clip (two pieces)
    assert sorted(p for p, _ in skips) == [str(library / n) for n in ("aa_bad.png", "broken.mp4", "zz_bad.png")]
    node = pool.infos()[0].node
    assert [r for p, r in skips if p.endswith(".png")][0].endswith(f"(on node {node})")  # read by a worker
    files = len(os.listdir(library))  # broken.mp4 too, skipped while planning
    assert f"indexing {files}/{files}" in capfd.readouterr().err  # one bar on the driver, over all workers


@pytest.mark.slow
def test_a_worker_killed_mid_build_gives_the_same_index_and_atlas(pool, model, library, photos, one_index, one_atlas,
                                                                   small_shards, tmp_path, monkeypatch):
    from convscope.atlas import build
    from convscope.distributed import ray_scan
    from convscope.index import Index

    from convscope.distributed import ray_project

    def killer(pid: int, killed: list):
        def on_skip(_path, reason):  # on the driver, as the first shard's bad photo comes in: others are out
            if not killed and " (on node " in reason:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return on_skip

    killed: list = []
    Index.build(model, [library], tmp_path / "index", batch_size=BATCH, workers=0, progress=False, ray=pool,
                on_skip=killer(pool.infos()[0].pid, killed)).close()
    assert killed and index_contents(tmp_path / "index") == one_index
    after = {i.pid for i in pool.infos()}
    assert killed[0] not in after and len(after) == 2  # Ray restarted that actor

    # the atlas: an actor killed while the projections are out (several jobs: 16 images each)
    monkeypatch.setattr(ray_scan, "SHARD_SIZE", SHARD)
    monkeypatch.setattr(ray_project, "JOB_IMAGES", 16)
    killed = []
    watcher = threading.Thread(target=kill_when_written, args=(tmp_path / "atlas" / "patches", pool.infos()[1].pid,
                                                                 killed), daemon=True)
    watcher.start()
    build(model, photos, tmp_path / "atlas", LAYERS, TOP, batch_size=BATCH, workers=0, progress=False, ray=pool)
    watcher.join()
    assert killed and atlas_contents(tmp_path / "atlas") == one_atlas
    assert killed[0] not in {i.pid for i in pool.infos()}


def kill_when_written(folder, pid: int, killed: list, seconds: float = 120.0) -> None:
    """SIGKILL ``pid`` as soon as ``folder`` exists (the first job has written a file)."""
    deadline = time.monotonic() + seconds
    while not folder.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    if folder.exists():
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.slow
def test_a_stopped_index_build_on_ray_resumes_to_the_same_index(pool, model, library, one_index, small_shards,
                                                                 tmp_path, monkeypatch):
    from convscope.index import Index
    from convscope.index import build as index_build

    monkeypatch.setattr(index_build, "CHUNK", 2)  # commits every batch or so

    class Stop(Exception):
        pass

    def stop_at_zz(path, _reason):  # the driver dies as the last shard comes in; the rest is committed
        if path.endswith("zz_bad.png"):
            raise Stop

    with pytest.raises(Stop):
        Index.build(model, [library], tmp_path / "index", batch_size=BATCH, workers=0, progress=False, ray=pool,
                    on_skip=stop_at_zz)
    with sqlite3.connect(tmp_path / "index" / ".partial" / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] > 10  # committed before the stop
    db.close()
    Index.build(model, [library], tmp_path / "index", batch_size=BATCH, workers=0, progress=False, ray=pool,
                resume=True).close()
    assert index_contents(tmp_path / "index") == one_index


@pytest.mark.slow
def test_a_path_a_worker_cannot_read_is_a_bad_file_of_the_index_with_the_node_name(pool, model, photos, tmp_path):
    from convscope.index import Index

    d = tmp_path / "lib"
    d.mkdir()
    os.symlink(photos[0], d / "a.png")
    os.symlink("/proc/self/mem", d / "b.jpg")  # the driver sees a file; reading it fails (EIO)
    skips = []
    index = Index.build(model, [d], tmp_path / "index", batch_size=BATCH, workers=0, progress=False, ray=pool,
                        on_skip=lambda p, r: skips.append((p, r)))
    node = pool.infos()[0].node
    assert [p for p, _ in skips] == [str(d / "b.jpg")] and index.entries == 1
    assert skips[0][1] == f"cannot read (Input/output error) (on node {node})"
    assert index.query("SELECT reason FROM skipped")[0]["reason"] == skips[0][1]
    index.close()


def test_builds_without_ray_import_no_ray(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(os.path.dirname(__file__)))!r})
        import torch
        torch.set_num_threads(1)
        from click.testing import CliRunner
        from convscope.atlas import build
        from convscope.cli import main
        from convscope.index import Index
        from convscope.data import sample_photos
        from tests.test_scan import LAYERS, tiny_model
        photos = [str(p) for p in sample_photos({str(tmp_path / "s")!r})[:3]]
        build(tiny_model(), photos, {str(tmp_path / "atlas")!r}, LAYERS, 2, workers=0, progress=False)
        Index.build(tiny_model(), photos, {str(tmp_path / "index")!r}, workers=0, progress=False).close()
        out = CliRunner().invoke(main, ["index", *photos, "--out", {str(tmp_path / "cli")!r}, "--workers", "0",
                                        "--model", "torchvision:resnet18", "--no-pretrained"])
        assert out.exit_code == 0, out.output
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))[:5]
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_the_cli_indexes_on_ray_what_it_indexes_in_one_process(pool, photos, tmp_path):
    from click.testing import CliRunner

    from convscope.cli import main

    model = ["--model", "torchvision:resnet18", "--no-pretrained", "--batch-size", "4", "--workers", "0"]
    some = photos[:6] + photos[-1:]

    def run(*args):
        out = CliRunner().invoke(main, [*args, *model])
        assert out.exit_code == 0, out.output
        return out

    for ray in ([], ["--ray"]):  # --ray alone: a local Ray, or the one this process joined
        out = run("index", *some, "--out", str(tmp_path / ("ray" if ray else "one")), *ray)
        assert "1 skipped" in out.output
    assert index_contents(tmp_path / "ray") == index_contents(tmp_path / "one")
