"""The search pages of the gallery (``create_app(index=...)``): JSON and pages, errors, the
files they serve and the ones they refuse, an app with an index only, and the demo's index.

The index is built once per session (shared with tests/test_browser_search.py) from
scikit-image photos, a flipped half-size copy and a byte copy, a 3 s clip, and a link to a
photo outside the indexed folder, with tests/test_index.py's random ResNet-18 on 64 px inputs.
"""
from __future__ import annotations

import html
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.index import Index  # noqa: E402
from convscope.web import create_app  # noqa: E402
from convscope.web.finder import Roots, clock, close_matches  # noqa: E402

from tests.test_index import write_clip  # noqa: E402
from tests.test_web import raw_get, tiny_model  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


# --------------------------------------------------------------------------- a small index


def search_model():
    """tests/test_index.py's random ResNet-18 on 64 px inputs, normalized with a tenth of its std:
    a random net spreads its probability over all 1,000 classes, below keyword search's cut-off;
    with inputs ten times larger (ReLUs, batch norm at its initial statistics and pooling are
    all linear for positive scales) each photo's top class holds most of it, as with a trained
    model. Its weights stay the seeded random ones, which the index's own model is made from."""
    from convscope.models import Preprocessing, load_model

    prep = Preprocessing((64, 64), 64, "bilinear", (0.485, 0.456, 0.406), (0.0229, 0.0224, 0.0225))
    return load_model("torchvision:resnet18", pretrained=False, device="cpu", preprocessing=prep)


