"""The index against hostile but fair inputs (issue 20), through the real CLI: a video whose
header lies about its length, a file name that is not UTF-8, a second writer on one folder, a
FIFO, a full disk, a kill inside a long video, a dangling link, a video of huge frames.

Every hostile file is made here: PyAV writes the videos (the lying one's Matroska ``Duration``
patched), ``os.fsencode`` names the undecodable one.
"""
from __future__ import annotations

import contextlib

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convscope.cli import main
from convscope.index import Index

from .test_index import snapshot, write_clip

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--model", "torchvision:resnet18", "--no-pretrained", "--device", "cpu", "--layers", "layer1", "--workers", "0"]
ENV = {**os.environ, "CONVSCOPE_PROGRESS": "0", "PYTHONPATH": str(REPO)}


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """``convscope ARGS`` in a process of its own (killed past ``timeout``: a hang fails)."""
    return subprocess.run([sys.executable, "-m", "convscope", *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def photo(path: Path, color=(200, 30, 40), size=(64, 48)) -> Path:
    from PIL import Image

    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = color
    arr[: size[1] // 2, : size[0] // 3] = (20, 220, 60)
    Image.fromarray(arr).save(path)
    return path


def lying_mkv(path: Path, claimed_seconds: float) -> Path:
    """A 5 s Matroska clip whose header says it lasts ``claimed_seconds``."""
    write_clip(path, seconds=5)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the segment's Duration: 8-byte float, in milliseconds
    assert at > 0
    data[at + 3: at + 11] = struct.pack(">d", claimed_seconds * 1000)
    path.write_bytes(bytes(data))
    return path


def long_clip(path: Path, seconds: int, fps: int = 2, size: int = 32) -> Path:
    """An H.264 clip whose frames differ (a grey level and a square moving with time)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(seconds * fps):
            img = np.full((size, size, 3), (i * 7) % 200, np.uint8)
            img[4:12, i % (size - 8): i % (size - 8) + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------- 1: a lying header


def test_a_video_whose_header_lies_about_its_length_costs_what_it_holds(tmp_path):
    import av

    clips = tmp_path / "clips"
    clips.mkdir()
    lying_mkv(clips / "a_1e5.mkv", 1e5)
    lying_mkv(clips / "b_1e12.mkv", 1e12)
    with av.open(str(clips / "b_1e12.mkv")) as c:
        assert c.duration / 1e6 > 1e11  # the header does lie
    out = tmp_path / "index"
    started = time.monotonic()
    run = cli("index", clips, "--out", out, "--json", *ARGS, timeout=240)
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - started < 200
    assert json.loads(run.stdout)["entries"] == 10  # 5 frames of each (1 per second)
    index = Index.open(out)
    for record in index.files().values():
        assert record["duration"] == pytest.approx(5.0, abs=0.2), record  # the decoded length, not 1e5 s
        assert record["rows"] == 5
    index.close()


# --------------------------------------------------------------------------- 2: a name that is not UTF-8


def test_a_file_name_that_is_not_utf8_is_indexed_shown_and_resumed(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png"))  # Latin-1 bytes: not UTF-8
    photo(Path(odd))
    photo(folder / "plain.png", color=(20, 40, 200))
    out = tmp_path / "index"
    run = cli("index", folder, "--out", out, "--json", *ARGS)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert json.loads(run.stdout)["entries"] == 2
    index = Index.open(out)
    assert sorted(f["path"] for f in index.files().values()) == sorted([odd, str(folder / "plain.png")])
    assert index.file_of(odd)["rows"] == 1  # the very name, found again
    index.close()
    shown = cli("search", out, "--like", folder / "plain.png", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["path"] for line in shown.stdout.splitlines()] == [odd]  # (itself left out)
    table = cli("search", out, "--like", folder / "plain.png")
    assert table.returncode == 0 and "caf\\xe9.png" in table.stdout, table.stdout + table.stderr

    # a build stopped before its end with that name committed resumes
    import convscope.index.build as build

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(build, "_finalize", stop)
    assert invoke("index", folder, "--out", stopped, *ARGS).exit_code != 0
    monkeypatch.undo()
    resumed = cli("index", folder, "--out", stopped, "--resume", "--json", *ARGS)
    assert resumed.returncode == 0, resumed.stderr
    index = Index.open(stopped)
    assert index.file_of(odd) is not None and index.entries == 2
    index.close()


# --------------------------------------------------------------------------- 6: one writer at a time


HOLD = """
import sys, time
from convscope.stores import writer_lock
with writer_lock(sys.argv[1], kind="index"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "one.png")
    out = tmp_path / "index"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert first.stdout.readline().strip() == "held"
        second = cli("index", folder, "--out", out, *ARGS)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert lines[0].startswith(f"error: {out} is being written by another index build (pid {first.pid}, since ")
        assert lines[0].endswith("wait for it to end, or give another --out")
        assert not (out / ".partial").exists()  # the second writer touched nothing
    finally:
        first.send_signal(signal.SIGKILL)  # a writer that dies holding the lock
        first.wait(timeout=60)
    assert json.loads((out / ".lock").read_text())["pid"] == first.pid  # its lock file stays behind
    taken = cli("index", folder, "--out", out, "--json", *ARGS)
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["entries"] == 1 and not (out / ".lock").exists()


def test_the_atlas_build_takes_the_same_lock(tmp_path):
    from convscope.stores import writer_lock

    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "one.png")
    out = tmp_path / "atlas"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert first.stdout.readline().strip() == "held"
        run = cli("atlas", "build", folder, "--out", out, *ARGS)
        assert run.returncode == 2 and f"being written by another atlas build (pid {first.pid}" in run.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    with writer_lock(out, kind="atlas"):  # a dead process's lock is free
        pass


# --------------------------------------------------------------------------- 7, 17: a FIFO, a dangling link


def test_a_fifo_is_refused_in_one_line_and_never_opened(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "one.png")
    os.mkfifo(tmp_path / "pipe.mp4")
    os.mkfifo(tmp_path / "pipe.jpg")
    out = tmp_path / "index"
    run = cli("index", folder, tmp_path / "pipe.mp4", tmp_path / "pipe.jpg", "--out", out, "--json", *ARGS, timeout=120)
    assert run.returncode == 0, run.stderr
    skipped = sorted(line for line in run.stderr.splitlines() if line.startswith("skipped "))
    assert skipped == [f"skipped {tmp_path / 'pipe.jpg'}: not a regular file (a FIFO)",
                       f"skipped {tmp_path / 'pipe.mp4'}: not a regular file (a FIFO)"]
    like = cli("search", out, "--like", tmp_path / "pipe.mp4", timeout=120)
    assert like.returncode != 0 and like.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'pipe.mp4'}: not a regular file (a FIFO)"], like.stderr


def test_a_dangling_link_is_a_skipped_line(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "one.png")
    os.symlink(tmp_path / "gone.jpg", folder / "link.jpg")
    run = cli("index", folder, "--out", tmp_path / "index", "--json", *ARGS)
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stderr.splitlines() if line.startswith("skipped ")] == [
        f"skipped {folder / 'link.jpg'}: dangling link (its target is missing)"]
    assert json.loads(run.stdout)["skipped"] == 1
    atlas = cli("atlas", "build", folder, "--out", tmp_path / "atlas", "--top", 1, "--project", 0, *ARGS)
    assert atlas.returncode == 0, atlas.stderr  # the atlas reads folders with data's walk: the same line
    assert f"skipped {folder / 'link.jpg'}: dangling link (its target is missing)" in atlas.stderr.splitlines()


