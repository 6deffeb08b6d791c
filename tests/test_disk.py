"""A full disk: one line, the previous checkpoint whole, and a resume once space is back that
equals an uninterrupted build. ENOSPC is injected at the file writes of files.atomic_write (so
torch.save, PIL and every writer meet it as they would on a real disk), SQLite fills up through
max_page_count, and a real size-limited tmpfs runs the CLI where mounting is allowed."""
from __future__ import annotations

import builtins
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import convscope.files as files
from convscope.atlas import Atlas, build
from convscope.files import DiskFullError, atomic_write, remove_stale_temps, temp_path
from convscope.scan import ScanState, load_checkpoint

from .test_atlas import SETTINGS, _files, _tables, make_photos, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
HINT = "free some space and run again with resume=True"


class _Filling:
    """A file that takes ``room`` more bytes, then fails as a full disk does (after a short write)."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n > self._room:
            if self._room:
                self._f.write(data[: self._room])
                self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class DiskFills:
    """Patches the ``open`` of :mod:`convscope.files`: the ``k``-th file opened for writing whose
    name holds ``name`` gets ``room`` bytes, then ENOSPC; later ones too (the disk stays full)
    until :meth:`free` is called."""

    def __init__(self, monkeypatch, name: str, k: int = 1, room: int = 1000):
        self.name, self.k, self.room, self.seen, self.full, self.failed = name, k, room, 0, False, []
        monkeypatch.setattr(files, "open", self.open, raising=False)

    def open(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        if self.name in os.path.basename(file):
            self.seen += 1
            if self.seen == self.k:
                self.full = True
        if self.full:
            self.failed.append(str(file))
            return _Filling(f, self.room if len(self.failed) == 1 else 0)  # the first one fails part-way
        return f

    def free(self):
        self.full = False


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def reference(model, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "atlas"
    build(model, photos, out, **SETTINGS)
    return out


def _same_atlas(out: Path, reference: Path) -> None:
    with Atlas.open(out) as mine, Atlas.open(reference) as theirs:
        assert mine.info()["complete"] and not (out / ".partial").exists()
        assert mine.state() == theirs.state()
    assert _tables(out / "atlas.sqlite") == _tables(reference / "atlas.sqlite")
    mine, theirs = _files(out), _files(reference)
    assert mine.keys() == theirs.keys() and mine == theirs


def _temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# --------------------------------------------------------------------------- the primitives


def test_atomic_write_on_a_full_disk_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old contents")
    disk = DiskFills(monkeypatch, "result.bin", room=5)
    with pytest.raises(DiskFullError) as err:
        with atomic_write(target) as f:
            f.write(b"new contents, longer than the room left")
    assert str(err.value) == f"disk full while writing {target} (No space left on device); free some space and try again"
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC and err.value.path == str(target)
    assert target.read_bytes() == b"old contents" and not _temps(tmp_path)
    assert disk.failed == [str(temp_path(target))]


def test_torch_save_on_a_full_disk_is_disk_full_too(tmp_path, monkeypatch):
    """torch.save turns its file's OSError into a RuntimeError; the cause is still found."""
    path = tmp_path / "state.pt"
    first = ScanState({"a": (4, 3, 3)}, top=2)
    first.save(path, {"next": 1})
    bigger = ScanState({"a": (4, 3, 3), "b": (64, 8, 8)}, top=2)
    DiskFills(monkeypatch, "state.pt", room=3000)
    with pytest.raises(DiskFullError, match=r"^disk full while writing .*state\.pt \(No space left on device\)"):
        bigger.save(path, {"next": 2})
    assert load_checkpoint(path)["extra"] == {"next": 1} and ScanState.load(path) == first
    assert not _temps(tmp_path)


def test_remove_stale_temps_keeps_live_writers_and_other_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".scan_state.pt.{dead.pid}.tmp", tmp_path / "sub" / f".a.png.{dead.pid}.tmp",
             tmp_path / f".mine.{os.getpid()}.tmp"]
    live = tmp_path / f".served.png.{os.getppid()}.tmp"  # a process that runs: its write may be under way
    others = [tmp_path / "notes.tmp", tmp_path / "scan_state.pt", tmp_path / ".hidden"]
    for p in stale + [live] + others:
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path, name="scan_state.pt", recursive=False) == [stale[0]]
    assert remove_stale_temps(tmp_path) == sorted(stale[1:])
    assert all(p.exists() for p in [live] + others)


