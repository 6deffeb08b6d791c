"""Albums (:mod:`convscope.index.albums`): covers are an album's most typical members (a planted
outlier first by name is not one), places and times take what no category holds, and albums of
a store too large for all pairs finish with bounded memory."""
from __future__ import annotations

import re
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from convscope.index import Index
from convscope.index import albums as A
from convscope.index.store import IndexStore
from convscope.vocab import album_for

from tests.synthetic import synthetic_index
from tests.test_browse import browse_library, with_places, without_places

CATS = "animals > cats"


def everything_once(albums: list[dict], files: int) -> None:
    paths = [p for a in albums if a["kind"] != "concept" for p in a["paths"]]
    assert len(paths) == len(set(paths)) == files


def test_covers_are_the_most_typical_members_not_the_first_by_name(tmp_path, default_model):
    cat = Image.fromarray(skimage.data.chelsea())
    photos = tmp_path / "photos"
    photos.mkdir()
    # the first by name: a blurred cat, which the network still files under cats, with less certainty
    cat.filter(ImageFilter.GaussianBlur(8)).save(photos / "a_blurred.jpg", quality=90)
    cat.save(photos / "b_cat.png")
    ImageOps.grayscale(cat).save(photos / "c_gray.png")
    cat.rotate(90, expand=True).save(photos / "d_turned.png")
    ImageEnhance.Contrast(cat).enhance(0.3).save(photos / "e_flat.png")
    cat.crop((0, 150, 451, 300)).save(photos / "f_bottom.png")
    Image.fromarray(skimage.data.coffee()).save(photos / "g_coffee.png")
    with Index.build(default_model, [photos], tmp_path / "index", workers=0, progress=False) as index:
        albums = index.albums()
        everything_once(albums, 7)
        cats = next(a for a in albums if a["album"] == CATS)
        assert cats["kind"] == "category" and Path(cats["paths"][0]).name == "a_blurred.jpg"
        # a plain loop: each member's probability on the album's classes
        mass = {}
        for f in index.files().values():
            row = f["first_row"]
            mass[f["path"]] = sum(float(p) for c, p in zip(index.top_class[row], index.top_prob[row])
                                  if c >= 0 and album_for(int(c)) == CATS)
        ranked = sorted(cats["paths"], key=lambda p: -mass[p])
        assert cats["covers"] == ranked[:A.COVERS]
        assert "a_blurred.jpg" not in {Path(p).name for p in cats["covers"]}
        assert mass[cats["paths"][0]] < min(mass[p] for p in cats["covers"])
        assert cats["why"].startswith("the most probability on the album's classes (")
        assert cats["why"].endswith(", ".join(f"{mass[p]:.2f}" for p in cats["covers"]) + ")")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return browse_library(tmp_path_factory)


def by_name(albums: list[dict]) -> dict[str, set[str]]:
    return {a["album"]: {Path(p).name for p in a["paths"]} for a in albums}


def test_places_and_times_take_what_no_category_holds(library, tmp_path):
    placed = IndexStore.open(with_places(library / "index", tmp_path / "placed"))
    old = IndexStore.open(without_places(library / "index", tmp_path / "old"))
    try:
        # no category (the random network of these photos is sure of its primates: asked for
        # all of a photo's probability, which the stored top classes never quite hold), no look-alikes
        free = {"confidence": 1.0, "loose": None, "cluster_distance": 0.0}
        alone = A.albums(old, **free, min_size=100)
        assert by_name(alone) == {"other": {f["path"].rsplit("/", 1)[-1] for f in old.files().values()}}
        timed = A.albums(old, **free)
        everything_once(timed, 8)
        assert {a["album"]: a["kind"] for a in timed} == {"times > 2015 > May": "time", "times > 2008 > August": "time",
                                                          "other": "other"}
        assert by_name(timed)["times > 2015 > May"] == {"astronaut.jpg", "clock.jpg", "chelsea.jpg"}
        # by the date taken only: the two PNGs dated by their file's time stay apart, and July's one coffee
        assert by_name(timed)["other"] == {"coffee.jpg", "camera.png", "moon.png"}
        where = A.albums(placed, **free)
        everything_once(where, 8)
        assert by_name(where)["places > France > Lyon"] == {"astronaut.jpg", "clock.jpg", "chelsea.jpg"}
        assert len(by_name(where)["places > Italy"]) == 2  # two cities of one photo each: their country
        assert by_name(where)["other"] == {"coffee.jpg", "camera.png", "moon.png"}
        assert {a["kind"] for a in where} == {"place", "other"}
        for a in where:  # covers: members nearest the album's mean embedding, the why says so
            assert set(a["covers"]) <= set(a["paths"]) and len(a["covers"]) == min(A.COVERS, len(a["paths"]))
            assert a["why"].startswith("the nearest to the album's mean embedding")
    finally:
        placed.close()
        old.close()


