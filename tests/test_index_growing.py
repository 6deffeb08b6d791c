"""An index that answers while it builds (issue 24): a build with ``snapshots`` publishes what it
holds so far, ``Index.open(..., building=True)`` and the gallery's search pages read it, a
snapshot never reads as complete (API, CLI, pages), its results are the final index's for the
entries it holds, and a build killed after a snapshot resumes to the uninterrupted index."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.index import Index, IncompleteIndexError, concepts
from convscope.index import build as index_build
from convscope.web import create_app
from tests.served import serving
from tests.test_index import REPO, make_library, small_model, snapshot

QUERIES = ("cat", "coffee", "rocket", "person", "animal", "food", "dog")


@pytest.fixture(scope="module")
def library(tmp_path_factory, sample_dir):
    return make_library(tmp_path_factory.mktemp("library"), sample_dir)


@pytest.fixture(scope="module")
def photos(library):
    bad = library / "bad"  # (its broken video left out: the banner says "photos")
    return [library / "photos", library / "copies", bad / "empty.jpg", bad / "corrupt.jpg", bad / "notes.png"]


@pytest.fixture(scope="module")
def final(default_model, photos, tmp_path_factory):
    """The same photos indexed without snapshots, uninterrupted."""
    return Index.build(default_model, photos, tmp_path_factory.mktemp("final") / "index", batch_size=4, workers=0)


def _paths(index: Index) -> set[str]:
    return {f["path"] for f in index.files().values()}


def _hits(results, within: set[str] | None = None) -> list[tuple]:
    return [(r.path, r.time, round(r.score, 6)) for r in results if within is None or r.path in within]


@pytest.fixture
def every_batch(monkeypatch):
    """A snapshot at every batch's end (by default: at most one every few seconds)."""
    monkeypatch.setattr(index_build._Snapshots.__init__, "__defaults__", (0.0,))


def test_each_snapshot_answers_as_the_final_index_does_for_its_entries(default_model, photos, final, tmp_path,
                                                                       monkeypatch, every_batch):
    out = tmp_path / "growing"
    seen: list[Index] = []
    publish = index_build._Snapshots.publish

    def keep_open(self, partial):  # each snapshot stays readable once replaced (its files are kept open)
        publish(self, partial)
        seen.append(Index.open(out, building=True))

    monkeypatch.setattr(index_build._Snapshots, "publish", keep_open)
    done = Index.build(default_model, photos, out, batch_size=4, workers=0, snapshots=True)
    assert len(seen) >= 3 and not (out / ".partial").exists()
    assert _hits(done.search("cat", top=100, min_score=0)) == _hits(final.search("cat", top=100, min_score=0))
    counts = [s.entries for s in seen]
    assert counts == sorted(counts) and 0 < counts[0] < counts[-1] <= final.entries
    layer = final.layers[-1]["name"]
    for snap in seen:
        b = snap.building
        assert b["files"] == 17 + 3 and b["entries"] == snap.entries and b["videos"] == 0
        assert snap.info()["complete"] is False and snap.info()["building"] == b
        held = _paths(snap)
        assert len(held) == snap.entries and held <= _paths(final)
        assert snap.embedding.shape[0] == snap.units.shape[1] == len(snap.entry_file) == snap.entries
        for q in QUERIES:
            assert _hits(snap.search(q, top=100, min_score=0)) == _hits(final.search(q, top=100, min_score=0), held), q
            assert _hits(snap.search(q, top=100, sort="date")) == _hits(final.search(q, top=100, sort="date"), held), q
        first = sorted(held)[0]
        assert _hits(snap.like(first, top=100)) == _hits(final.like(first, top=100), held)
        for unit in (0, 7):
            assert _hits(snap.unit(layer, unit, top=100, boxes=False)) == \
                _hits(final.unit(layer, unit, top=100, boxes=False), held)
        mine = {f["path"]: f for f in snap.files().values()}
        theirs = {f["path"]: f for f in final.files().values()}
        for path, record in mine.items():  # the same records, rows and thumbnails
            other = theirs[path]
            assert {k: v for k, v in record.items() if k != "id"} == {k: v for k, v in other.items() if k != "id"}
            assert snap.thumbnail(record["first_row"]) == final.thumbnail(other["first_row"])
            row, other_row = record["first_row"], other["first_row"]
            assert np.array_equal(snap.units[:, row], final.units[:, other_row])
        snap.close()


