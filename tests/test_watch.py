"""Keeping an index up to date (convscope.index.watch): photos added, changed, deleted, still
being written, renamed and folders deleted while watched; two writers; a kill during a watched
update; the gallery serving each new version. A random ResNet-18 on 64 px inputs, settle times
of a fraction of a second; every photo is made here from scikit-image's samples."""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.errors import FolderInUseError
import convscope.index.watch as watching
from convscope.index import Index
from convscope.index.watch import watch

from .test_index import snapshot, small_model

REPO = Path(__file__).resolve().parents[1]
SETTLE = 0.3
NAMES = ("chelsea", "coffee", "rocket", "astronaut", "camera", "brick", "moon", "coins")


@pytest.fixture(scope="module")
def tiny():
    return small_model()


def library(root: Path, sample_dir: Path, names=NAMES[:4]) -> Path:
    root.mkdir(parents=True)
    for name in names:
        shutil.copy(sample_dir / f"{name}.png", root / f"{name}.png")
        os.utime(root / f"{name}.png", (time.time() - 60, time.time() - 60))  # settled long ago
    return root


class Watching:
    """``watch`` on a thread; ``rounds`` of its updates as they come."""

    def __init__(self, model, inputs, out, **kw):
        self.rounds: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.skips: list = []
        self.notes: list = []
        self.error = None

        def run():
            try:
                watch(model, inputs, out, settle=SETTLE, stop=self.stop, on_change=self.rounds.put,
                      on_skip=lambda p, r: self.skips.append((p, r)), on_note=self.notes.append,
                      batch_size=4, workers=0, **kw)
            except BaseException as exc:  # reported by the test
                self.error = exc
                self.rounds.put(None)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def next(self, timeout=60):
        got = self.rounds.get(timeout=timeout)
        assert got is not None, self.error
        return got

    def until(self, check, timeout=60):
        """Rounds until ``check(round)`` holds; all of them."""
        seen, end = [], time.time() + timeout
        while time.time() < end:
            seen.append(self.next(timeout=max(0.1, end - time.time())))
            if check(seen[-1]):
                return seen
        raise AssertionError(f"no round as expected in {timeout} s: {[r.line() for r in seen]}")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def assert_fresh(model, out: Path, lib: Path, fresh: Path) -> None:
    """The index in ``out`` holds what a fresh build of ``lib`` holds: the same files, records
    and thumbnails, and alike vectors (a file computed in a batch of 1 there and of 4 here may
    differ in a kernel's last bit)."""
    a, b = Index.open(out), Index.build(model, [lib], fresh, batch_size=4, workers=0)
    sa, sb = snapshot(a), snapshot(b)
    assert {k: (v["record"], v["thumbs"]) for k, v in sa.items()} == {k: (v["record"], v["thumbs"]) for k, v in sb.items()}
    order = lambda idx: [f["first_row"] for f in sorted(idx.files().values(), key=lambda f: f["path"])]  # noqa: E731
    assert np.allclose(np.asarray(a.embedding, np.float32)[order(a)], np.asarray(b.embedding, np.float32)[order(b)],
                       atol=2e-3)


def names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