# --------------------------------------------------------------------------- a build on a full disk


def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resumes_exactly(model, photos, reference, tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "atlas"
    disk = DiskFills(monkeypatch, "scan.ckpt", k=2)  # the second checkpoint, after 3 of 21 photos
    with pytest.raises(DiskFullError) as err:
        build(model, photos, out, **SETTINGS)
    ckpt = out / ".partial" / "scan.ckpt"
    assert str(err.value) == f"disk full while writing {ckpt} (No space left on device); {HINT}"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chained traceback
    assert load_checkpoint(ckpt)["extra"]["next"] == 3  # the first checkpoint, whole
    assert not _temps(out)
    with pytest.raises(DiskFullError) as again:  # resumed while the disk is still full: nothing lost
        build(model, photos, out, resume=True, **SETTINGS)
    assert str(again.value) == str(err.value)
    assert load_checkpoint(ckpt)["extra"]["next"] == 3 and not _temps(out)
    disk.free()
    build(model, photos, out, resume=True, **SETTINGS)
    _same_atlas(out, reference)
    assert not _temps(out)


def test_disk_full_while_writing_patches_resumes_exactly(model, photos, reference, tmp_path, monkeypatch):
    out = tmp_path / "atlas"
    disk = DiskFills(monkeypatch, ".png.", k=25, room=100)
    with pytest.raises(DiskFullError) as err:
        build(model, photos, out, **SETTINGS)
    message = str(err.value)
    assert message.startswith(f"disk full while writing {out / 'patches'}") and message.endswith(f".png (No space left on device); {HINT}")
    assert load_checkpoint(out / ".partial" / "scan.ckpt")["extra"]["next"] == len(photos)  # the scan is done and kept
    assert not _temps(out)
    disk.free()
    build(model, photos, out, resume=True, **SETTINGS)
    _same_atlas(out, reference)


def test_database_full_resumes_exactly(model, photos, reference, tmp_path, monkeypatch):
    import convscope.atlas.store as store

    real_connect = sqlite3.connect

    def small_disk(path, *args, **kwargs):
        conn = real_connect(path, *args, **kwargs)
        if str(path).endswith(os.path.join(".partial", "atlas.sqlite")):
            conn.execute("PRAGMA max_page_count = 8")  # SQLite's own SQLITE_FULL once 8 pages are used
        return conn

    out = tmp_path / "atlas"
    monkeypatch.setattr(store.sqlite3, "connect", small_disk)
    with pytest.raises(DiskFullError) as err:
        build(model, photos, out, **SETTINGS)
    assert str(err.value) == f"disk full while writing {out / '.partial' / 'atlas.sqlite'} (No space left on device); {HINT}"
    monkeypatch.undo()
    build(model, photos, out, resume=True, **SETTINGS)
    _same_atlas(out, reference)


# --------------------------------------------------------------------------- a real small file system, through the CLI


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``folder``; the reason it cannot be, or None."""
    if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a tmpfs needs root and mount(8)"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True, timeout=30)
    return None if res.returncode == 0 else f"mount refused: {res.stderr.strip() or res.returncode}"


def _fill(folder: Path, leave: int) -> Path:
    """A file that takes all but ``leave`` bytes of the file system of ``folder``."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - leave))
    return filler


CLI_ARGS = ["--model", "torchvision:resnet18", "--no-pretrained", "--layers", "layer1,layer2", "--top", "2",
            "--project", "0", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--checkpoint-every", "2"]


def test_real_full_file_system_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from convscope.cli import main

    photo_dir = tmp_path / "photos"
    make_photos(photo_dir, n=6)
    (photo_dir / "zz_broken.jpg").unlink()  # no "skipped" lines: stderr is the error alone
    reference = tmp_path / "reference"
    res = CliRunner().invoke(main, ["atlas", "build", str(photo_dir), "--out", str(reference), *CLI_ARGS])
    assert res.exit_code == 0, res.output
    checkpoint_size = (reference / "scan_state.pt").stat().st_size  # about the size of one checkpoint

    disk = tmp_path / "disk"
    disk.mkdir()
    reason = _mount_tmpfs(disk, "64m")
    if reason:
        pytest.skip(reason)
    try:
        # room for the first checkpoint (after 2 photos), not for the second beside it
        filler = _fill(disk, leave=checkpoint_size + checkpoint_size // 2)
        out = disk / "atlas"
        env = {**os.environ, "CONVSCOPE_PROGRESS": "0"}
        run = subprocess.run([sys.executable, "-m", "convscope", "atlas", "build", str(photo_dir), "--out", str(out),
                              *CLI_ARGS], capture_output=True, text=True, timeout=600, env=env)
        lines = run.stderr.splitlines()
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith("error: disk full while writing ") and "(No space left on device)" in lines[0]
        assert "resume" in lines[0] and "Traceback" not in run.stderr
        saved = load_checkpoint(out / ".partial" / "scan.ckpt")  # the last checkpoint, whole
        assert saved["extra"]["next"] == 2
        assert not _temps(out)
        filler.unlink()  # space is back
        res = CliRunner().invoke(main, ["atlas", "build", str(photo_dir), "--out", str(out), "--resume", *CLI_ARGS])
        assert res.exit_code == 0, res.output
        _same_atlas(out, reference)
        assert not _temps(out)
    finally:
        import gc

        gc.collect()  # atlases the CLI opened and left to the garbage collector hold files there
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=60).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=60)  # busy: detach it now


# --------------------------------------------------------------------------- store folders


def test_store_state_is_read_from_the_folder_alone(tmp_path):
    """One function decides what a store folder holds, for the atlas and the index alike."""
    from convscope.stores import State, state

    db = "store.sqlite"
    assert state(tmp_path / "missing", db) is State.ABSENT
    (tmp_path / "empty").mkdir()
    assert state(tmp_path / "empty", db) is State.ABSENT
    (tmp_path / "file").write_text("x")
    assert state(tmp_path / "file", db) is State.FOREIGN
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert state(tmp_path / "other", db) is State.FOREIGN
    (tmp_path / "partial" / ".partial").mkdir(parents=True)
    assert state(tmp_path / "partial", db) is State.PARTIAL
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / db).write_bytes(b"")
    assert state(tmp_path / "done", db) is State.COMPLETE
    (tmp_path / "done" / ".partial").mkdir()  # a finished build's leftover: no database of its own
    assert state(tmp_path / "done", db) is State.COMPLETE
    (tmp_path / "done" / ".partial" / db).write_bytes(b"")  # an update that stopped before its commit
    assert state(tmp_path / "done", db) is State.UPDATING
    assert [s for s in State if s.committed] == [State.COMPLETE, State.UPDATING]
    assert [s for s in State if s.unfinished] == [State.PARTIAL, State.UPDATING]