def test_search_answers_while_the_index_builds_and_takes_up_the_final_index(default_model, photos, tmp_path,
                                                                            monkeypatch, every_batch):
    """A real server over a build in a thread: the search page and its JSON answer from the
    entries indexed so far with a banner, and serve the finished index once it is committed."""
    out = tmp_path / "index"
    gate, first = threading.Event(), threading.Event()
    publish = index_build._Snapshots.publish

    def held(self, partial):  # the build waits after its first snapshot until the test has looked
        publish(self, partial)
        first.set()
        gate.wait(120)

    monkeypatch.setattr(index_build._Snapshots, "publish", held)
    errors: list[BaseException] = []

    def run():
        try:
            Index.build(default_model, photos, out, batch_size=4, workers=0, snapshots=True).close()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert first.wait(120), errors
        with pytest.raises(IncompleteIndexError):  # without building=True: refused as before
            Index.open(out)
        with Index.open(out, building=True) as snap:
            held_paths = _paths(snap)
            so_far = snap.building["files_done"]
        app = create_app(index=out, model=default_model)
        app.state.following.every = 0.0
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            answer = http.get("/api/search", params={"like": sorted(held_paths)[0], "top": 50}).json()
            assert answer["complete"] is False and answer["building"]["files"] == 20
            assert {r["path"] for r in answer["results"]} == held_paths - {sorted(held_paths)[0]}
            page = http.get("/search", params={"q": "cat"}).text
            assert f"Indexing: {so_far} of 20 photos; results so far." in page
            gate.set()
            thread.join(300)
            assert not errors and not thread.is_alive()
            for _ in range(100):
                answer = http.get("/api/search", params={"q": "cat", "min_score": 0, "top": 100}).json()
                if answer["complete"]:
                    break
                time.sleep(0.05)
            assert answer["complete"] is True and answer["building"] is None
            with Index.open(out) as done:
                assert [r["path"] for r in answer["results"]] == [r.path for r in done.search("cat", top=100, min_score=0)]
            assert "Indexing:" not in http.get("/search", params={"q": "cat"}).text
            assert app.state.following.folder is None  # finished: no longer followed
    finally:
        gate.set()
        thread.join(300)


CHILD = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from tests.test_index import small_model
from convscope.index import Index, features, build
build._Snapshots.__init__.__defaults__ = (0.0,)
slow = features.Extractor.__call__
def call(self, x):
    time.sleep(0.3)
    return slow(self, x)
features.Extractor.__call__ = call
publish = build._Snapshots.publish
def loud(self, partial):
    publish(self, partial)
    print("snapshot", partial.rows, flush=True)