def search_library(factory) -> Path:
    """``photos/`` (four scikit-image photos, chelsea flipped at half size, a byte copy of
    rocket, a clip, and ``link.png``: a link to ``outside/secret.png``) indexed into ``index/``;
    built once per session in its base folder, whichever test module asks first."""
    import skimage.data

    root = factory.getbasetemp() / "web-search"
    if (root / "index" / "index.sqlite").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    photos, outside = root / "photos", root / "outside"
    photos.mkdir(parents=True)
    outside.mkdir()
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()[::2, ::2]).save(photos / f"{name}.png")
    cat = Image.open(photos / "chelsea.png")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((cat.width // 2, cat.height // 2)).save(
        photos / "chelsea_flip_small.jpg", quality=85)
    shutil.copy(photos / "rocket.png", photos / "rocket_copy.png")
    write_clip(photos / "clip.mp4")
    Image.fromarray(skimage.data.coins()[::2, ::2]).save(outside / "secret.png")
    os.symlink(outside / "secret.png", photos / "link.png")
    Index.build(search_model(), [photos], root / "index", batch_size=8, workers=0, progress=False).close()
    return root


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return search_library(tmp_path_factory)


@pytest.fixture(scope="module")
def index(library):
    with Index.open(library / "index") as idx:
        yield idx


@pytest.fixture(scope="module")
def client(library):
    with TestClient(create_app(index=library / "index", model=search_model()), headers={"Origin": "http://testserver"}) as c:
        yield c


def result_named(data: dict, name: str) -> dict:
    return next(r for r in data["results"] if Path(r["path"]).name == name)


# --------------------------------------------------------------------------- JSON


def test_keyword_results_have_thumbnail_score_why_and_links(client, index, library):
    data = client.get("/api/search", params={"q": "entity"}).json()  # every class is an entity
    assert data["mode"] == "keyword" and data["query"] == {"q": "entity", "min_score": 0.2, "sort": "score", "top": 40}
    files = {Path(r["path"]).name for r in data["results"]}
    assert files == {*(f"{n}.png" for n in PHOTOS), "chelsea_flip_small.jpg", "rocket_copy.png", "clip.mp4", "link.png"}
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.2
    cat = result_named(data, "chelsea.png")
    row = index.file_of(library / "photos" / "chelsea.png")["first_row"]
    assert cat["entry"] == row and cat["name"] == "chelsea.png" and cat["kind"] == "photo" and cat["time"] is None
    assert cat["why"][0]["label"] == index.labels[int(index.top_class[row][0])]
    assert all(w["path"][0] == w["label"] and w["path"][-1] == "entity" for w in cat["why"])
    assert cat["score"] == pytest.approx(sum(w["probability"] for w in cat["why"]), abs=1e-3)
    assert cat["thumb"] == f"/thumbs/{row}.jpg" and cat["file"] == f"/files/{cat['file_id']}/chelsea.png"
    assert cat["explain"] == f"/explain/{row}.jpg?class={cat['why'][0]['index']}"
    assert cat["like"] == "/search?like=" + str(library / "photos" / "chelsea.png").replace("/", "%2F")
    # the files behind the links
    thumb = client.get(cat["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == index.thumbnail(row)
    original = client.get(cat["file"])
    assert original.status_code == 200 and original.content == (library / "photos" / "chelsea.png").read_bytes()
    cam = client.get(cat["explain"])
    assert cam.status_code == 200 and Image.open(io.BytesIO(cam.content)).size == (64, 64)  # the model's view
    assert client.get(cat["explain"]).content == cam.content  # cached


def test_video_hits_are_one_segment_with_its_time(client, index, library):
    data = client.get("/api/search", params={"q": "entity"}).json()
    clip = result_named(data, "clip.mp4")
    assert clip["kind"] == "video" and (clip["time"], clip["end"]) == (0.0, 2.0) and clip["when"] == "0:00–0:02"
    assert clip["file"].endswith("/clip.mp4") and "#t=" not in clip["file"]  # from its start (0 s)
    first = index.file_of(library / "photos" / "clip.mp4")["first_row"]
    assert first <= clip["entry"] < first + 3
    assert client.get(clip["thumb"]).content == index.thumbnail(clip["entry"])
    assert client.get(clip["explain"]).status_code == 200  # the Grad-CAM of a frame
    assert clock(75.0) == "1:15" and clock(3725.5) == "1:02:05.5" and clock(None) is None


def test_more_like_this_leaves_the_photo_out_and_ranks_by_cosine(client, index, library):
    path = str(library / "photos" / "chelsea.png")
    data = client.get("/api/search", params={"like": path, "top": 3}).json()
    assert data["mode"] == "like" and data["query"]["like"] == path and data["count"] == 3 and data["more"]
    assert path not in [r["path"] for r in data["results"]]
    expect = [r.path for r in index.like(path, top=3)]
    assert [r["path"] for r in data["results"]] == expect
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert all(r["why"] == [] and r["top"]["label"] for r in data["results"])
    # a video's frame: the one nearest t
    clip = client.get("/api/search", params={"like": str(library / "photos" / "clip.mp4"), "t": "1.9"}).json()
    first = index.file_of(library / "photos" / "clip.mp4")["first_row"]
    assert clip["query"]["thumb"] == f"/thumbs/{first + 2}.jpg" and clip["query"]["t"] == 1.9


def test_unit_results_have_boxes_and_their_picture(client, index):
    data = client.get("/api/search", params={"unit": "layer1:5", "top": 4}).json()
    assert data["mode"] == "unit" and data["query"]["unit"] == "layer1:5" and data["count"] == 4
    expect = index.unit("layer1", 5, top=4, model=search_model())
    assert [r["entry"] for r in data["results"]] == [r.entry for r in expect]
    assert [r["box"] for r in data["results"]] == [list(r.box) for r in expect]
    hit = next(r for r in data["results"] if not r["path"].endswith("link.png"))
    assert hit["explain"] == f"/explain/{hit['entry']}.jpg?unit=layer1%3A5"
    picture = client.get(hit["explain"])
    assert picture.status_code == 200 and Image.open(io.BytesIO(picture.content)).size == (64, 64)


def test_a_units_place_on_one_entry_is_the_unit_searchs(index):
    """Index.unit_at (what the picture of a unit result draws) gives each result's own position
    and box, and the same one-line error for a unit the layer lacks."""
    model = search_model()
    for r in index.unit("layer1", 5, top=3, model=model):
        assert index.unit_at("layer1", 5, r.entry, model=model) == (tuple(r.position), r.box)
    with pytest.raises(ValueError, match="layer 'layer1' has units 0..63, got 64"):
        index.unit_at("layer1", 64, 0, model=model)


def test_the_start_page_json_says_what_the_index_holds(client):
    data = client.get("/api/search").json()
    assert data["mode"] == "home" and data["index"]["photos"] == 7 and data["index"]["videos"] == 1
    assert [layer["name"] for layer in data["layers"]] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert data["suggestions"] and all(isinstance(w, str) for w in data["suggestions"])


def test_duplicates_mark_the_exact_copy(client, index):
    data = client.get("/api/duplicates").json()
    assert data["files"] == 8 and data["groups"]
    assert [g["paths"] for g in data["groups"]] == [g["paths"] for g in index.duplicates()]
    group = next(g for g in data["groups"] if any(f["path"].endswith("rocket_copy.png") for f in g["files"]))
    names = [Path(f["path"]).name for f in group["files"]]
    assert names.index("rocket.png") < names.index("rocket_copy.png")  # index order: the copy comes after
    copy = group["files"][names.index("rocket_copy.png")]
    assert copy["copy_of"] == "rocket.png" and -1 <= copy["cosine"] <= 1
    assert all(f["copy_of"] is None for f in group["files"][1:] if not f["path"].endswith("rocket_copy.png"))
    assert copy["thumb"] and client.get(copy["thumb"]).status_code == 200


def test_albums_hold_every_file_once(client, index):
    data = client.get("/api/albums").json()
    assert [a["album"] for a in data["albums"]] == [a["album"] for a in index.albums()]
    everything = [p for a in data["albums"] for p in a["paths"]]
    assert sorted(everything) == sorted(f["path"] for f in index.files().values())
    first = data["albums"][0]
    assert first["count"] == len(first["paths"]) and len(first["files"]) == min(8, first["count"])
    one = client.get("/api" + first["url"]).json()
    assert one["album"] == first["album"] and [f["path"] for f in one["files"]] == first["paths"]
    r = client.get("/api/albums/no%20such%20album")
    assert r.status_code == 404 and "unknown album 'no such album'" in r.json()["error"]


# --------------------------------------------------------------------------- pages


def test_search_page_shows_the_grid_and_a_search_box(client):
    r = client.get("/search", params={"q": "entity"})
    assert r.status_code == 200
    assert r.text.count('class="hit"') == 8 and r.text.count(">more like this</a>") == 7  # not the link's
    assert '<form class="search-box" role="search" method="get" action="/search">' in r.text
    assert 'value="entity"' in r.text and "8 results for “entity”" in r.text
    assert "not served" in r.text  # the link out of the indexed folder has no thumbnail
    assert "▶ 0:00–0:02" in r.text and " &gt; entity</span>" in r.text


def test_index_only_home_is_the_search_page_and_atlas_pages_say_why_not(client):
    home = client.get("/")
    assert home.status_code == 200 and "Search 7 photos and 1 video" in home.text and 'class="search-box"' in home.text
    assert "Try a photo" not in home.text  # uploads need an atlas
    for url in ("/layers/features", "/api/atlas", "/image", "/atlas/x.png", "/sources/a/0/0.jpg", "/health",
                "/api/health/features"):
        r = client.get(url)
        assert r.status_code == 404, url
        text = r.json()["error"] if url.startswith("/api/") else r.text
        assert "this server has no atlas" in text, url
    assert client.post("/image", content=b"x").status_code == 404
    listing = client.get("/api").json()
    assert "search" in listing and "duplicates" in listing and "atlas" not in listing


def test_duplicates_and_albums_pages(client):
    dup = client.get("/duplicates")
    assert dup.status_code == 200 and "Group 1" in dup.text
    assert 'title="the same bytes as rocket.png">exact copy</span>' in dup.text
    albums = client.get("/albums")
    assert albums.status_code == 200
    assert albums.text.count('class="album"') == len(client.get("/api/albums").json()["albums"])
    first = client.get("/api/albums").json()["albums"][0]
    page = client.get(first["url"])
    assert page.status_code == 200 and page.text.count('class="card"') == first["count"]


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"q": "dgo"}, 400, "Close matches: dingo"),
        ({"q": "dog cat"}, 400, "'dog, cat'"),
        ({"q": "?!"}, 400, "holds no word"),
        ({"q": "cat", "min_score": "2"}, 400, "min_score must be a number from 0 to 1"),
        ({"q": "cat", "min_score": "lots"}, 400, "min_score must be a number"),
        ({"q": "cat", "sort": "size"}, 400, "sort must be one of score, date"),
        ({"q": "cat", "top": "0"}, 400, "top must be a whole number from 1 to 1000"),
        ({"q": "cat", "like": "/x.png"}, 400, "not q and like"),
        ({"unit": "layer1"}, 400, "LAYER:UNIT"),
        ({"unit": "layer11:3"}, 400, "Close matches: layer1"),
        ({"unit": "layer1:999"}, 400, "units 0..63"),
        ({"like": "/etc/passwd"}, 404, "is not a file of this index"),
        ({"like": "photos/chelsea.png"}, 404, "is not a file of this index"),
    ],
)
def test_bad_searches_are_4xx_with_a_reason_as_json_and_on_the_page(client, params, status, words):
    r = client.get("/api/search", params=params)
    assert r.status_code == status and words in r.json()["error"]
    page = client.get("/search", params=params)
    assert page.status_code == status and '<p class="error" role="alert">' in page.text
    assert words.replace("'", "&#39;") in page.text


