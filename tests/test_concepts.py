"""Taught concepts (``convscope teach``): a concept separates planted groups of photos, counter-
examples move its boundary, it survives ``index --update``, reopening and its example files
moving, forget, bad input leaves the index as it was, the CLI, and one writer at a time.

The photos are scikit-image's samples, three parts of each, and planted groups: chelsea (the
cat) and coffee, each in seven transformed copies (resized, recompressed, cropped at three places,
flipped, darker), indexed with the embedded EfficientNet-Lite0.
"""
from __future__ import annotations

import hashlib
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
from PIL import Image, ImageEnhance

from convscope.errors import ArgumentError, UnknownNameError
from convscope.index import Index, concept_model, concepts

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
GROUPS = ("chelsea", "coffee")


def variants(src: Path, folder: Path) -> list[Path]:
    """Seven transformed copies of ``src`` in ``folder``."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    name = src.stem
    made = {
        "small.jpg": im.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "q30.jpg": im,
        "crop_a.png": im.crop((0, 0, w * 8 // 10, h * 8 // 10)),
        "crop_b.png": im.crop((w * 2 // 10, h * 2 // 10, w, h)),
        "crop_c.png": im.crop((w // 10, 0, w * 9 // 10, h * 9 // 10)),
        "flip.png": im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "dark.png": ImageEnhance.Brightness(im).enhance(0.7),
    }
    out = []
    for suffix, picture in made.items():
        path = folder / f"{name}_{suffix}"
        picture.save(path, quality=30) if suffix.endswith(".jpg") else picture.save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("concept-library")
    photos = root / "photos"
    photos.mkdir()
    for p in sorted(sample_dir.glob("*.png")):
        shutil.copy(p, photos / p.name)
    for p in sorted(photos.glob("*.png")):  # more background: three crops of every other photo
        if p.stem not in GROUPS:
            im = Image.open(p).convert("RGB")
            w, h = im.size
            for i, box in enumerate(((0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (w // 4, h // 2, w * 3 // 4, h))):
                im.crop(box).save(photos / f"{p.stem}_part{i}.png")
    groups = {}
    for name in GROUPS:
        groups[name] = [photos / f"{name}.png"] + variants(photos / f"{name}.png", photos)
    return root, groups


@pytest.fixture(scope="module")
def built(library, default_model, tmp_path_factory):
    root, _ = library
    out = tmp_path_factory.mktemp("concept-index") / "index"
    Index.build(default_model, [root / "photos"], out, batch_size=16, workers=0).close()
    return out


@pytest.fixture
def index(built, tmp_path):
    """A fresh copy of the built index for each test (teaching writes into it)."""
    out = tmp_path / "index"
    shutil.copytree(built, out)
    idx = Index.open(out)
    yield idx
    idx.close()


def rows_of(index, paths) -> np.ndarray:
    return np.array([index.file_of(p)["first_row"] for p in paths])


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    return float(np.mean(np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)))


def table(path: Path) -> list:
    import sqlite3

    with sqlite3.connect(path / "index.sqlite") as conn:
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = []
        for name in ("concepts", "concept_examples"):
            if name in have:
                rows.append(sorted(conn.execute(f"SELECT * FROM {name}").fetchall()))
    conn.close()
    return rows


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "convscope", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


# --------------------------------------------------------------------------- the model


def test_a_concept_separates_the_planted_groups(index, library):
    _, groups = library
    for name in GROUPS:
        taught = groups[name][:3]
        concept = concepts.teach(index, f"my {name}", taught)
        scores = concept.scores(index)
        assert scores.shape == (index.entries,) and scores.dtype == np.float64
        assert ((scores >= 0) & (scores <= 1)).all()
        rest = np.setdiff1d(np.arange(index.entries), rows_of(index, taught))
        relevant = np.isin(rest, rows_of(index, groups[name][3:]))
        assert average_precision(scores[rest], relevant) == 1.0  # every other copy ranks above every other photo
        held = scores[rows_of(index, groups[name][3:])]
        others = scores[rest[~relevant]]
        assert (held >= concept.threshold).mean() >= 0.75 and (others < concept.threshold).all(), (held, others.max())
        # (the held-out background holds unlabeled copies of the group too: a small index measures it low)
        assert concept.separation is not None and concept.separation > 0.8
        # its features: the embedding, then the classes its examples' stored probabilities name
        layout = concept.layout
        assert layout.embedding == index.embedding.shape[1] and 0 < len(layout.classes) <= 3 * 32
        named = {int(c) for r in rows_of(index, taught) for c in index.top_class[r] if c >= 0}
        assert set(layout.classes) == named and len(concept.weights) == layout.width
        # the scores (embedding in float16, the classes from the inverted lists) are the calibrated
        # linear model on the stored features, in float32 to float16 rounding
        x = concept_model.store_features(index, np.arange(index.entries), layout)
        assert np.count_nonzero(x[:, layout.embedding:]) > 0
        exact = 1 / (1 + np.exp(-(x @ concept.weights + concept.bias)))
        np.testing.assert_allclose(scores, exact, atol=2e-3)
        why = concept.why(index, int(rest[relevant][0]))
        assert why["concept"] == f"my {name}" and abs(why["score"] - scores[rest[relevant][0]]) < 2e-3
        assert set(why["nearest"]) <= {str(p) for p in taught} and len(why["nearest"]) == 3


def test_counter_examples_move_the_boundary(index, library):
    _, groups = library
    cat, coffee = groups["chelsea"], groups["coffee"]
    both = concepts.teach(index, "things", [cat[0], cat[1], coffee[0], coffee[1]])
    before = both.scores(index)[rows_of(index, coffee[3:])]
    refined = concepts.teach(index, "Things", [], counter=[coffee[2]])  # the same concept, by another spelling
    after = refined.scores(index)[rows_of(index, coffee[3:])]
    assert len(refined.positives()) == 4 and [e.path for e in refined.counters()] == [str(coffee[2])]
    assert (after < before).all() and after.mean() < before.mean() - 0.2
    scores = refined.scores(index)
    others = np.setdiff1d(np.arange(index.entries), rows_of(index, cat + coffee))
    assert scores[rows_of(index, cat[2:])].min() > scores[others].max()  # the cats still rank first
    assert scores[rows_of(index, cat[2:])].min() > scores[rows_of(index, coffee[3:])].max()  # now above the coffee
    # a photo given again moves to the side it is given on
    moved = concepts.teach(index, "things", [coffee[2]])
    assert not moved.counters() and len(moved.positives()) == 5


def test_names_compare_without_case_or_spacing_and_bad_names_are_refused(index, library):
    _, groups = library
    concepts.teach(index, "  Our   Kitchen ", groups["coffee"][:2])
    held = concepts.load(index)
    assert held.get("our kitchen").name == "Our Kitchen" and held.get("OUR KITCHEN\t") is not None
    assert held.get("kitchen") is None and len(held) == 1
    for bad in ("", "   ", "x" * (concepts.MAX_NAME + 1), "a\nb", "tab\x00"):
        with pytest.raises(ArgumentError):
            concepts.teach(index, bad, groups["coffee"][:1])
    with pytest.raises(ArgumentError, match="at least one example"):
        concepts.teach(index, "nothing", [])
    with pytest.raises(ArgumentError, match="would have no example"):
        concepts.teach(index, "only not", [], counter=groups["coffee"][:1])


def test_an_example_outside_the_index_is_embedded_by_the_index_model_and_survives_moving(index, library, tmp_path,
                                                                                        default_model):
    _, groups = library
    outside = tmp_path / "elsewhere.png"
    Image.open(groups["chelsea"][0]).convert("RGB").rotate(3).save(outside)
    concept = concepts.teach(index, "cat", [outside, groups["chelsea"][1]], model=default_model)
    stored = next(e for e in concept.examples if e.path == str(outside))
    np.testing.assert_allclose(stored.vector, index.embed(outside, model=default_model), atol=1e-5)
    assert stored.sha256 == hashlib.sha256(outside.read_bytes()).hexdigest()
    # its classes kept as the index keeps an entry's: the 32 most probable above 0.001, square-rooted
    probs = index.features(outside, model=default_model).probs[0]
    kept = np.argsort(-probs)[:32]
    kept = kept[probs[kept] >= 1e-3]
    assert set(np.flatnonzero(stored.roots)) == set(kept.tolist())
    np.testing.assert_allclose(stored.roots[kept], np.sqrt(probs[kept]), rtol=1e-3)
    assert set(kept.tolist()) <= set(concept.layout.classes)
    before = concept.scores(index)
    outside.unlink()  # the example is gone: the concept keeps its vector
    again = concepts.load(index).get("cat")
    np.testing.assert_array_equal(again.scores(index), before)
    assert [e.path for e in again.positives()] == [str(outside), str(groups["chelsea"][1])]


def test_concepts_survive_update_and_reopening_and_forget(index, library, default_model, tmp_path):
    root, groups = library
    concept = concepts.teach(index, "rex", groups["chelsea"][:3], counter=[groups["coffee"][0]])
    held = table(index.root)
    index.close()
    extra = tmp_path / "new"
    extra.mkdir()
    shutil.copy(groups["coffee"][1], extra / "more_coffee.png")
    with Index.build(default_model, [root / "photos", extra], index.root, update=True, workers=0) as updated:
        assert updated.entries == index.entries + 1
        assert table(updated.root) == held  # the same rows, byte for byte
        again = concepts.load(updated).get("rex")
        np.testing.assert_array_equal(again.weights, concept.weights)
        scores = again.scores(updated)
        assert scores[updated.file_of(extra / "more_coffee.png")["first_row"]] < again.threshold
    with Index.open(index.root) as reopened:
        assert concepts.load(reopened).names() == ["rex"]
        gone = concepts.forget(reopened, "REX")
        assert gone.name == "rex" and len(concepts.load(reopened)) == 0
        with pytest.raises(UnknownNameError, match="unknown concept 'rex'"):
            concepts.forget(reopened, "rex")
    assert table(index.root) == [[], []]


def test_teaching_scales_to_a_large_index_in_memory():
    """The background is sampled: a 100,000-entry index teaches from 4,096 + 2,048 rows."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((100_000, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    direction = rng.standard_normal(64).astype(np.float32)
    planted = np.flatnonzero(emb @ direction > 2.0 * np.linalg.norm(direction) / 8)
    half = emb.astype(np.float16)
    read = []
    fitted, count = concept_model.teach_vectors(lambda rows: read.append(rows) or np.asarray(half[rows], np.float32),
                                                len(emb), emb[planted[:10]], np.zeros((0, 64), np.float32),
                                                exclude=planted[:10], seed=1)
    assert count == concept_model.BACKGROUND
    assert [len(r) for r in read] == [concept_model.BACKGROUND, concept_model.HELD_OUT]
    assert not np.isin(np.concatenate(read), planted[:10]).any() and len(np.unique(np.concatenate(read))) == 3072
    scores = fitted.calibrated(concept_model.embedding_products(half, fitted.weights) + fitted.bias)
    relevant = np.zeros(len(emb), bool)
    relevant[planted[10:]] = True
    assert average_precision(scores, relevant) > 10 * relevant.mean()  # far above chance