# --------------------------------------------------------------------------- 10: a full disk


def test_a_full_disk_during_index_is_one_line_and_resume_gives_an_equal_index(tmp_path, monkeypatch):
    import convscope.index.build as build

    monkeypatch.setattr(build, "CHUNK", 4)  # commits every batch of 4 photos
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        photo(folder / f"p{i:02d}.png", color=(20 * i, 100, 255 - 20 * i))
    reference = tmp_path / "reference"
    assert invoke("index", folder, "--out", reference, "--batch-size", "4", *ARGS).exit_code == 0

    real_connect = sqlite3.connect
    from convscope.index import signals

    with contextlib.closing(real_connect(":memory:")) as probe:  # the pages of an empty index's schema
        probe.executescript(signals.schema(signals.choose({})))
        empty = probe.execute("PRAGMA page_count").fetchone()[0]

    def small_disk(path, *args, **kwargs):
        conn = real_connect(path, *args, **kwargs)
        if str(path).endswith(os.path.join(".partial", "index.sqlite")):
            conn.execute(f"PRAGMA max_page_count = {empty + 4}")  # SQLite's own SQLITE_FULL: 4 pages of rows
        return conn

    out = tmp_path / "index"
    monkeypatch.setattr(build.sqlite3, "connect", small_disk)
    res = invoke("index", folder, "--out", out, "--batch-size", "4", *ARGS)
    monkeypatch.undo()
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [
        f"error: disk full while writing {out / '.partial' / 'index.sqlite'} (database or disk is full); "
        "free some space and run again with --resume"], res.stderr
    conn = sqlite3.connect(out / ".partial" / "index.sqlite")
    assert 0 < conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0] < 12  # it filled up half-way
    conn.close()
    again = invoke("index", folder, "--out", out, "--batch-size", "4", "--resume", *ARGS)
    assert again.exit_code == 0, again.output
    assert snapshot(Index.open(out)) == snapshot(Index.open(reference))