def test_albums_of_a_store_too_large_for_all_pairs_finish_with_bounded_memory(tmp_path, monkeypatch):
    n = 12000
    store = IndexStore.open(synthetic_index(tmp_path / "big", n, groups=40, lead=0.2))
    try:
        monkeypatch.setattr(A, "AGGLOMERATIVE_LIMIT", 2000)  # the k-means tree, as past 5,000 leftovers
        tracemalloc.start()
        albums = A.albums(store, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        everything_once(albums, n)
        kinds = Counter(a["kind"] for a in albums)
        assert kinds["look-alike"] >= 20 and kinds["time"] >= 100 and kinds["place"] == 5
        # all pairs of the leftovers in float32 would take n^2 * 4 bytes (576 MB); the tree a few MB a leaf
        assert peak < 100 * 2**20, peak
        # the planted look-alikes: most of each group together in one album
        vectors = A._vectors(store, np.arange(n), np.ones(n, np.int64))
        album_of = {p: a["album"] for a in albums for p in a["paths"]}
        alike = [a for a in albums if a["kind"] == "look-alike"]
        for a in alike[:10]:
            rows = [int(Path(p).stem) for p in a["paths"]]
            v = vectors[rows]
            assert float((v @ v.mean(0)).min()) > 0.5 * float(np.linalg.norm(v.mean(0)))
        assert sum(len(a["paths"]) for a in alike) >= 0.8 * n / 40
        assert album_of  # (every path has its album)
    finally:
        store.close()


def test_the_albums_pages_show_covers_first_with_why(library, tmp_path):
    from starlette.testclient import TestClient

    from convscope.web import create_app
    from tests.test_web_search import search_model

    placed = with_places(library / "index", tmp_path / "placed")
    with TestClient(create_app(index=placed, model=search_model()), headers={"Origin": "http://testserver"}) as client:
        listed = client.get("/api/albums").json()
        assert sum(a["count"] for a in listed["albums"] if a["kind"] != "concept") == listed["files"] == 8
        for a in listed["albums"]:
            shown = [f["path"] for f in a["files"]]  # the preview: the covers first, then the others, up to 8
            assert shown[:len(a["covers"])] == a["covers"] and len(shown) == min(8, a["count"]) and a["why"]
        lyon = max(listed["albums"], key=lambda a: a["count"])
        assert lyon["count"] >= 2
        one = client.get("/api" + lyon["url"]).json()
        assert one["covers"] == lyon["covers"] and set(one["paths"]) == {f["path"] for f in one["files"]}
        page = client.get(lyon["url"]).text
        assert f"Covers: {lyon['why']}." in page.replace("&#39;", "'")
        import markupsafe

        cards = re.split('class="card[ "]', page)[1:]
        names = [str(markupsafe.escape(f["name"])) for f in lyon["files"]]  # the covers' cards
        assert [next(k for k, c in enumerate(cards) if name in c) for name in names] == list(range(len(names)))