def test_atlas_and_index_refuse_by_the_same_states(tmp_path):
    from convscope.atlas import IncompleteAtlasError
    from convscope.errors import ConvscopeError
    from convscope.index import Index, IncompleteIndexError

    (tmp_path / "half" / ".partial").mkdir(parents=True)
    with pytest.raises(IncompleteAtlasError, match="incomplete"):
        Atlas.open(tmp_path / "half")
    with pytest.raises(IncompleteIndexError, match="incomplete"):
        Index.open(tmp_path / "half")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    for opener in (Atlas.open, Index.open):
        with pytest.raises(ConvscopeError, match="holds no"):
            opener(tmp_path / "other")


def _watch_commit(monkeypatch):
    """Record every fsync (by the file's path) and every rename, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads file names from /proc")
def test_index_commits_by_one_rename_after_every_file_is_synced(tmp_path, monkeypatch, sample_dir):
    """The derived arrays (units, unit_pos, the postings, the entry columns) are synced before
    the one rename that makes the index complete; nothing else is renamed into the folder."""
    from convscope.index import Index

    from .test_index import small_model

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        shutil.copy(sample_dir / f"{name}.png", photos / f"{name}.png")
    out = tmp_path / "index"
    events = _watch_commit(monkeypatch)
    with Index.build(small_model(), [photos], out, batch_size=2, workers=0, progress=False) as index:
        arrays = index.arrays_dir.resolve()
    renames = [e for e in events if e[0] == "replace"]
    assert [Path(dst).resolve() for _, _, dst in renames] == [(out / "index.sqlite").resolve()]
    commit = events.index(renames[0])
    synced = {Path(p).resolve() for kind, p in events[:commit] if kind == "fsync"}
    kept = sorted(p for p in arrays.iterdir())
    assert {p.name for p in kept} >= {"units.npy", "unit_pos.npy", "post_entry.npy", "post_offsets.npy",
                                      "entry_date.npy", "embedding.npy"}
    assert set(kept) <= synced and Path(renames[0][1]).resolve() in synced
