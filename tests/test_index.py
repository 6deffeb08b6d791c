"""The photo index: build, resume, update, search, like, unit, duplicates, albums, explain.

Photos are scikit-image's samples and transformed copies of them, plus a 3 s H.264 clip this
file writes with PyAV. A random-initialized ResNet-18 fed 64 px inputs checks structure; the
embedded EfficientNet-Lite0 checks what needs trained weights (chelsea is a cat).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import load_image, load_photo
from convscope.errors import ConvscopeError, UnknownNameError
from convscope.hooks import hook_count
from convscope.index import Index, IncompleteIndexError, album_for, media, parse_unit
from convscope.index.search import segments
from convscope.index.signals import decode_size
from convscope.models import Preprocessing, load_model

CHELSEA_COPIES = ("chelsea_small.jpg", "chelsea_q30.jpg", "chelsea_crop.png", "chelsea_flip.png")
REPO = Path(__file__).resolve().parents[1]


def write_clip(path: Path, seconds: int = 3, fps: int = 10, size=(64, 48)) -> Path:
    """An H.264 clip of a white square moving over a colour that slowly changes."""
    import av

    w, h = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(seconds * fps):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0], img[..., 2] = 40 + i * 4, 200 - i * 4
            img[h // 4: h // 4 + 16, i: i + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_library(root: Path, sample_dir: Path) -> Path:
    """Sample photos, four transformed copies of chelsea and of coffee, a byte copy of rocket,
    a clip; bad files (empty, corrupt, not an image, not a video) in ``root/bad``."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket", "astronaut", "camera", "brick", "moon", "coins"):
        shutil.copy(sample_dir / f"{name}.png", photos / f"{name}.png")
    copies = root / "copies"
    copies.mkdir()
    for name in ("chelsea", "coffee"):
        im = Image.open(photos / f"{name}.png").convert("RGB")
        w, h = im.size
        im.resize((w // 2, h // 2), Image.Resampling.BILINEAR).save(copies / f"{name}_small.jpg", quality=90)
        im.save(copies / f"{name}_q30.jpg", quality=30)
        im.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(copies / f"{name}_crop.png")
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copies / f"{name}_flip.png")
    shutil.copy(photos / "rocket.png", copies / "rocket_copy.png")
    write_clip(root / "clip.mp4")
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (bad / "notes.png").write_text("not an image")
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    return root


def small_model():
    prep = Preprocessing((64, 64), 64, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return load_model("torchvision:resnet18", pretrained=False, device="cpu", preprocessing=prep)


@pytest.fixture(scope="module")
def library(tmp_path_factory, sample_dir):
    return make_library(tmp_path_factory.mktemp("library"), sample_dir)


@pytest.fixture(scope="module")
def tiny():
    return small_model()


@pytest.fixture(scope="module")
def built(library, tiny, tmp_path_factory):
    skips = []
    out = tmp_path_factory.mktemp("tiny") / "index"
    before = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    index = Index.build(tiny, [library], out, batch_size=4, workers=0, on_skip=lambda p, r: skips.append((p, r)))
    return index, skips, before


@pytest.fixture(scope="module")
def real(library, default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "index"
    return Index.build(default_model, [library / "photos", library / "copies", library / "clip.mp4"], out, batch_size=16, workers=0)


def rows_of(index: Index, name: str) -> range:
    record = next(f for f in index.files().values() if Path(f["path"]).name == name)
    return range(record["first_row"], record["first_row"] + record["rows"])


def snapshot(index: Index) -> dict:
    """Everything an index holds, by path (row numbers and file ids aside)."""
    out = {}
    for f in index.files().values():
        rows = slice(f["first_row"], f["first_row"] + f["rows"])
        thumbs = [index.thumbnail(r) for r in range(rows.start, rows.stop)]
        out[f["path"]] = {
            "record": {k: f[k] for k in ("kind", "size", "mtime_ns", "sha256", "taken", "width", "height", "duration", "rows")},
            "times": [None if np.isnan(t) else t for t in index.entry_time[rows].tolist()], "thumbs": thumbs,
            "arrays": [np.asarray(a[rows]).tobytes() for a in (index.top_class, index.top_prob, index.embedding)]
            + [np.asarray(a[:, rows]).tobytes() for a in (index.units, index.unit_pos)],
        }
    return out


# --------------------------------------------------------------------------- media


def test_media_expands_videos_and_samples_frames_at_fps(library):
    paths, errors = media.expand_media([library])
    names = [p.name for p in paths]
    assert "clip.mp4" in names and "broken.mp4" in names and "chelsea.png" in names and not errors
    assert [t for t, _ in media.video_frames(library / "clip.mp4", fps=1.0)] == [0.0, 1.0, 2.0]
    assert [t for t, _ in media.video_frames(library / "clip.mp4", fps=2.0)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [t for t, _ in media.video_frames(library / "clip.mp4", fps=1.0, first=1, stop=2)] == [1.0]
    assert media.probe_video(library / "clip.mp4").duration == pytest.approx(3.0)
    with pytest.raises(ConvscopeError, match="video"):
        list(media.video_frames(library / "bad" / "broken.mp4"))


def test_draft_decodes_large_jpegs_smaller_and_reads_exif_date(tmp_path):
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2021:07:04 12:30:00"
    Image.new("RGB", (2000, 1500), (90, 120, 200)).save(path, quality=90, exif=exif)
    full, small = load_photo(path), load_photo(path, target_size=256)
    assert full.image.size == (2000, 1500) and small.size == (2000, 1500)
    assert small.image.size == (500, 375)  # 1/4 scale: the largest that still covers 256 px
    assert full.taken == small.taken == "2021-07-04T12:30:00"
    assert full.sha256 == small.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the same one read
    thumb = Image.open(io.BytesIO(media.thumbnail_jpeg(small.image)))
    assert thumb.format == "JPEG" and max(thumb.size) == 160


# --------------------------------------------------------------------------- build


def test_build_records_arrays_and_skips(built, library, tiny):
    index, skips, before = built
    info = index.info()
    photos = len(list((library / "photos").iterdir())) + len(list((library / "copies").iterdir()))
    assert info["photos"] == photos and info["videos"] == 1 and info["entries"] == photos + 3
    assert sorted(Path(p).name for p, _ in skips) == ["broken.mp4", "corrupt.jpg", "empty.jpg", "notes.png"]
    assert info["skipped"] == 4 and len(index.skipped()) == 4
    assert all(reason and "\n" not in reason for _, reason in skips)
    n, u = index.entries, sum(layer["shape"][0] for layer in index.layers)
    assert index.embedding.shape == (n, 512) and index.embedding.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(np.asarray(index.embedding, np.float32), axis=1), 1, atol=2e-3)
    assert index.units.shape == (u, n) and index.unit_pos.shape == (u, n) and index.unit_pos.dtype == np.int16
    assert index.top_class.shape == (n, 32)
    # the class blocks hold each entry's stored probabilities summed per 25 classes
    blocks = np.asarray(index.class_blocks, np.float64)
    assert blocks.shape == (40, n)
    probs = np.zeros((n, 1000))
    rows, slots = np.nonzero(np.asarray(index.top_class) >= 0)
    np.add.at(probs, (rows, np.asarray(index.top_class)[rows, slots]), np.asarray(index.top_prob, np.float64)[rows, slots])
    np.testing.assert_array_equal(blocks, probs.reshape(n, 40, 25).sum(axis=2).T)
    hits = index.unit("layer1:5", top=2, boxes=False)
    assert hits[0].score >= hits[1].score and hits[0].box is None and 0 <= hits[0].position[0] < 16
    clip = rows_of(index, "clip.mp4")
    assert index.entry_time[clip].tolist() == [0.0, 1.0, 2.0]
    chelsea = index.file_of(library / "photos" / "chelsea.png")
    data = (library / "photos" / "chelsea.png").read_bytes()
    assert chelsea["sha256"] == hashlib.sha256(data).hexdigest() and chelsea["size"] == len(data)
    assert (chelsea["width"], chelsea["height"]) == Image.open(library / "photos" / "chelsea.png").size
    thumb = Image.open(io.BytesIO(index.thumbnail(chelsea["first_row"])))
    assert thumb.format == "JPEG" and max(thumb.size) == 160
    # the model is left as it came
    assert hook_count(tiny.module) == 0
    assert all(torch.equal(v, before[k]) for k, v in tiny.module.state_dict().items())


def test_checked_model_hashes_once_and_again_after_a_weight_changes(built, tiny, monkeypatch):
    import copy

    import convscope.index.features as features_module

    index = built[0]
    model = copy.deepcopy(tiny)
    hashed = []
    real = features_module.model_fingerprint
    monkeypatch.setattr(features_module, "model_fingerprint", lambda m: hashed.append(1) or real(m))
    assert index.checked_model(model) is model and index.checked_model(model) is model
    assert len(hashed) == 1  # the second check saw the same tensors, unchanged
    with torch.no_grad():
        next(model.module.parameters()).add_(1.0)
    with pytest.raises(ConvscopeError, match="not the one this index was built with"):
        index.checked_model(model)
    assert len(hashed) == 2


def test_stored_probabilities_and_embedding_match_the_model(built, library, tiny):
    """Cross-check against a plain forward pass of the model, on the photo decoded as the build
    decodes it (at reduced scale: draft=True)."""
    index = built[0]
    image = load_image(library / "photos" / "coffee.png", target_size=decode_size(tiny.preprocessing.resize))
    x = tiny.transform(image)[None]
    with torch.inference_mode():
        probs = torch.softmax(tiny.module(x), 1)[0].numpy()
    row = index.file_of(library / "photos" / "coffee.png")["first_row"]
    cls, p = index.top_class[row], index.top_prob[row].astype(np.float32)
    kept = cls >= 0
    np.testing.assert_allclose(p[kept], probs[cls[kept]], rtol=2e-3, atol=1e-6)
    assert list(cls[kept]) == list(np.argsort(-probs)[:kept.sum()])
    assert p[kept].min() >= 1e-3 > np.sort(probs)[::-1][kept.sum()] or kept.sum() == 32


def test_open_refuses_incomplete_and_existing_without_update(built, library, tiny, tmp_path):
    (tmp_path / "half" / ".partial").mkdir(parents=True)
    with pytest.raises(IncompleteIndexError, match="resume") as err:
        Index.open(tmp_path / "half")
    assert "\n" not in str(err.value)
    with pytest.raises(ConvscopeError, match="no index"):
        Index.open(tmp_path / "nothing")
    with pytest.raises(ConvscopeError, match="already holds an index"):
        Index.build(tiny, [library / "photos"], built[0].root)


RESUME_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from test_index import small_model
from convscope.index import Index, features
import importlib; build = importlib.import_module("convscope.index.build")
build.CHUNK = 2
slow = features.Extractor.__call__
def call(self, x):
    time.sleep(0.25)
    return slow(self, x)
features.Extractor.__call__ = call
commit = build._Partial.commit
def loud(self, force=False):
    commit(self, force)
    print("rows", self.rows, flush=True)
build._Partial.commit = loud
Index.build(small_model(), [{library!r}], {out!r}, batch_size=4, workers=0)
print("done", flush=True)
"""


def test_resume_after_sigkill_equals_an_uninterrupted_build(built, library, tiny, tmp_path):
    out = tmp_path / "killed"
    code = RESUME_CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), library=str(library), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("rows") and int(line.split()[1]) >= 8:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(IncompleteIndexError):
        Index.open(out)
    with pytest.raises(ConvscopeError, match="unfinished"):
        Index.build(tiny, [library], out, batch_size=4)
    resumed = Index.build(tiny, [library], out, batch_size=4, workers=0, resume=True)
    fresh = built[0]  # the same inputs, model and batches, uninterrupted
    assert resumed.entries == fresh.entries and resumed.info()["skipped"] == fresh.info()["skipped"] == 4
    assert snapshot(resumed) == snapshot(fresh)
    assert not (out / ".partial").exists() and len([p for p in out.iterdir() if p.name.startswith("arrays-")]) == 1


def test_a_new_signal_is_one_module_and_one_registry_line(library, tiny, tmp_path, monkeypatch):
    """A signal made of what every signal has (an entry value from the decoded picture, a row
    array) plugs into the build by one more item in the registry; its rows are the pictures'."""
    from convscope.index import signals

    class Brightness(signals.Signal):
        name = "brightness"

        def entry(self, image):
            return {"brightness": float(np.asarray(image.convert("L"), np.float64).mean())}

        def arrays(self, extractor):
            return {"brightness": (np.float32, ())}

        def rows(self, features, entries):
            return {"brightness": np.array([e["brightness"] for e in entries], np.float32)}

    monkeypatch.setattr(signals, "SIGNALS", (*signals.SIGNALS, Brightness()))
    index = Index.build(tiny, [library / "photos"], tmp_path / "index", batch_size=4, workers=0)
    got = np.load(index.arrays_dir / "brightness.npy")
    assert got.shape == (index.entries,)
    for f in index.files().values():
        image = load_image(f["path"], target_size=signals.decode_size(tiny.preprocessing.resize))
        assert got[f["first_row"]] == pytest.approx(np.asarray(image.convert("L"), np.float64).mean(), rel=1e-6)
    assert [s.name for s in signals.SIGNALS][:5] == ["classes", "embedding", "units", "thumbnail", "metadata"]


def _as_before_the_decoder_was_recorded(db: Path) -> None:
    """Rewrite an index database as convscope wrote it before issue 19: no ``decoder`` in meta."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'decoder'")
    conn.close()


def test_an_index_built_before_the_change_opens_searches_and_updates(built, library, tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(built[0].root, old)
    _as_before_the_decoder_was_recorded(old / "index.sqlite")
    with Index.open(old) as index:
        assert "decoder" not in index.meta and snapshot(index) == snapshot(built[0])
        assert [r.path for r in index.like(0, top=3)] == [r.path for r in built[0].like(0, top=3)]
    with Index.build(tiny, None, old, update=True, batch_size=4, workers=0) as updated:  # nothing changed: all copied
        assert snapshot(updated) == snapshot(built[0])


def test_a_build_stopped_under_the_old_decoder_says_how_to_go_on(built, library, tiny, tmp_path):
    """The old code's partial build (its arrays inside .partial/, no decoder recorded) is not
    resumed with other pixels: one line says what to do."""
    out = tmp_path / "stopped"
    shutil.copytree(built[0].root, out / ".partial")
    db = out / ".partial" / "index.sqlite"
    _as_before_the_decoder_was_recorded(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 'false' WHERE key = 'complete'")
    conn.close()
    with pytest.raises(IncompleteIndexError):
        Index.open(out)
    with pytest.raises(ConvscopeError, match="different decoder") as err:
        Index.build(tiny, [library], out, batch_size=4, workers=0, resume=True)
    assert "\n" not in str(err.value) and ".partial" in str(err.value)


def test_the_extractor_captures_under_the_model_lock_with_its_checks(tiny):
    """features.Extractor stands on hooks.capture: it waits for the model's lock, refuses a
    shared module and a layer that did not run, and leaves no hook behind."""
    import threading

    from convscope.errors import LayerNotRunError
    from convscope.hooks import ReusedModuleError, model_lock
    from convscope.index.features import Extractor

    extract = Extractor(tiny, ["layer1", "layer4"])
    x = torch.zeros(2, 3, 64, 64)
    done = threading.Event()
    with model_lock(tiny.module):
        worker = threading.Thread(target=lambda: (extract(x), done.set()))
        worker.start()
        assert not done.wait(0.5)  # another thread holds the model: the extractor waits
    worker.join(30)
    assert done.is_set() and hook_count(tiny.module) == 0

    def layer1_twice(t, m=tiny.module):
        out = type(m).forward(m, t)
        m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(t)))))
        return out

    tiny.module.forward = layer1_twice
    try:
        with pytest.raises(ReusedModuleError, match="more than once"):
            extract(x)
    finally:
        del tiny.module.forward
    assert hook_count(tiny.module) == 0

    def without_layer4(t, m=tiny.module):
        m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(t)))))
        return m.fc(torch.zeros(t.shape[0], m.fc.in_features))

    tiny.module.forward = without_layer4
    try:
        with pytest.raises(LayerNotRunError, match="layer4"):
            extract(x)
    finally:
        del tiny.module.forward
    assert hook_count(tiny.module) == 0 and "forward" not in vars(tiny.module)


def test_update_adds_changes_and_drops_without_recomputing(library, tiny, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(library / "photos", lib)
    shutil.copy(library / "clip.mp4", lib / "clip.mp4")
    out = tmp_path / "index"
    Index.build(tiny, [lib], out, batch_size=4, workers=0).close()
    old = snapshot(Index.open(out))
    (lib / "moon.png").unlink()  # deleted
    shutil.copy(library / "copies" / "chelsea_flip.png", lib / "new.png")  # added
    Image.open(library / "photos" / "brick.png").rotate(90).save(lib / "coins.png")  # changed
    os.utime(lib / "rocket.png", ns=(10**18, 10**18))  # touched only: same bytes
    seen = []
    handle = tiny.module.register_forward_hook(lambda m, i, o: seen.append(int(o.shape[0])))
    try:
        updated = Index.build(tiny, [lib], out, update=True, batch_size=4, workers=0)
    finally:
        handle.remove()
    assert seen == [1, 1, 2]  # two probe passes of a blank input, then new.png and coins.png only
    new = snapshot(updated)
    paths = {Path(p).name: p for p in new}
    assert "moon.png" not in paths and "new.png" in paths
    for name in ("chelsea.png", "camera.png", "clip.mp4"):
        assert new[paths[name]] == old[paths[name]]
    assert new[paths["coins.png"]]["arrays"] != old[paths["coins.png"]]["arrays"]
    assert new[paths["rocket.png"]]["record"]["mtime_ns"] == 10**18
    assert new[paths["rocket.png"]]["arrays"] == old[paths["rocket.png"]]["arrays"]
    fresh = snapshot(Index.build(tiny, [lib], tmp_path / "fresh", batch_size=4, workers=2))  # decoded in processes
    assert new == fresh  # an update equals a build from scratch


# --------------------------------------------------------------------------- search


def test_keyword_search_finds_the_cat_and_the_espresso(real, library, default_model):
    results = real.search("cat")
    chelsea = {"chelsea.png", *CHELSEA_COPIES}
    assert Path(results[0].path).name in chelsea
    assert {Path(r.path).name for r in results} == chelsea  # nothing else reaches 0.2
    record = results[0].to_json()
    assert set(record) == {"path", "time", "score", "why"} and record["time"] is None
    assert record["why"][0]["path"][-1] == "cat" and record["why"][0]["label"] == record["why"][0]["path"][0]
    assert record["score"] == pytest.approx(sum(w["probability"] for w in record["why"]), abs=1e-3)
    json.dumps(record)
    # the score is the matched classes' probability from a plain forward pass
    from convscope.vocab import Vocabulary

    classes = sorted(Vocabulary.load().classes_for("cat").paths)
    x = default_model.transform(Image.open(library / "photos" / "chelsea.png").convert("RGB"))[None]
    with torch.inference_mode():
        probs = torch.softmax(default_model.module(x), 1)[0].numpy()
    hit = next(r for r in results if Path(r.path).name == "chelsea.png")
    assert hit.score == pytest.approx(probs[classes].sum(), abs=5e-3)
    assert Path(real.search("espresso")[0].path).name.startswith("coffee")
    assert real.search("cat", min_score=0.99) == []
    with pytest.raises(UnknownNameError, match="Close matches"):
        real.search("catt")


def test_sort_by_date_uses_exif_then_mtime(real):
    by_date = real.search("cat", sort="date")
    dates = [r.date for r in by_date]
    assert dates == sorted(dates, reverse=True) and len(by_date) == len(real.search("cat"))
    with pytest.raises(ValueError, match="sort"):
        real.search("cat", sort="size")


def test_video_frames_in_a_row_merge_into_one_segment(real):
    clip = rows_of(real, "clip.mp4")
    classes = {int(c) for c in real.top_class[clip.start:clip.stop, 0]}
    paths = {c: ("class",) for c in classes}
    from convscope.index.search import search

    hits = [r for r in search(real, "frames", paths=paths, min_score=0.0, top=100) if r.path.endswith("clip.mp4")]
    assert len(hits) == 1 and (hits[0].time, hits[0].end) == (0.0, 2.0)
    assert hits[0].to_json()["end"] == 2.0
    rows = np.array([clip.start, clip.start + 1, clip.start + 2])
    best, score, first, last = segments(real, np.delete(rows, 1), np.array([0.5, 0.7]))
    assert list(first) == [clip.start, clip.start + 2]  # a gap splits the segment


def test_like_finds_the_copies_of_chelsea(real, library, default_model, tmp_path):
    chelsea = {"chelsea.png", *CHELSEA_COPIES}
    results = real.like(library / "copies" / "chelsea_small.jpg", top=4)
    assert {Path(r.path).name for r in results} == chelsea - {"chelsea_small.jpg"}
    assert all(r.why == [] for r in results) and results[0].score > 0.8
    outside = tmp_path / "chelsea_outside.jpg"
    Image.open(library / "photos" / "chelsea.png").resize((200, 150)).save(outside)
    assert Path(real.like(outside, top=1, model=default_model)[0].path).name in chelsea
    # exact: the same order as a plain float32 loop over the stored vectors
    q = np.asarray(real.embedding[0], np.float32)
    sims = np.asarray(real.embedding, np.float32) @ q
    mask = np.asarray(real.entry_file) == real.entry_file[0]
    sims[mask] = -np.inf
    order = [i for i in np.argsort(-sims, kind="stable")[:3]]
    got = real.like(0, top=3)
    assert [r.entry for r in got] == order or [round(r.score, 5) for r in got] == [round(float(sims[i]), 5) for i in order]


def test_unit_search_matches_a_plain_loop_and_gives_boxes(real, library, default_model):
    layer, unit = parse_unit("blocks.2:17")
    results = real.unit(layer, unit, top=3, model=default_model)
    info = real.layer(layer)
    column = info["offset"] + unit
    values = np.asarray(real.units[column], np.float32)
    assert [r.score for r in results] == sorted(values, reverse=True)[:3]
    best = results[0]
    decoded = load_image(best.path, target_size=decode_size(default_model.preprocessing.resize))  # as the build did
    x = default_model.transform(decoded)[None] if best.time is None else None
    from convscope.hooks import forward_layers

    with torch.inference_mode():
        out = forward_layers(default_model.module, x, [layer])[layer][0, unit]
    assert float(out.max()) == pytest.approx(best.score, rel=2e-3)
    y, xx = divmod(int(out.flatten().argmax()), out.shape[1])
    assert best.position == (y, xx)
    t, l, b, r = default_model.layers.get(layer).box(y, xx, input_size=default_model.input_size)
    assert best.box == (t, l, b, r) and 0 < b - t <= 67
    assert best.to_json()["box"] == [t, l, b, r]
    with pytest.raises(ValueError, match="units 0"):
        real.unit(layer, 10_000, model=default_model)
    with pytest.raises(UnknownNameError):
        real.unit("blocks.99:1")
    with pytest.raises(ValueError, match="LAYER:UNIT"):
        parse_unit("blocks.2")


# --------------------------------------------------------------------------- organize


def test_duplicates_group_the_copies(real):
    groups = [{Path(p).name for p in g["paths"]} for g in real.duplicates()]
    assert {"chelsea.png", *CHELSEA_COPIES} in groups
    assert {"coffee.png", "coffee_small.jpg", "coffee_q30.jpg", "coffee_crop.png", "coffee_flip.png"} in groups
    assert {"rocket.png", "rocket_copy.png"} in groups
    assert len(groups) == 3


def test_albums_by_category_and_cluster(real):
    albums = real.albums()
    assert {a["album"] for a in albums} >= {"animals > cats"}
    cats = next(a for a in albums if a["album"] == "animals > cats")
    assert {Path(p).name for p in cats["paths"]} >= {"chelsea.png", "chelsea_flip.png"}
    everything = [p for a in albums for p in a["paths"]]
    assert sorted(everything) == sorted(f["path"] for f in real.files().values())  # each file once
    assert album_for(207) == "animals > dogs" and album_for(817) == "vehicles > cars"


def test_explain_writes_gradcam_and_unit_box_pictures(real, default_model, tmp_path):
    written = real.explain(real.search("cat", top=1) + real.unit("blocks.2:3", top=1, model=default_model), tmp_path, model=default_model)
    assert len(written) == 2 and all(Path(p).stat().st_size > 1000 for p in written)
    box = np.asarray(Image.open(written[1]).convert("RGB"))
    assert ((box[..., 0] == 255) & (box[..., 1] == 40)).any()  # the red box is drawn