# --------------------------------------------------------------------------- the command line


def test_cli_teach_concepts_forget_and_organize(index, library):
    _, groups = library
    root = index.root
    index.close()
    run = cli("teach", root, "kitty", *groups["chelsea"][:3], "--not", groups["coffee"][0], "--json")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["concept"] == "kitty" and record["examples"] == [str(p) for p in groups["chelsea"][:3]]
    assert record["counter_examples"] == [str(groups["coffee"][0])] and record["separation"] > 0.9
    listed = cli("concepts", root, "--json")
    assert listed.returncode == 0 and [json.loads(line)["concept"] for line in listed.stdout.splitlines()] == ["kitty"]
    albums = cli("organize", root, "--json")
    album = next(json.loads(line) for line in albums.stdout.splitlines() if json.loads(line)["album"] == "concept: kitty")
    assert set(map(str, groups["chelsea"][3:])) <= set(album["paths"])
    assert not set(map(str, groups["coffee"])) & set(album["paths"])
    text = cli("concepts", root)
    assert text.stdout.startswith("kitty: 3 examples, 1 counter-examples, separation ")
    forget = cli("teach", root, "kitty", "--forget")
    assert forget.returncode == 0 and "forgot concept 'kitty'" in forget.stderr
    none = cli("concepts", root)
    assert none.returncode == 0 and none.stdout == "" and "no concepts yet" in none.stderr