build._Snapshots.publish = loud
Index.build(small_model(), {photos!r}, {out!r}, batch_size=4, workers=0, snapshots=True, resume={resume})
print("done", flush=True)
"""


def test_a_killed_build_leaves_a_snapshot_never_complete_and_resumes_exactly(photos, tmp_path):
    tiny = small_model()
    reference = Index.build(tiny, photos, tmp_path / "reference", batch_size=4, workers=0)
    out = tmp_path / "killed"
    code = CHILD.format(repo=str(REPO), photos=[str(p) for p in photos], out=str(out), resume=False)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("snapshot") and int(line.split()[1]) >= 8:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(IncompleteIndexError, match="resume"):  # the API: never the snapshot unless asked
        Index.open(out)
    with Index.open(out, building=True) as snap:
        info = snap.info()
        assert info["complete"] is False and 8 <= info["entries"] < reference.entries
        assert info["building"]["files_done"] < info["building"]["files"] == 20
        assert _hits(snap.like(0, top=100)) == _hits(reference.like(0, top=100), _paths(snap))
        with pytest.raises(ConvscopeError, match="still being built"):  # no committed database to write, nor made
            concepts.teach(snap, "mine", [sorted(_paths(snap))[0]], model=tiny)
    assert not (out / "index.sqlite").exists()
    runner = CliRunner()  # the CLI
    text = runner.invoke(main, ["index", "--out", str(out), "--info"])
    assert text.exit_code == 0 and "NOT COMPLETE" in text.output and "of 20 files indexed" in text.output
    data = json.loads(runner.invoke(main, ["index", "--out", str(out), "--info", "--json"]).output)
    assert data["complete"] is False and data["building"]["entries"] == info["entries"]
    searched = runner.invoke(main, ["search", str(out), "cat"])
    assert searched.exit_code != 0 and "incomplete" in searched.output  # search reads finished indexes only
    from starlette.testclient import TestClient

    with TestClient(create_app(index=out, model=tiny)) as client:  # the pages
        assert f"Indexing: {info['building']['files_done']} of 20 photos" in client.get("/search").text
        assert client.get("/api/search", params={"q": "cat"}).json()["complete"] is False
    resumed = Index.build(tiny, photos, out, batch_size=4, workers=0, resume=True, snapshots=True)
    assert resumed.info()["complete"] is True and resumed.building is None and not (out / ".partial").exists()
    assert snapshot(resumed) == snapshot(reference)
    done = json.loads(runner.invoke(main, ["index", "--out", str(out), "--info", "--json"]).output)
    assert done["complete"] is True and done["building"] is None


def test_the_demo_searches_its_index_while_it_builds(tmp_path, monkeypatch, every_batch):
    """`convscope demo`'s way (DemoBuild): the index starts once the atlas serves, the search
    pages answer from its first snapshot on, say how far it is, then serve the finished index."""
    from convscope.web import demo

    tiny = {"version": 1, "model": "torchvision:alexnet", "pretrained": False, "layers": ["features.1", "features.4"],
            "top": 2, "project": 1, "crops": "1", "featvis": {"units": 1, "steps": 2, "size": 32}}
    monkeypatch.setattr(demo, "RECIPE", tiny)
    monkeypatch.setattr(demo, "INDEX_BATCH", 4)
    gate, first = threading.Event(), threading.Event()
    publish = index_build._Snapshots.publish

    def held(self, partial):
        publish(self, partial)
        first.set()
        gate.wait(120)

    monkeypatch.setattr(index_build._Snapshots, "publish", held)
    lines: list[str] = []
    run = demo.DemoBuild(tmp_path / "demo", echo=lines.append)
    try:
        app = create_app(run.wait_servable(timeout=120), index=run.servable_index(), fill=False)
        run.follow(app)
        app.state.following.every = 0.0
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            answer = http.get("/api/search", params={"q": "cat"}).json()
            if answer["building"] is None:  # the index has not published yet: an empty one stands in
                assert answer["complete"] is False and answer["count"] == 0
                assert "Indexing the photos starts once" in http.get("/search").text
            assert first.wait(120), lines
            with Index.open(run.index_folder, building=True) as snap:
                held_paths, so_far = _paths(snap), snap.building["files_done"]
            photo = sorted(held_paths)[0]
            answer = http.get("/api/search", params={"like": photo, "top": 50}).json()
            assert answer["complete"] is False and answer["building"]["files"] == 15
            assert {r["path"] for r in answer["results"]} == held_paths - {photo}
            assert f"Indexing: {so_far} of 15 photos; results so far." in http.get("/search").text
            gate.set()
            assert run.index_done.wait(300) and run.error is None, lines
            for _ in range(100):
                answer = http.get("/api/search", params={"like": photo, "top": 50}).json()
                if answer["complete"]:
                    break
                time.sleep(0.05)
            assert answer["complete"] is True and len(answer["results"]) == 14
            assert "Indexing" not in http.get("/search").text
    finally:
        gate.set()
        run.thread.join(300)
        run.index_thread.join(300)
    assert run.index_dir == run.index_folder and Index.open(run.index_folder).entries == 15