# --------------------------------------------------------------------------- 16: a kill inside a long video


KILL_CHILD = """
import sys
sys.path[:0] = [{repo!r}]
import convscope.index.build as build
from convscope.cli import main
build.CHUNK = 8
commit = build._Partial.commit
def loud(self, force=False):
    pending = self.pending
    commit(self, force)
    if self.pending == 0 and pending:
        print("rows", self.rows, flush=True)
build._Partial.commit = loud
main({args!r})
"""


def test_a_long_video_is_committed_inside_and_resumes_from_there_byte_identically(tmp_path, monkeypatch):
    import convscope.index.build as build

    clips = tmp_path / "clips"
    clips.mkdir()
    long_clip(clips / "long.mp4", seconds=40)  # 40 samples at 1 per second: pieces of 16, 16 and 8
    args = [str(clips), "--batch-size", "8", "--fps", "1", *ARGS]
    monkeypatch.setattr(build, "CHUNK", 8)
    reference = tmp_path / "reference"
    assert invoke("index", *args, "--out", reference).exit_code == 0
    monkeypatch.undo()

    out = tmp_path / "killed"
    code = KILL_CHILD.format(repo=str(REPO), args=["index", *args, "--out", str(out)])
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in child.stdout:
            if line.startswith("rows") and int(line.split()[1]) >= 16:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL
    with sqlite3.connect(out / ".partial" / "index.sqlite") as conn:  # committed inside the video
        under_way = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'open'").fetchone()[0])
        assert int(conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]) >= 16
    conn.close()
    assert under_way[str(clips / "long.mp4")]["next"] >= 16

    reads = []
    import convscope.index.compute as compute

    frames = compute.media.video_frames

    def counted(path, fps, first=0, stop=None, **kwargs):
        reads.append(first)
        return frames(path, fps, first, stop, **kwargs)

    monkeypatch.setattr(compute.media, "video_frames", counted)
    res = invoke("index", *args, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert min(reads) >= 16  # the pieces committed before the kill were not read again
    assert snapshot(Index.open(out)) == snapshot(Index.open(reference))


# --------------------------------------------------------------------------- 4: huge video frames


def test_video_frames_get_the_photos_budget_before_they_are_decoded(tmp_path, monkeypatch):
    from convscope.data import ImageTooLarge
    from convscope.index import media

    clip = write_clip(tmp_path / "clip.mp4", seconds=1, size=(640, 480))
    decoded = []
    real = media._to_image

    def seen(frame, *args):
        decoded.append((frame.width, frame.height))
        return real(frame, *args)

    monkeypatch.setattr(media, "_to_image", seen)
    with pytest.raises(ImageTooLarge, match=r"too large \(640x480 = 307,200 pixels, limit 100,000\)"):
        next(media.video_frames(clip, max_pixels=100_000))
    with pytest.raises(ImageTooLarge, match=r"too large to decode \(640x480 takes 2 MiB, limit 1 MiB\)"):
        next(media.video_frames(clip, max_bytes=1 << 20))  # the decoder's frame and the RGB picture
    assert decoded == []  # refused on the header's size, before a frame was decoded


def test_the_picture_of_why_reads_a_video_frame_at_the_index_scale(tmp_path):
    """The CLI's picture of why (and the gallery's, through the same ``entry_image``) decodes a
    large frame at reduced scale, as the index did, not at full size."""
    from convscope.index import media
    from convscope.index.explain import entry_image
    from convscope.index.signals import decode_size

    folder = tmp_path / "media"
    folder.mkdir()
    clip = write_clip(folder / "big.mp4", seconds=2, size=(1920, 1080))
    photo(folder / "one.png")
    out = tmp_path / "index"
    assert cli("index", folder, "--out", out, *ARGS).returncode == 0
    shown = tmp_path / "why"
    run = cli("search", out, "--like", folder / "one.png", "--explain", shown, "--json")
    assert run.returncode == 0, run.stderr
    assert {json.loads(line)["path"] for line in run.stdout.splitlines()} == {str(clip)}
    assert len(list(shown.iterdir())) == 1
    target = decode_size(224)
    assert entry_image(clip, 1.0, resize=224).size == (round(1920 * target / 1080), target)
    assert media.frame_at(clip, 1.0).size == (1920, 1080)  # (without a target size: full size)
