"""An atlas that grows while it builds (issue 24): the scan publishes snapshots, a gallery serves
them at once and cuts each unit's patches when its page is opened, and nothing partial ever
reads as complete (API, CLI, pages); a killed build resumes to the same atlas."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from convscope.atlas import Atlas, IncompleteAtlasError, build, builder
from convscope.atlas.fill import Filler
from convscope.cli import main
from convscope.web import create_app
from convscope.web.gallery import Gallery
from tests.on_demand import ON_DEMAND, model, photos, reference  # noqa: F401 (fixtures)
from tests.served import serving
from tests.test_atlas import _files, _tables, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _slow(model, seconds: float):
    return model.module.features[0].register_forward_pre_hook(lambda m, a: time.sleep(seconds))


def _unit_pages(gallery: Gallery, layer: str) -> list[dict]:
    drop = ("building", "missing")
    return [{k: v for k, v in gallery.unit(layer, u).items() if k not in drop}
            for u in range(len(gallery.unit_records(layer)))]


def test_gallery_serves_a_build_in_progress_and_its_pages_equal_the_final_ones(model, photos, reference, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "growing"
    kept = tmp_path / "finishing"
    publish = builder.Publisher.publish

    def keep_the_last(self, result, phase):  # a copy of the snapshot of the whole scan, to compare
        publish(self, result, phase)
        if phase == "finishing":
            (kept / ".partial").mkdir(parents=True)
            shutil.copy(out / ".partial" / "snapshot.sqlite", kept / ".partial" / "snapshot.sqlite")
            os.symlink(out / "patches", kept / "patches")

    monkeypatch.setattr(builder.Publisher, "publish", keep_the_last)
    slow = _slow(model, 0.1)
    errors: list[BaseException] = []

    def run():
        try:
            build(model, photos, out, snapshots=True, patches=False, **ON_DEMAND)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=run)
    try:
        thread.start()
        snapshot = out / ".partial" / "snapshot.sqlite"
        deadline = time.monotonic() + 60
        while not snapshot.exists() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert snapshot.exists(), errors
        app = create_app(out, model=model, fill={"featvis": False})
        with serving(app) as url, httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as http:
            info = http.get("/api/atlas").json()
            assert info["complete"] is False and info["building"]["phase"] in ("scanning", "finishing")
            assert 0 < info["building"]["photos_done"] <= info["building"]["photos"] == len(photos)
            home = http.get("/").text
            assert "Building:" in home and ("photos scanned" in home or "writing the atlas" in home)
            layer = info["layers"][0]["name"]
            page = http.get(f"/api/layers/{layer}/units/0").json()
            assert page["building"] is not None and page["missing"]["patches"] and not page["missing"]["projections"]
            assert http.post(f"/api/layers/{layer}/units/0/fill").status_code in (200, 202)
            for _ in range(200):
                answer = http.get(f"/api/layers/{layer}/units/0/fill").json()
                if answer["status"] in ("done", "error"):
                    break
                time.sleep(0.05)
            assert answer["status"] == "done", answer
            cut = http.get(f"/api/layers/{layer}/units/0").json()["examples"]
            assert cut[0]["patch"] and http.get(f"/atlas/{cut[0]['patch']}").status_code == 200
            slow.remove()
            thread.join(120)
            assert not errors and not thread.is_alive()
            final = http.get("/api/atlas").json()  # the gallery takes up the committed atlas
            assert final["complete"] is True and final["building"] is None
            assert "Building:" not in http.get("/").text
            # the layer page cuts its top patches on demand
            assert http.get(f"/api/layers/{layer}").json()["missing_tops"] > 0
            assert http.post(f"/api/layers/{layer}/fill").status_code in (200, 202)
            for _ in range(200):
                if http.get(f"/api/layers/{layer}/fill").json()["status"] == "done":
                    break
                time.sleep(0.05)
            tops = http.get(f"/api/layers/{layer}").json()
            assert tops["missing_tops"] == 0 and all(u["patch"] for u in tops["units"])
    finally:
        if slow is not None:
            slow.remove()
        thread.join(120)
    # the snapshot of the whole scan, the finished atlas and the usual build show the same units
    shutil.copytree(reference, tmp_path / "reference")  # filled here; the module's stays as built
    snap, done, ref = (Atlas.open(kept, building=True), Atlas.open(out), Atlas.open(tmp_path / "reference"))
    assert snap.building["phase"] == "finishing" and not snap.info()["complete"]
    for atlas in (snap, done, ref):  # patches (and, in a finished atlas, projections) on demand
        filler = Filler(atlas, model, featvis=False)
        for layer in atlas.layers:
            for u in range(atlas.layer(layer)["shape"][0]):
                filler.fill(layer, u)
    projected = ("deconvnet", "guided", "display_box")  # a snapshot has none: they wait for the finished atlas
    for layer in ref.layers:
        snapshot_pages, done_pages, ref_pages = (_unit_pages(Gallery(a), layer) for a in (snap, done, ref))
        for a, b in zip(done_pages, ref_pages):
            for x, y in zip(a["examples"], b["examples"]):
                for k in y:
                    assert x[k] == y[k], (layer, a["unit"], x["rank"], k, x[k], y[k])
            for key in b:
                assert a[key] == b[key], (layer, key, a[key], b[key])
        for page in (snapshot_pages, ref_pages):
            for unit in page:
                unit["examples"] = [{k: v for k, v in ex.items() if k not in projected} for ex in unit["examples"]]
        assert snapshot_pages == ref_pages
    mine, theirs = _files(out), _files(tmp_path / "reference")  # patches and projections, byte for byte
    assert set(theirs) <= set(mine) and [k for k in theirs if mine[k] != theirs[k]] == []
    # beyond them only patches cut for an earlier snapshot's top examples, named by no database
    assert all(k.startswith("patches/") for k in set(mine) - set(theirs))


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
from tests.test_atlas import tiny_model
from tests.test_atlas_growing import ON_DEMAND
from convscope.atlas import build
torch.set_num_threads(1)
model = tiny_model()
model.module.features[0].register_forward_pre_hook(lambda m, a: time.sleep(0.15))  # slow it down
build(model, {photos!r}, {out!r}, resume={resume}, snapshots=True, **ON_DEMAND)
"""


