"""Duplicates a person can trust: copies (perceptual hash and embedding) apart from similar
photos (embedding), complete linkage (no chain), the approximate candidates against all pairs,
and an index built before the hash (a note, then ``update`` adds it without the model).

Photos are scikit-image's samples: chelsea with a resized, recompressed, cropped and mirrored
copy; two crops of astronaut that do not overlap (one photo's two subjects, not copies); the
embedded EfficientNet-Lite0 gives the embeddings.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from convscope.index import Index, build
from convscope.index import duplicates as dup
from convscope.index import signals
from convscope.index.neighbours import near_pairs
from convscope.index.signals.phash import copy_distance, distance, phash

COPIES = ("chelsea_small.jpg", "chelsea_q30.jpg", "chelsea_crop.jpg", "chelsea_mirror.png")


def write_photos(folder: Path, sample_dir: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket"):
        shutil.copy(sample_dir / f"{name}.png", folder / f"{name}.png")
    im = Image.open(sample_dir / "chelsea.png").convert("RGB")
    w, h = im.size
    im.resize((w // 2, h // 2), Image.Resampling.BILINEAR).save(folder / "chelsea_small.jpg", quality=90)
    im.save(folder / "chelsea_q30.jpg", quality=30)
    im.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(folder / "chelsea_crop.jpg", quality=90)
    ImageOps.mirror(im).save(folder / "chelsea_mirror.png")
    astronaut = Image.open(sample_dir / "astronaut.png").convert("RGB")  # 512 x 512: two halves
    astronaut.crop((0, 0, 256, 512)).save(folder / "astronaut_left.png")
    astronaut.crop((256, 0, 512, 512)).save(folder / "astronaut_right.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_dir):
    return write_photos(tmp_path_factory.mktemp("dups") / "photos", sample_dir)


@pytest.fixture(scope="module")
def index(photos, default_model, tmp_path_factory):
    return Index.build(default_model, [photos], tmp_path_factory.mktemp("dups") / "index", workers=0, progress=False)


def names(group: dict) -> set[str]:
    return {Path(p).name for p in group["paths"]}


# --------------------------------------------------------------------------- the hash


def test_the_hash_is_imagehash_phash_bit_for_bit(sample_dir):
    imagehash = pytest.importorskip("imagehash")
    for name in ("chelsea", "coffee", "astronaut", "camera"):
        im = Image.open(sample_dir / f"{name}.png").convert("RGB")
        w, h = im.size
        centre = im.crop((round(w * 0.1), round(h * 0.1), w - round(w * 0.1), h - round(h * 0.1)))
        expected = [int(str(imagehash.phash(x)), 16) for x in (im, ImageOps.mirror(im), centre, ImageOps.mirror(centre))]
        assert list(phash(im)) == expected


def test_copies_are_near_in_the_hash_and_different_photos_far(photos):
    h = {p.name: np.array(phash(Image.open(p).convert("RGB")), np.uint64) for p in photos.iterdir()}
    for name in COPIES:
        assert copy_distance(h["chelsea.png"], h[name]) <= dup.COPY_BITS, name
    # the mirrored copy only by the mirror column; the crop only by the centre column
    assert distance(h["chelsea.png"][0], h["chelsea_mirror.png"][0]) > 16
    assert distance(h["chelsea.png"][0], h["chelsea_crop.jpg"][0]) > dup.COPY_BITS
    assert copy_distance(h["astronaut_left.png"], h["astronaut_right.png"]) > 2 * dup.COPY_BITS
    assert copy_distance(h["chelsea.png"], h["coffee.png"]) > 2 * dup.COPY_BITS


# --------------------------------------------------------------------------- the groups


def test_copies_apart_from_look_alikes_with_their_evidence(index):
    found = index.duplicates()
    copies = [g for g in found if g["kind"] == "copies"]
    assert [names(g) for g in copies] == [{"chelsea.png", *COPIES}]
    g = copies[0]
    assert g["threshold"] == {"bits": dup.COPY_BITS, "cosine": dup.COPY_COSINE}
    assert len(g["pairs"]) == 10  # every pair of five, each passing the threshold as shown
    for pair in g["pairs"]:
        assert pair["bits"] <= g["threshold"]["bits"] and pair["cosine"] >= g["threshold"]["cosine"]
        assert pair["same_bytes"] is False
    # the two halves of one photo are no copies of one another
    assert not any({"astronaut_left.png", "astronaut_right.png"} <= names(g) for g in copies)
    for g in found:
        if g["kind"] == "similar":
            assert all(p["cosine"] >= g["threshold"]["cosine"] for p in g["pairs"])


def test_same_bytes_are_copies(photos, index, default_model, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    shutil.copy(folder / "rocket.png", folder / "rocket_again.png")
    with Index.build(default_model, [folder], tmp_path / "index", workers=0, progress=False) as idx:
        group = next(g for g in idx.duplicates() if "rocket.png" in names(g))
    assert group["kind"] == "copies" and names(group) == {"rocket.png", "rocket_again.png"}
    assert group["pairs"][0]["same_bytes"] is True and group["pairs"][0]["bits"] == 0


def test_no_chain_of_look_alikes():
    """A ~ B and B ~ C pass, A ~ C does not: never one group (single linkage made it one)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32).astype(np.float32)
    vectors = np.stack([base] * 3 + [rng.standard_normal(32).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a = np.uint64(rng.integers(0, 2**63))
    flip = lambda h, bits: h ^ np.uint64(sum(1 << b for b in bits))  # noqa: E731
    b, c = flip(a, range(6)), flip(a, range(12))  # A-B 6 bits, B-C 6 bits, A-C 12 bits
    hashes = np.array([[h, ~h, h, ~h] for h in (a, b, c)] + [[~a, a, ~a, a]], np.uint64)
    got = dup.groups(vectors, hashes, exact=True, progress=False)
    copies = [g["members"] for g in got if g["kind"] == "copies"]
    assert copies == [[0, 1]]  # the nearer pair first; C is not pulled in through B
    # the same for similar photos: cosines 0.9 (A-B, B-C) and 0.62 (A-C)
    e1, e2 = np.eye(8, dtype=np.float32)[:2]
    t = np.arccos(0.9)
    vs = np.stack([e1, np.cos(t) * e1 + np.sin(t) * e2, np.cos(2 * t) * e1 + np.sin(2 * t) * e2])
    hashes = rng.integers(0, 2**63, (3, 4), dtype=np.int64).astype(np.uint64)  # far apart
    assert (copy_distance(hashes[:, None], hashes[None]) + 64 * np.eye(3) > dup.COPY_BITS).all()
    got = dup.groups(vs, hashes, exact=True, progress=False)
    assert [g["kind"] for g in got] == ["similar"] and got[0]["members"] == [0, 1]
    assert got[0]["pairs"] == [{"a": 0, "b": 1, "cosine": 0.9}]


def test_approximate_candidates_equal_all_pairs_on_a_small_set():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    # groups of about 4 (fewer than the neighbours asked), in a 48-dimensional subspace of 256
    # (as embeddings, whose variance lies in few directions: the 64 kept are enough)
    centres = rng.standard_normal((150, 48)).astype(np.float32)
    members = rng.integers(0, 150, 600)
    basis = np.linalg.qr(rng.standard_normal((256, 48)))[0].T.astype(np.float32)
    vectors = (centres[members] + 0.3 * rng.standard_normal((600, 48)).astype(np.float32)) @ basis
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16)
    approx = near_pairs(vectors, 0.85, exact=False, progress=False)
    exact = near_pairs(vectors, 0.85, exact=True, progress=False)
    assert len(exact[0]) > 100
    assert set(zip(approx[0].tolist(), approx[1].tolist())) == set(zip(exact[0].tolist(), exact[1].tolist()))
    # and the cosines are the exact ones
    order = lambda p: np.lexsort((p[1], p[0]))  # noqa: E731
    assert np.allclose(approx[2][order(approx)], exact[2][order(exact)], atol=1e-3)
    hashes = rng.integers(0, 2**63, (600, 4), dtype=np.int64).astype(np.uint64)
    approx, exact = (dup.groups(vectors, hashes, exact=e, progress=False) for e in (False, True))
    assert len(exact) > 50
    assert [(g["kind"], g["members"]) for g in approx] == [(g["kind"], g["members"]) for g in exact]
    assert np.allclose([p["cosine"] for g in approx for p in g["pairs"]],
                       [p["cosine"] for g in exact for p in g["pairs"]], atol=2e-4)  # (float32 sums in another order)


# --------------------------------------------------------------------------- an old index


def test_an_old_index_answers_by_embedding_then_update_adds_the_hash(photos, default_model, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    monkeypatch.setattr(signals, "SIGNALS", tuple(s for s in signals.SIGNALS if s.name != "phash"))
    old = Index.build(default_model, [folder], tmp_path / "index", workers=0, progress=False)
    monkeypatch.undo()
    assert "phash" not in old.signals
    notes = []
    found = old.duplicates(on_note=notes.append)
    assert notes == [dup.NO_HASH_NOTE] and "\n" not in notes[0]
    copies = [g for g in found if g["kind"] == "copies"]
    assert copies and all(g["threshold"] == {"cosine": dup.COPY_COSINE_ALONE} for g in copies)
    assert all("bits" not in p for g in copies for p in g["pairs"])
    embedding = np.asarray(old.embedding).copy()
    old.close()

    def no_forward(*a, **k):
        raise AssertionError("an update of unchanged files ran the model")

    monkeypatch.setattr(build, "forward", no_forward)
    new = Index.build(default_model, None, tmp_path / "index", update=True, workers=0, progress=False)
    assert "phash" in new.signals and np.array_equal(np.asarray(new.embedding), embedding)
    notes = []
    copies = [names(g) for g in new.duplicates(on_note=notes.append) if g["kind"] == "copies"]
    assert notes == [] and copies == [{"chelsea.png", *COPIES}]
    # the hashes an update added are those a fresh build computes
    monkeypatch.undo()
    with Index.build(default_model, [folder], tmp_path / "fresh", workers=0, progress=False) as fresh:
        by_path = lambda idx: {f["path"]: np.asarray(dup.file_rows(idx)[2])[k]  # noqa: E731
                               for k, f in enumerate(dup.file_rows(idx)[0])}
        a, b = by_path(new), by_path(fresh)
        assert a.keys() == b.keys() and all(np.array_equal(a[p], b[p]) for p in a)
    new.close()