def test_an_unknown_word_offers_its_close_matches_as_links(client):
    page = client.get("/search", params={"q": "dgo"})
    assert page.status_code == 400
    assert '<a href="/search?q=dingo">dingo</a>' in page.text and '<a href="/search?q=dog">dog</a>' in page.text
    assert close_matches("unknown word 'x'. Close matches: a b, c. Search words are ...") == ["a b", "c"]
    assert close_matches("no ImageNet class is both 'dog' and 'cat'") == []


# --------------------------------------------------------------------------- files: only inside the roots


def test_a_file_reached_through_a_link_out_of_the_roots_is_refused(client, index, library):
    link = library / "photos" / "link.png"
    record = index.file_of(link)
    assert record is not None  # indexed, and found by searches ...
    row = record["first_row"]
    hit = result_named(client.get("/api/search", params={"q": "entity"}).json(), "link.png")
    assert hit["thumb"] is None and hit["file"] is None and hit["explain"] is None and hit["like"] is None
    # ... but none of its pixels are handed out
    for url in (f"/thumbs/{row}.jpg", f"/files/{record['id']}/link.png", f"/explain/{row}.jpg?class=0"):
        r = client.get(url)
        assert r.status_code == 403 and "outside the folders this index was built from" in r.text, url
    r = client.get("/api/search", params={"like": str(link)})
    assert r.status_code == 403 and "outside the folders" in r.json()["error"]
    # "..": the path is normalized first, and what it names is not in the index
    sneaky = str(library / "photos" / ".." / "outside" / "secret.png")
    assert client.get("/api/search", params={"like": sneaky}).status_code == 404