def test_watch_adds_changes_deletes_and_waits_for_a_file_being_written(tiny, sample_dir, tmp_path):
    lib = library(tmp_path / "lib", sample_dir)
    out = tmp_path / "index"
    w = Watching(tiny, [lib], out)
    try:
        first = w.next()
        assert names(first.added) == names(f"{n}.png" for n in NAMES[:4]) and first.files == 4
        shutil.copy(sample_dir / "brick.png", lib / "brick.png")  # added
        Image.open(sample_dir / "coins.png").save(lib / "coffee.png")  # changed
        (lib / "rocket.png").unlink()  # deleted
        rounds = w.until(lambda r: r.files == 4 and "coffee.png" in names(r.changed))
        assert names(sum((r.added for r in rounds), [])) == ["brick.png"]
        assert names(sum((r.removed for r in rounds), [])) == ["rocket.png"]
        with Index.open(out) as idx:
            assert names(f["path"] for f in idx.files().values()) == ["astronaut.png", "brick.png", "chelsea.png", "coffee.png"]

        # a photo copied slowly: written in pieces 0.1 s apart; another photo settles meanwhile
        data = (sample_dir / "moon.png").read_bytes()
        slow = lib / "moon.png"
        written = threading.Event()

        def copy():
            with open(slow, "wb") as f:
                for k in range(0, len(data), len(data) // 20 + 1):
                    f.write(data[k:k + len(data) // 20 + 1])
                    f.flush()
                    time.sleep(0.1)
            written.set()

        copier = threading.Thread(target=copy)
        copier.start()
        time.sleep(0.15)
        shutil.copy(sample_dir / "camera.png", lib / "camera.png")
        whole = []  # whether the copy had ended when a round added it

        def read(r):
            if "moon.png" in names(r.added):
                whole.append(written.is_set())
            return bool(whole)

        rounds = w.until(read, timeout=90)
        copier.join()
        assert whole == [True] and "camera.png" in names(sum((r.added for r in rounds), []))
        assert not w.skips
    finally:
        w.close()
    assert_fresh(tiny, out, lib, tmp_path / "fresh")  # the watched index is a fresh build of the folder


def test_two_writers_one_line_for_the_second(tiny, sample_dir, tmp_path):
    lib = library(tmp_path / "lib", sample_dir, NAMES[:2])
    out = tmp_path / "index"
    w = Watching(tiny, [lib], out)
    try:
        w.next()
        with pytest.raises(FolderInUseError, match="being written by another index build"):
            Index.build(tiny, [lib], out, update=True)
        for args in (["index", "--update", "--out", str(out)], ["index", str(lib), "--out", str(out), "--watch"]):
            done = subprocess.run([sys.executable, "-m", "convscope", *args], capture_output=True, text=True,
                                  timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
            assert done.returncode != 0 and "Traceback" not in done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "being written" in lines[0], done.stderr
        shutil.copy(sample_dir / "moon.png", lib / "moon.png")
        w.until(lambda r: names(r.added) == ["moon.png"])  # the watch goes on, its index whole
    finally:
        w.close()
    with Index.open(out) as idx:
        assert idx.info()["photos"] == 3


WATCH_CHILD = """
import sys, time
sys.path[:0] = [{repo!r}]
from convscope.index import build, features
from convscope.index.watch import watch
from tests.test_index import small_model
slow = features.Extractor.__call__
def call(self, x):
    time.sleep(0.3)
    return slow(self, x)
features.Extractor.__call__ = call
commit = build._Partial.commit
def loud(self, force=False):
    commit(self, force)
    print("rows", self.rows, flush=True)
build._Partial.commit = loud
watch(small_model(), [{lib!r}], {out!r}, settle=0.3, batch_size=2, workers=0,
      on_change=lambda r: print("round", r.files, flush=True))
"""


def test_a_kill_during_a_watched_update_leaves_the_last_index_then_a_fresh_build(tiny, sample_dir, tmp_path):
    lib = library(tmp_path / "lib", sample_dir, NAMES[:2])
    out = tmp_path / "index"
    child = subprocess.Popen([sys.executable, "-c", WATCH_CHILD.format(repo=str(REPO), lib=str(lib), out=str(out))],
                             stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("round"):
                break
        before = snapshot(Index.open(out))
        for name in NAMES[2:]:
            shutil.copy(sample_dir / f"{name}.png", lib / f"{name}.png")
        for line in child.stdout:
            if line.startswith("rows") and int(line.split()[1]) >= 4:  # copied 2, computed some: mid-update
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (out / ".partial" / "index.sqlite").exists()  # an update was under way
    assert snapshot(Index.open(out)) == before  # the last complete version, whole
    w = Watching(tiny, [lib], out)  # the next watch resumes it
    try:
        assert w.next().files == len(NAMES)
    finally:
        w.close()
    fresh = Index.build(tiny, [lib], tmp_path / "fresh", batch_size=4, workers=0)
    assert snapshot(Index.open(out)) == snapshot(fresh)
    assert not (out / ".partial").exists() and len([p for p in out.iterdir() if p.name.startswith("arrays-")]) == 1


def test_a_file_renamed_and_a_folder_deleted_while_watched(tiny, sample_dir, tmp_path, monkeypatch):
    lib = library(tmp_path / "lib", sample_dir, NAMES[:2])
    sub = library(lib / "trip", sample_dir, NAMES[2:5])
    out = tmp_path / "index"
    w = Watching(tiny, [lib], out)
    try:
        assert w.next().files == 5
        # renamed and deleted between the update's listing of the folder and its reading
        plan = watching._Pending.settled
        moved = []

        def meanwhile(self, path, st):
            if not moved:
                moved.append(path)
                (lib / "coffee.png").rename(lib / "coffee-2.png")
                shutil.rmtree(sub)
            return plan(self, path, st)

        monkeypatch.setattr(watching._Pending, "settled", meanwhile)
        shutil.copy(sample_dir / "moon.png", lib / "moon.png")
        rounds = w.until(lambda r: r.files == 3)  # (the renamed file's new name comes in its own round)
        assert names(sum((r.added for r in rounds), [])) == ["coffee-2.png", "moon.png"]
        gone = names(sum((r.removed for r in rounds), []))
        assert gone == ["astronaut.png", "camera.png", "coffee.png", "rocket.png"]
        lines = [r for _p, r in w.skips]
        assert lines and all("\n" not in r and "cannot read" in r for r in lines)  # one line each
        assert sum(len(r.skipped) for r in rounds) == len(w.skips)  # and counted
        with Index.open(out) as idx:
            assert names(f["path"] for f in idx.files().values()) == ["chelsea.png", "coffee-2.png", "moon.png"]

        shutil.rmtree(lib)  # the followed folder itself: the index keeps its files until it is back
        time.sleep(SETTLE * 4)
        assert any("is gone" in n and "\n" not in n for n in w.notes)
        with Index.open(out) as idx:
            assert idx.info()["photos"] == 3
        library(lib, sample_dir, NAMES[:1])
        w.until(lambda r: r.files == 1)
    finally:
        w.close()
    assert_fresh(tiny, out, lib, tmp_path / "fresh")


def test_the_gallery_serves_each_update_and_lists_what_was_added(tiny, sample_dir, tmp_path):
    from starlette.testclient import TestClient

    from convscope.web import create_app

    lib = library(tmp_path / "lib", sample_dir, NAMES[:2])
    out = tmp_path / "index"
    Index.build(tiny, [lib], out, batch_size=4, workers=0).close()
    lines = []
    app = create_app(index=out, model=tiny, watch=SETTLE, on_note=lines.append)
    with TestClient(app) as client:
        old = client.get("/api/search").json()
        assert old["index"]["photos"] == 2 and old["added"] == []
        shutil.copy(sample_dir / "rocket.png", lib / "rocket.png")
        end = time.time() + 60
        while time.time() < end and client.get("/api/search").json()["index"]["photos"] != 3:
            time.sleep(0.1)
        home = client.get("/api/search").json()
        assert home["index"]["photos"] == 3 and [f["name"] for f in home["added"]] == ["rocket.png"]
        thumb = client.get(home["added"][0]["thumb"])
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        page = client.get("/search").text
        assert "Added since the gallery opened" in page and "rocket.png" in page
        assert client.get("/timeline").status_code == 200
    assert not app.state.follower.thread.is_alive()
    assert any(line.startswith("index updated: 1 new") for line in lines)


def test_what_a_watch_cannot_follow_is_one_line(tiny, tmp_path):
    from click.testing import CliRunner

    from convscope.cli import main
    from convscope.errors import ArgumentError

    (tmp_path / "list.txt").write_text("a.jpg\n")
    with pytest.raises(ArgumentError, match="not @LIST files"):
        watch(tiny, [f"@{tmp_path / 'list.txt'}"], tmp_path / "index")
    with pytest.raises(ValueError, match="settle must be seconds"):
        watch(tiny, [tmp_path], tmp_path / "index", settle=-1)
    done = CliRunner().invoke(main, ["serve", "--watch"])
    assert done.exit_code == 2 and "--watch keeps an index up to date: give --index INDEX" in done.output