def test_cli_bad_input_is_one_line_and_leaves_the_index_as_it_was(index, library, tmp_path):
    _, groups = library
    root = index.root
    concepts.teach(index, "kitty", groups["chelsea"][:2])
    index.close()
    before = table(root)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        ("teach", root, "kitty"),  # no example
        ("teach", root, "kitty", tmp_path / "missing.jpg"),
        ("teach", root, "kitty", text),
        ("teach", root, "kitty", groups["chelsea"][3], "--not", text),
        ("teach", root, "", groups["chelsea"][3]),
        ("teach", root, "x" * 65, groups["chelsea"][3]),
        ("teach", root, "bad\x1bname", groups["chelsea"][3]),
        ("teach", root, "unknown", "--forget"),
        ("teach", root, "kitty", groups["chelsea"][3], "--forget"),
    ]
    for args in cases:
        run = cli(*args)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and "Traceback" not in run.stderr, (args, run.stderr)
        assert table(root) == before, args


HOLD = """
import sys, time
from convscope.stores import writer_lock
with writer_lock(sys.argv[1], kind="index"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_teach_while_a_build_holds_the_lock_gets_the_lock_line(index, library):
    _, groups = library
    root = index.root
    index.close()
    before = table(root)
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert first.stdout.readline().strip() == "held"
        run = cli("teach", root, "kitty", groups["chelsea"][0])
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert lines[0].startswith(f"error: {root} is being written by another index build (pid {first.pid}, since ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert table(root) == before


def test_remove_one_example_teaches_again_from_the_rest(index, library):
    _, groups = library
    cat, coffee = groups["chelsea"], groups["coffee"]
    concepts.teach(index, "rex", cat[:3], counter=[coffee[0]])
    before = table(index.root)
    sha = hashlib.sha256(Path(cat[1]).read_bytes()).hexdigest()
    after = concepts.remove_example(index, "REX", sha)  # by SHA-256
    assert sorted(e.path for e in after.positives()) == sorted(str(p) for p in (cat[0], cat[2]))
    held = concepts.load(index).get("rex")
    assert [e.path for e in held.counters()] == [str(coffee[0])]
    assert not np.array_equal(held.weights, np.frombuffer(before[0][0][4], np.float32))  # taught again
    assert concepts.remove_example(index, "rex", str(coffee[0])).counters() == []  # by path
    scores = concepts.load(index).get("rex").scores(index)
    assert scores[rows_of(index, cat)].mean() > scores[rows_of(index, coffee)].mean()
    left = table(index.root)
    with pytest.raises(ArgumentError, match="holds no example"):
        concepts.remove_example(index, "rex", str(coffee[3]))
    concepts.remove_example(index, "rex", str(cat[0]))
    with pytest.raises(ArgumentError, match="last example of concept 'rex'; forget the concept instead"):
        concepts.remove_example(index, "rex", str(cat[2]))
    with pytest.raises(UnknownNameError):
        concepts.remove_example(index, "max", str(cat[2]))
    assert len(table(index.root)[1]) == len(left[1]) - 1  # the refusals left it as it was


def test_a_concept_taught_before_classes_counted_scores_as_taught_then_teaches_again_with_them(index, library):
    """A concept stored with the embedding alone (features "embedding", example vectors D wide)
    is scored as it was taught; taught again, its examples' classes come from the index."""
    _, groups = library
    concept = concepts.teach(index, "old rex", groups["coffee"][:3])
    d = index.embedding.shape[1]
    rng = np.random.default_rng(3)
    w = rng.standard_normal(d).astype(np.float32)
    with sqlite3.connect(index.root / "index.sqlite") as conn:  # as an index of the earlier format holds it
        conn.execute("UPDATE concepts SET features = 'embedding', weights = ?, bias = -0.5 WHERE key = 'old rex'",
                     (w.tobytes(),))
        for sha, vector in conn.execute("SELECT sha256, vector FROM concept_examples WHERE key = 'old rex'").fetchall():
            conn.execute("UPDATE concept_examples SET vector = ? WHERE sha256 = ?", (vector[:4 * d], sha))
    conn.close()
    old = concepts.load(index).get("old rex")
    assert old.layout.classes == () and all(e.roots is None for e in old.examples)
    exact = 1 / (1 + np.exp(-(np.asarray(index.embedding, np.float32) @ w - 0.5)))
    np.testing.assert_allclose(old.scores(index), exact, atol=2e-3)
    again = concepts.teach(index, "old rex", [groups["coffee"][3]])
    assert set(again.layout.classes) == {int(c) for r in rows_of(index, groups["coffee"][:4])
                                         for c in index.top_class[r] if c >= 0}
    assert all(e.roots is not None for e in concepts.load(index).get("old rex").examples)
    np.testing.assert_allclose(concepts.load(index).get("old rex").scores(index), again.scores(index))
    assert concept.layout.classes  # (taught now, it had them from the start)