@pytest.mark.parametrize(
    "raw",
    [
        "/files/1/../../outside/secret.png",
        "/files/1/..%2f..%2foutside%2fsecret.png",
        "/files/%2e%2e/outside/secret.png",
        "/files/..%2f..%2foutside/secret.png",
        "/files//etc/passwd",
        "/files/1//etc/passwd",
        "/files/1/%2fetc%2fpasswd",
        "/files/-1/secret.png",
        "/files/999/secret.png",
        "/files/1/secret.png",
        "/thumbs/..%2f1.jpg",
        "/thumbs/-1.jpg",
        "/thumbs/999.jpg",
        "/explain/../1.jpg?class=0",
        "/explain/999.jpg?class=0",
    ],
)
def test_no_path_reaches_a_file_outside_the_index(client, library, raw):
    secret = (library / "outside" / "secret.png").read_bytes()
    status, body, _ = raw_get(client.app, raw)
    assert 400 <= status < 500, (raw, status)
    assert body != secret and b"PNG" not in body[:8] and b"root:" not in body


def test_pictures_of_why_check_their_arguments(client, index):
    row = 0
    for url, words in ((f"/explain/{row}.jpg", "give class=INDEX"), (f"/explain/{row}.jpg?class=1000", "from 0 to 999"),
                       (f"/explain/{row}.jpg?class=x", "class must be a class index"),
                       (f"/explain/{row}.jpg?class=1&unit=layer1:0", "give class=INDEX"),
                       (f"/explain/{row}.jpg?unit=layer1:64", "units 0..63")):
        r = client.get(url)
        assert r.status_code == 400 and words in r.text, url