def test_killed_build_leaves_its_snapshot_never_complete_and_resumes_exactly(model, photos, reference, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "run_build.py"
    script.write_text(SCRIPT.format(root=str(Path(__file__).parent.parent), photos=photos, out=str(out), resume=False))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt, snapshot = out / ".partial" / "scan.ckpt", out / ".partial" / "snapshot.sqlite"
    deadline = time.time() + 120
    try:
        while not (ckpt.exists() and snapshot.exists()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists() and snapshot.exists(), proc.stdout.read().decode() if proc.poll() is not None else "late"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(IncompleteAtlasError):  # the API: never the snapshot unless asked
        Atlas.open(out)
    with Atlas.open(out, building=True) as snap:
        assert snap.info()["complete"] is False and snap.building["phase"] == "scanning"
        assert snap.building["photos_done"] < len(photos)
        assert snap.patches_on_demand and all(not layer["complete"] for layer in snap.info()["layers"])
    runner = CliRunner()
    text = runner.invoke(main, ["atlas", "info", str(out)])
    assert text.exit_code == 0 and "NOT COMPLETE" in text.output and f"of {len(photos)} photos" in text.output
    data = json.loads(runner.invoke(main, ["atlas", "info", str(out), "--json"]).output)
    assert data["complete"] is False and data["building"]["photos"] == len(photos)
    shown = runner.invoke(main, ["atlas", "show", str(out), "--layers", "features.1", "--units", "0", "--json"])
    assert shown.exit_code != 0 and "incomplete" in shown.output  # the rest of the CLI reads finished atlases only
    with _client(out) as client:  # the pages: a banner on every one, and the home page's "complete: no"
        html = client.get("/").text
        assert f"of {len(photos)} photos scanned" in html and "<dt>complete</dt><dd>no</dd>" in html
        assert "Building:" in client.get(f"/layers/{snap.layers[0]}").text
    resumed = build(model, photos, out, resume=True, snapshots=True, **ON_DEMAND)
    assert resumed.info()["complete"] and resumed.building is None and not (out / ".partial").exists()
    assert _tables(out / "atlas.sqlite") == _tables(reference / "atlas.sqlite")
    assert _files(out) == _files(reference)


def _client(folder: Path):
    from starlette.testclient import TestClient

    return TestClient(create_app(folder, model=tiny_model(), fill=False))


def test_publisher_snapshots_are_whole_and_rarely_written(model, photos, tmp_path, monkeypatch):
    """Every snapshot a reader can open is a whole database whose photos count only grows."""
    out = tmp_path / "snaps"
    seen: list[dict] = []
    publish = builder.Publisher.publish

    def read_after(self, result, phase):
        publish(self, result, phase)
        with Atlas.open(out, building=True) as a:
            seen.append(a.building)
            assert a.info()["complete"] is False
            assert len(a.examples(a.layers[0], 0)) >= 1

    monkeypatch.setattr(builder.Publisher, "publish", read_after)
    monkeypatch.setattr(builder.Publisher.__init__, "__defaults__", (0.0, "auto", None))  # every batch it may
    build(model, photos, out, snapshots=True, **ON_DEMAND)
    done = [s["photos_done"] for s in seen]
    assert done == sorted(done) and done[-1] == len(photos) and seen[-1]["phase"] == "finishing"
    assert not (out / ".partial").exists()


def test_demo_serves_its_first_snapshot_while_the_atlas_builds(tmp_path, monkeypatch):
    """`convscope demo`'s way (DemoBuild): the gallery opens on the first snapshot, says how far
    the build is, and takes up the finished atlas when the build commits."""
    from convscope.web import demo

    tiny = {"version": 1, "model": "torchvision:alexnet", "pretrained": False, "layers": ["features.1", "features.4"],
            "top": 2, "project": 1, "crops": "1,2", "featvis": {"units": 1, "steps": 2, "size": 32}}
    monkeypatch.setattr(demo, "RECIPE", tiny)
    monkeypatch.setattr(demo, "ensure_demo_index", lambda *a, **k: None)  # the index has tests of its own
    publish = builder.Publisher.publish
    gate = threading.Event()

    def held(self, result, phase):  # the build waits after its first snapshot until the test has looked
        publish(self, result, phase)
        gate.wait(60)

    monkeypatch.setattr(builder.Publisher, "publish", held)
    lines: list[str] = []
    run = demo.DemoBuild(tmp_path / "demo", echo=lines.append)
    try:
        folder = run.wait_servable(timeout=120)
        assert not run.atlas_done.is_set()
        app = create_app(folder, fill=demo.fill_settings(tiny))
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            info = http.get("/api/atlas").json()
            assert info["complete"] is False and info["building"]["photos"] == len(demo._photos([])[0])
            assert "Building:" in http.get("/layers/features.1").text
            gate.set()
            assert run.atlas_done.wait(300) and run.error is None, lines
            run.thread.join(60)
            info = http.get("/api/atlas").json()
            assert info["complete"] is True and info["building"] is None
            assert info["settings"]["projections"]["patches"] is False  # cut when a page asks
    finally:
        gate.set()
        run.thread.join(300)
    assert any("each unit's patches" in line for line in lines)
    with Atlas.open(tmp_path / "demo") as atlas:
        assert atlas.patches_on_demand and atlas.examples("features.1", 0)[0]["patch"] is None


def test_demo_scans_whole_photos_beyond_crops_up_to(tmp_path, monkeypatch):
    """The recipe's 14 crops per photo only while the photos are few (docs/atlas.md, Crops)."""
    from convscope.web import demo

    tiny = {"version": 1, "model": "torchvision:alexnet", "pretrained": False, "layers": ["features.1"], "top": 2,
            "project": 0, "crops": "1,2,3", "featvis": {"units": 1, "steps": 2, "size": 32}}
    monkeypatch.setattr(demo, "RECIPE", tiny)
    monkeypatch.setattr(demo, "CROPS_UP_TO", 5)  # the sample photos are more
    demo.ensure_demo_atlas(tmp_path / "demo", echo=lambda line: None, up_front=False)
    with Atlas.open(tmp_path / "demo") as atlas:
        assert atlas.info()["crops"]["levels"] == [1]
        assert atlas.info()["images"]["crops_per_photo"] == 1
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["recipe"]["crops"] == "1"