def test_roots_resolve_links_and_read_globs_and_lists(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.jpg").write_bytes(b"x")
    (tmp_path / "photos" / "a.jpg").write_bytes(b"a")
    os.symlink(tmp_path / "elsewhere" / "x.jpg", tmp_path / "photos" / "sub" / "x.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "alias")
    roots = Roots([str(tmp_path / "photos")])
    assert roots.allows(str(tmp_path / "photos" / "a.jpg")) and roots.allows(str(tmp_path / "photos" / "gone.jpg"))
    assert not roots.allows(str(tmp_path / "photos" / "sub" / "x.jpg"))  # a link out
    assert not roots.allows(str(tmp_path / "elsewhere" / "x.jpg"))
    assert not roots.allows(str(tmp_path / "photosx" / "a.jpg"))  # a prefix is not a folder
    assert Roots([str(tmp_path / "alias")]).allows(str(tmp_path / "photos" / "a.jpg"))  # the same folder
    glob = Roots([str(tmp_path / "photos" / "*.jpg")])
    assert glob.allows(str(tmp_path / "photos" / "a.jpg")) and not glob.allows(str(tmp_path / "elsewhere" / "x.jpg"))
    single = Roots([str(tmp_path / "photos" / "a.jpg")])
    assert single.allows(str(tmp_path / "photos" / "a.jpg")) and not single.allows(str(tmp_path / "photos" / "b.jpg"))
    listed = Roots(["@list.txt"])
    assert listed.allows(str(tmp_path / "elsewhere" / "x.jpg"))
    assert not listed.allows(str(tmp_path / "photos" / "sub" / "x.jpg"))
    assert roots.display(str(tmp_path / "photos" / "sub" / "y.jpg")) == "sub/y.jpg"
    two = Roots([str(tmp_path / "photos"), str(tmp_path / "elsewhere")])
    assert two.display(str(tmp_path / "photos" / "a.jpg")) == "photos/a.jpg"


# --------------------------------------------------------------------------- apps and models


def test_an_app_needs_an_atlas_or_an_index():
    with pytest.raises(ValueError, match="an atlas .* an index"):
        create_app()


def test_atlas_and_index_side_by_side(web_atlas_dir, library):
    with TestClient(create_app(web_atlas_dir, model=tiny_model(), index=library / "index")) as c:
        home = c.get("/")
        assert home.status_code == 200 and "<h1>TinyNet</h1>" in home.text  # the atlas's home ...
        assert 'class="search-box"' in home.text and "Try a photo" in home.text  # ... with a search box
        unit = c.get("/layers/features.1/units/0")
        assert unit.status_code == 200 and 'class="search-box"' in unit.text
        assert c.get("/api/search", params={"q": "entity"}).json()["count"] == 8
        # the atlas's TinyNet is not the index's model: its pictures use the index's own
        hit = c.get("/api/search", params={"q": "entity"}).json()["results"][0]
        assert c.get(hit["explain"]).status_code == 200
        listing = c.get("/api").json()
        assert "atlas" in listing and "search" in listing


def test_an_atlas_only_app_has_no_search(web_atlas_dir):
    with TestClient(create_app(web_atlas_dir, model=tiny_model())) as c:
        assert 'class="search-box"' not in c.get("/").text
        r = c.get("/api/search", params={"q": "cat"})
        assert r.status_code == 404 and "this server has no index" in r.json()["error"]
        assert "no index" in c.get("/duplicates").text


def test_pictures_of_why_are_503_when_the_index_model_cannot_be_had(library, tmp_path):
    from convscope.web.search_pages import SearchPages
    from convscope.web.site import Site

    site = Site(page=None, workers=None)
    with Index.open(library / "index") as idx:
        pages = SearchPages(site, idx, model=tiny_model())  # not the index's model; it has random weights
        assert pages.model().spec == "torchvision:resnet18" and pages.model() is pages.model()
        idx.meta = {**idx.meta, "model": {**idx.meta["model"], "spec": "no-such-model", "weights": "user module"}}
        with pytest.raises(Exception) as caught:
            SearchPages(site, idx).model()
        assert getattr(caught.value, "status", None) == 503 and "cannot be loaded" in str(caught.value)


def test_the_gallery_gets_back_the_model_an_index_records(library, tmp_path):
    """Served with no model, the pictures of why use the model the index records: its seeded
    random weights with its own preprocessing (the library's index), or its weights file
    (``convscope index --weights FILE``); never the spec's pretrained weights."""
    import torch

    from convscope.models import load_model
    from convscope.web.search_pages import SearchPages

    def served_model(client):
        return next(g for g in client.app.state.groups if isinstance(g, SearchPages)).model()

    with TestClient(create_app(index=library / "index")) as c:
        hit = next(r for r in c.get("/api/search", params={"unit": "layer1:5"}).json()["results"] if r["explain"])
        assert c.get(hit["explain"]).status_code == 200
        model = served_model(c)
        assert model.weights == "random-init (seed 0)" and model.preprocessing == search_model().preprocessing

    weights = tmp_path / "tuned.pt"
    state = search_model().module.state_dict()
    torch.save({k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()}, weights)
    tuned = load_model("torchvision:resnet18", weights=weights, device="cpu", preprocessing=search_model().preprocessing)
    Index.build(tuned, [library / "photos" / "chelsea.png"], tmp_path / "index", workers=0, progress=False).close()
    with TestClient(create_app(index=tmp_path / "index")) as c:
        hit = c.get("/api/search", params={"unit": "layer1:5", "top": 1}).json()["results"][0]
        assert c.get(hit["explain"]).status_code == 200
        model = served_model(c)
        assert model.weights == str(weights) and torch.equal(model.module.conv1.weight, tuned.module.conv1.weight)
        weights.unlink()  # loaded once; a server started now says why it cannot draw
    with TestClient(create_app(index=tmp_path / "index")) as c:
        r = c.get(hit["explain"])
        assert r.status_code == 503 and "tuned.pt', which is no longer there" in html.unescape(r.text)


# --------------------------------------------------------------------------- the demo's index


def test_demo_index_builds_once_updates_and_reuses(tmp_path, monkeypatch):
    """ensure_demo_index with a tiny recipe over a private sample folder: built, reused, updated
    when a photo comes, rebuilt for another model."""
    from convscope.web import demo

    samples = tmp_path / "samples"
    samples.mkdir()
    for name, grey in (("chelsea", 200), ("coffee", 40)):
        Image.fromarray(np.full((40, 40, 3), grey, np.uint8)).save(samples / f"{name}.png")
    monkeypatch.setattr("convscope.data.sample_photos", lambda dest=None: sorted(samples.glob("*.png")))
    recipe = {"model": "torchvision:resnet18", "pretrained": False}
    lines = []
    folder = demo.ensure_demo_index(tmp_path / "demo", recipe=recipe, echo=lines.append)
    assert folder == tmp_path / "demo" / "index" and any("building the demo index" in line for line in lines)
    with Index.open(folder) as idx:
        assert idx.info()["photos"] == 2 and idx.meta["inputs"] == [str(samples)]
    stamp = json.loads((tmp_path / "demo" / "demo-index.json").read_text())
    assert stamp["model"] == "torchvision:resnet18" and stamp["complete"] is True
    lines.clear()
    demo.ensure_demo_index(tmp_path / "demo", recipe=recipe, echo=lines.append)
    assert any("reusing the demo index" in line for line in lines)
    mine = tmp_path / "mine"
    mine.mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(mine / "leaf.png")
    lines.clear()
    demo.ensure_demo_index(tmp_path / "demo", [mine], recipe=recipe, echo=lines.append)
    assert any("updating the demo index" in line for line in lines)
    with Index.open(folder) as idx:
        assert idx.info()["photos"] == 3 and idx.file_of(mine / "leaf.png") is not None
    # a build that stopped (no stamp, a .partial folder, nothing committed) is resumed; another
    # model starts again. (A .partial folder beside a committed index without a database of its
    # own is what a finished build left: convscope.stores.state reads it as complete.)
    (tmp_path / "demo" / "demo-index.json").unlink()
    shutil.rmtree(folder)
    (folder / ".partial").mkdir(parents=True)
    lines.clear()
    demo.ensure_demo_index(tmp_path / "demo", [mine], recipe=recipe, echo=lines.append)
    assert any("(resuming the interrupted build)" in line for line in lines) and not (folder / ".partial").exists()
    lines.clear()
    demo.ensure_demo_index(tmp_path / "demo", [mine], recipe={"model": "torchvision:alexnet", "pretrained": False},
                           echo=lines.append)
    assert any("building the demo index" in line for line in lines)
    with Index.open(folder) as idx:
        assert idx.meta["model"]["spec"] == "torchvision:alexnet" and idx.info()["photos"] == 3


def test_serve_command_takes_an_index(library, monkeypatch):
    from click.testing import CliRunner

    from convscope.cli import main
    from convscope.cli import serve as serve_cli

    served = []
    monkeypatch.setattr(serve_cli, "_run_server", lambda app, host, port: served.append(app))
    runner = CliRunner()
    r = runner.invoke(main, ["serve"])
    assert r.exit_code == 2 and "give an ATLAS folder, --index INDEX, --evolve RUN, or some of them" in r.output
    r = runner.invoke(main, ["serve", "--index", str(library / "nothing")])
    assert r.exit_code == 1 and r.output.startswith("error: no index folder") and not served
    r = runner.invoke(main, ["serve", "--index", str(library / "index")])
    assert r.exit_code == 0, r.output
    with TestClient(served[0]) as c:
        assert "Search 7 photos" in c.get("/").text
