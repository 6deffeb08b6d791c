"""The gallery server: pages, JSON endpoints, uploads and their safety, and the static export."""
from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.web import create_app, export_static  # noqa: E402

from tests.tiny import TinyNet, small  # noqa: E402


# --------------------------------------------------------------------------- a tiny real atlas


LAYERS = {"features.1": 8, "features": 6}
#: What a page of the gallery sends with its writes (TestClient's base URL is http://testserver).
SAME_ORIGIN = {"Origin": "http://testserver"}
FEATVIS = {("features.1", 0), ("features.1", 2), ("features", 1)}


def tiny_model():
    """The same seeded :class:`TinyNet` every call, as a LoadedModel."""
    from convscope.models import Preprocessing, load_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyNet(*small())
    prep = Preprocessing((64, 64), 64, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(net, preprocessing=prep, labels=[f"thing {i}" for i in range(10)], device="cpu")




def tiny_atlas_dir(tmp_path_factory) -> Path:
    """A real atlas (convscope.atlas.build) of :class:`TinyNet` over three scikit-image photos,
    two crop levels, top 3, with feature visualizations (convscope.featvis) for three units.
    Built once per test session (the ``web_atlas_dir`` fixture in conftest.py) and shared by the
    HTTP and browser tests."""
    import skimage.data

    from convscope import featvis
    from convscope.atlas import Atlas, build

    photos = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()[::3, ::3]).save(photos / f"{name}.png")
    out = tmp_path_factory.mktemp("tiny") / "atlas"
    model = tiny_model()
    atlas = build(model, [str(photos)], out, layers=list(LAYERS), top=3, crops="1,2", progress=False)
    for layer in LAYERS:
        units = sorted(u for ln, u in FEATVIS if ln == layer)
        result = featvis.render(model, layer, units, steps=8, size=32, progress=False)
        for i, u in enumerate(units):
            png = out.parent / f"fv-{layer}-{u}.png"
            result.image(i).save(png)
            atlas.set_featvis(layer, u, png)
    atlas.close()
    Atlas.open(out).close()
    return out


@pytest.fixture(scope="module")
def atlas_dir(web_atlas_dir):
    return web_atlas_dir


@pytest.fixture(scope="module")
def atlas(atlas_dir):
    from convscope.atlas import Atlas

    with Atlas.open(atlas_dir) as a:
        yield a


@pytest.fixture(scope="module")
def client(atlas_dir):
    # fill=False: this atlas is the session's, shared by the tests (tests/test_fill.py fills copies)
    app = create_app(atlas_dir, model=tiny_model(), max_upload_bytes=200_000, fill=False)
    # the gallery's own origin: its pages send it with every POST (a write without it is refused)
    with TestClient(app, raise_server_exceptions=True, headers=SAME_ORIGIN) as c:
        yield c


def png_bytes(size=(80, 60), colour=(200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def raw_get(app, raw_path: str) -> tuple[int, bytes, dict]:
    """GET ``raw_path`` exactly as written (no client-side ``..`` clean-up), as uvicorn would pass
    it: ``path`` percent-decoded, ``raw_path`` as sent."""
    import urllib.parse

    import anyio

    async def go():
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        }
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], body, {k.decode(): v.decode() for k, v in start["headers"]}

    return anyio.run(go)


# --------------------------------------------------------------------------- pages and JSON


def test_home_json_lists_layers_in_network_order_with_geometry(client, atlas):
    data = client.get("/api/atlas").json()
    assert [layer["name"] for layer in data["layers"]] == list(LAYERS)
    assert [layer["channels"] for layer in data["layers"]] == list(LAYERS.values())
    assert [layer["receptive_field"] for layer in data["layers"]] == [atlas.layer(n)["receptive_field"] for n in LAYERS]
    assert data["images"]["scanned"] == 3 and data["images"]["skipped"] == 0
    assert data["settings"]["top_k"] == 3 and data["settings"]["crops"]["levels"] == [1, 2]
    assert data["model"]["spec"] == "TinyNet" and data["complete"] is True
    html = client.get("/").text
    assert 'href="/layers/features.1"' in html and 'href="/layers/features"' in html
    assert "levels 1, 2" in html and "user module" in html


def test_layer_json_has_every_unit_with_its_files_and_neighbours(client, atlas):
    data = client.get("/api/layers/features.1").json()
    assert [u["unit"] for u in data["units"]] == list(range(8))
    assert data["prev"] is None and data["next"] == "features"
    for u in (0, 3):
        top = atlas.examples("features.1", u)[0]
        assert data["units"][u]["patch"] == top["patch"] and data["units"][u]["deconvnet"] == top["deconvnet"]
        assert data["units"][u]["top"] == pytest.approx(atlas.units("features.1")[u]["top"])
    assert data["units"][2]["featvis"] == atlas.featvis("features.1", 2) is not None
    assert data["units"][3]["featvis"] is None
    # features.1 (conv, ReLU: no max-pool below it) has an image-independent deconvnet, which the
    # atlas left out: its "projection" is guided backprop, and the page says why
    dep = atlas.layer("features.1")["deconvnet"]
    assert dep["depends"] is False and dep["computed"] is False
    assert data["computed"] == {"patch": 8, "deconvnet": 0, "guided": 8, "projection": 8, "featvis": 2}
    assert data["methods"] == ["guided"] and data["projection"] == "guided"
    assert data["units"][3]["projection"] == atlas.examples("features.1", 3)[0]["guided"] is not None
    assert data["note"].rstrip(".").lower() == dep["reason"].lower()
    last = client.get("/api/layers/features").json()
    assert last["prev"] == "features.1" and last["next"] is None
    # features (after a max-pool) depends on the image: the deconvnet stays
    assert atlas.layer("features")["deconvnet"]["depends"] is True and last["note"] is None
    assert last["methods"] == ["deconvnet", "guided"]
    assert last["units"][0]["projection"] == atlas.examples("features", 0)[0]["deconvnet"] is not None
    html = client.get("/layers/features.1").text
    assert "guided backprop projection" in html and "Mahendran &amp; Vedaldi 2016" in html
    assert html.count('class="tile"') == 8
    assert 'data-prev=""' in html and 'data-next="/layers/features"' in html
    import re

    srcs = re.findall(r'src="(/atlas/[^"]+)"', html)
    assert len(srcs) == 8
    for src in srcs:  # every image the page shows is served, and is the PNG the atlas holds
        r = client.get(src)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == atlas.path(src[len("/atlas/"):]).read_bytes()


def test_unit_json_has_stats_histogram_examples_and_featvis(client, atlas):
    data = client.get("/api/layers/features/units/1").json()
    record = atlas.units("features")[1]
    assert data["unit"] == 1 and data["prev"] == 0 and data["next"] == 2
    assert data["stats"]["top"] == pytest.approx(record["top"])
    assert data["stats"]["quantiles"] == record["quantiles"]
    assert data["histogram"] == record["histogram"]
    assert len(data["histogram"]["edges"]) == len(data["histogram"]["counts"]) + 1
    examples = atlas.examples("features", 1)
    assert [e["rank"] for e in data["examples"]] == [0, 1, 2]
    assert [e["value"] for e in data["examples"]] == pytest.approx([e["value"] for e in examples])
    assert [e["box_original"] for e in data["examples"]] == [e["box_original"] for e in examples]
    assert data["examples"][0]["name"] == Path(examples[0]["path"]).name  # no server paths
    assert [e["sha256"] for e in data["examples"]] == [e["sha256"] for e in examples]
    assert data["featvis"] == atlas.featvis("features", 1) is not None
    html = client.get("/layers/features/units/1").text
    assert html.count("<rect x=") == len(record["histogram"]["counts"])  # one bar per bin
    assert html.count('class="ex"') == 3
    assert 'href="/layers/features/units/1/examples/2"' in html
    assert client.get("/api/layers/features/units/5").json()["next"] is None
    assert data["methods"] == ["deconvnet", "guided"] and data["note"] is None and data["ranked_by"] == "output"
    assert "<span>deconvnet</span>" in html and 'id="projection-note"' not in html
    html = client.get("/layers/features/units/0").text
    assert '<span class="missing big" data-fill="featvis"' in html and ">not computed yet</span>" in html  # no featvis


def test_image_independent_layer_shows_guided_backprop_and_says_why(client, atlas):
    """features.1's deconvnet does not depend on the image (no max-pool below it): its unit and
    example pages show guided backprop only, with the atlas's reason, and no deconvnet column."""
    dep = atlas.layer("features.1")["deconvnet"]
    data = client.get("/api/layers/features.1/units/3").json()
    assert data["methods"] == ["guided"] and data["deconvnet"]["reason"] == dep["reason"]
    assert [e["guided"] for e in data["examples"]] == [e["guided"] for e in atlas.examples("features.1", 3)]
    assert all(e["deconvnet"] is None for e in data["examples"])
    html = client.get("/layers/features.1/units/3").text
    assert '<p class="muted" id="projection-note">' in html and "depends only on the unit and its position" in html
    assert "<span>deconvnet</span>" not in html and "<span>guided backprop</span>" in html
    assert "deconvnet projection" not in html and html.count("guided backprop projection ") == 3
    html = client.get("/layers/features.1/units/3/examples/0").text
    assert 'id="projection-note"' in html and 'alt="deconvnet projection"' not in html


def test_example_page_draws_the_box_on_the_source(client, atlas):
    ex = atlas.examples("features.1", 4)[1]
    data = client.get("/api/layers/features.1/units/4/examples/1").json()
    with Image.open(ex["path"]) as img:
        assert data["source_size"] == list(img.size)
    assert data["example"]["box_original"] == ex["box_original"]
    top, left, bottom, right = ex["box_original"]
    html = client.get("/layers/features.1/units/4/examples/1").text
    assert f'<rect class="box" x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"' in html
    resp = client.get("/sources/features.1/4/1.jpg")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == Image.open(ex["path"]).size


def test_example_whose_photo_is_gone_says_so(atlas_dir, atlas, tmp_path):
    import shutil

    copy = tmp_path / "atlas"
    shutil.copytree(atlas_dir, copy)
    photo = Path(atlas.examples("features", 0)[0]["path"])
    moved = photo.with_suffix(".moved")
    photo.rename(moved)
    try:
        with TestClient(create_app(copy, model=tiny_model())) as c:
            data = c.get("/api/layers/features/units/0/examples/0").json()
            assert data["source_available"] is False and data["source_size"] is None
            assert "not available" in c.get("/layers/features/units/0/examples/0").text
            r = c.get("/sources/features/0/0.jpg")
            assert r.status_code == 404 and "no longer on disk" in r.text
    finally:
        moved.rename(photo)


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "url, status, words",
    [
        ("/api/layers/nope", 404, "unknown layer 'nope'"),
        ("/api/layers/nope", 404, "not in this atlas"),
        ("/api/layers/features.11", 404, "Close matches: features.1"),
        ("/api/layers/features.3", 404, "whose layers are: features.1, features."),
        ("/api/layers/features.1/units/8", 404, "units 0 to 7"),
        ("/api/layers/features.1/units/-1", 404, "start at 0"),
        ("/api/layers/features.1/units/abc", 400, "whole number"),
        ("/api/layers/features.1/units/1/examples/3", 404, "no example of rank 3"),
        ("/api/layers/nope/units/1", 404, "not in this atlas"),
        ("/api/nothing", 404, "no such page"),
        ("/layers/nope", 404, "not in this atlas"),
        ("/layers/features.1/units/99", 404, "no unit 99"),
        ("/atlas/layers/features.1/unit_0000/missing.png", 404, "no such atlas file"),
        ("/atlas/atlas.sqlite", 404, "no such atlas image"),
        ("/atlas/scan_state.pt", 404, "no such atlas image"),
        ("/sources/features.1/0/9.jpg", 404, "no example of rank 9"),
        ("/uploads/0123/input.png", 404, "no such upload file"),
    ],
)
def test_unknown_things_are_4xx_with_a_reason(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status
    text = r.json()["error"] if url.startswith("/api/") else r.text
    assert words in text


def test_method_not_allowed_has_a_reason(client):
    r = client.delete("/api/atlas")
    assert r.status_code == 405 and "does not accept" in r.json()["error"]


@pytest.mark.parametrize(
    "raw",
    [
        "/atlas/../secret.png",
        "/atlas/../../secret.png",
        "/atlas/%2e%2e/secret.png",
        "/atlas/..%2fsecret.png",
        "/atlas/layers/..%2f..%2f..%2fsecret.png",
        "/atlas/%2fetc%2fpasswd",
        "/atlas//etc/passwd",
        "/atlas/layers/features.1/0000/../../../../secret.png",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2f__init__.py",
        "/uploads/..%2f..%2fsecret.png/input.png",
        "/sources/..%2f..%2fsecret/0/0.jpg",
        "/layers/..%2f..%2fsecret.png",
        "/api/layers/%2e%2e",
    ],
)
def test_no_path_traversal(client, atlas_dir, raw):
    secret = atlas_dir.parent / "secret.png"
    Image.new("RGB", (5, 5), (1, 2, 3)).save(secret)
    status, body, _ = raw_get(client.app, raw)
    assert 400 <= status < 500, (raw, status)
    assert body != secret.read_bytes()
    assert b"PNG" not in body[:8] and b"import" not in body


def test_upload_too_large_is_413_before_reading_it_all(client):
    big = png_bytes((900, 900)) + b"\0" * 200_000
    r = client.post("/api/image", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "too large" in r.json()["error"] and "0.2 MB" in r.json()["error"]

    def chunks():  # no Content-Length: the stream is cut at the limit
        for _ in range(100):
            yield b"\0" * 10_000

    r = client.post("/api/image", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.post("/image", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "too large" in r.text


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"files": {"image": ("x.png", b"#!/bin/sh\nrm -rf /\n", "image/png")}}, "not an image"),
        ({"files": {"image": ("x.pkl", __import__("pickle").dumps({"a": 1}), "application/octet-stream")}}, "not an image"),
        ({"files": {"image": ("x.png", png_bytes()[:60], "image/png")}}, "not a usable image"),
        ({"files": {"image": ("x.png", b"", "image/png")}}, "empty"),
        ({"files": {"other": ("x.png", png_bytes(), "image/png")}}, "no file in its 'image' field"),
        ({"data": {"image": "hello"}}, "multipart/form-data"),
        ({"content": b"GIF89a not really"}, "not a usable image"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, "image"),
    ],
)
def test_bad_uploads_are_400_with_a_reason(client, kwargs, words):
    r = client.post("/api/image", **kwargs)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_upload_leaves_nothing_behind_on_failure(client):
    store = client.app.state.store
    before = set(p.name for p in store.root.iterdir())
    client.post("/api/image", files={"image": ("../../evil.png", b"not an image", "image/png")})
    assert set(p.name for p in store.root.iterdir()) == before
    assert not (store.root.parent / "evil.png").exists()


# --------------------------------------------------------------------------- uploads that work


def test_upload_predictions_and_excited_units_match_the_model(client, atlas):
    from convscope.hooks import hook_count

    model = client.app.state.analyzer.model
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    r = client.post("/api/image?explain=0", files={"image": ("my photo.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    data = r.json()
    x = model.transform(photo).unsqueeze(0)
    with torch.no_grad():  # independent of hooks: the Sequential's slices called by hand
        probs = model.module(x).softmax(1)[0]
        acts = {"features.1": model.module.features[:2](x), "features": model.module.features(x)}
    assert [p["index"] for p in data["predictions"]] == probs.topk(5).indices.tolist()
    assert [p["probability"] for p in data["predictions"]] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)
    assert data["predictions"][0]["label"] == f"thing {data['predictions'][0]['index']}"
    assert [layer["name"] for layer in data["layers"]] == list(LAYERS)
    for layer in data["layers"]:
        maxima = acts[layer["name"]][0].flatten(1).amax(1)
        tops = torch.tensor([u["top"] for u in atlas.units(layer["name"])])
        expected = torch.argsort(maxima / tops, descending=True)[:8].tolist()
        assert [u["unit"] for u in layer["units"]] == expected
        u0 = layer["units"][0]
        assert u0["value"] == pytest.approx(float(maxima[u0["unit"]]), abs=1e-5)
        assert u0["patch"] == atlas.examples(layer["name"], u0["unit"])[0]["patch"]
    assert all(e["url"] is None and "not asked for" in e["reason"] for e in data["explanations"].values())
    assert hook_count(model.module) == 0
    # stored under a server-made name; the client's file name is nowhere on disk
    assert len(data["id"]) == 32 and data["image"] == f"/uploads/{data['id']}/input.png"
    img = client.get(data["image"])
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (64, 64)
    names = {p.name for p in client.app.state.store.root.rglob("*")}
    assert not any("photo" in n for n in names)
    assert client.get(f"/uploads/{data['id']}/upload").status_code == 404  # the raw upload is not kept


def test_upload_page_shows_predictions_and_links_units(client):
    buf = io.BytesIO()
    Image.new("RGB", (70, 70), (30, 160, 220)).save(buf, "JPEG")
    r = client.post("/image", files={"image": ("x.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200
    assert r.text.count("<li>") == 5 and 'id="predictions"' in r.text
    assert 'href="/layers/features/units/' in r.text
    assert "not computed yet" in r.text  # explanations not asked for: an unticked box sends nothing


def test_upload_with_explanations_gives_occlusion_and_gradcam_overlays(client):
    from convscope.explain import gradcam

    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    data = client.post("/api/image", content=buf.getvalue(), headers={"content-type": "image/png"}).json()
    assert set(data["explanations"]) == {"occlusion", "gradcam"}
    shown = {}
    for name, entry in data["explanations"].items():
        assert entry["reason"] is None and entry["url"] == f"/uploads/{data['id']}/{name}.png"
        r = client.get(entry["url"])
        assert r.status_code == 200
        shown[name] = np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.float64)
        assert shown[name].shape == (64, 64, 3)
    # the Grad-CAM overlay is the input blended with the colour map of convscope.explain's heat map
    from convscope.display import heat_picture

    model = client.app.state.analyzer.model
    x = model.transform(photo).unsqueeze(0)
    heat = gradcam(model, x[0], target=data["predictions"][0]["index"]).heatmap
    picture = np.asarray(Image.open(io.BytesIO(client.get(data["image"]).content)))
    expected = np.asarray(heat_picture(picture, heat), dtype=np.float64)
    assert np.abs(expected - shown["gradcam"]).max() <= 1


def test_a_model_shared_by_upload_analyses_and_a_capture_gives_what_each_gives_alone(atlas):
    """Two threads on one LoadedModel: uploads analysed with explanations (occlusion and
    Grad-CAM: hooks, a backward-rule context, many forward passes) while the other thread
    captures layers with convscope.hooks. Each gets exactly what it gets alone, one after the
    other; no hook remains."""
    import threading

    from convscope.hooks import forward_layers, hook_count
    from convscope.web.gallery import Gallery
    from convscope.web.upload import Analyzer

    model = tiny_model()
    analyzer = Analyzer(Gallery(atlas), model)
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, 3, 64, 64, generator=g) for _ in range(8)]

    def analyses():
        out = []
        for _ in range(3):
            r = analyzer.analyze(photo, explain=True)
            out.append((r["predictions"], r["layers"], {k: np.asarray(v) for k, v in r["images"].items()}))
        return out

    def captures():
        return [forward_layers(model.module, x, list(LAYERS)) for _ in range(10) for x in xs]

    alone = {"analyses": analyses(), "captures": captures()}
    together: dict = {}
    errors: list = []
    barrier = threading.Barrier(2)

    def work(name, fn):
        try:
            barrier.wait()
            together[name] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name, fn)) for name, fn in (("analyses", analyses), ("captures", captures))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    assert set(together) == {"analyses", "captures"}
    for (p1, l1, i1), (p2, l2, i2) in zip(alone["analyses"], together["analyses"], strict=True):
        assert p1 == p2 and l1 == l2
        assert set(i1) == set(i2) == {"input.png", "occlusion.png", "gradcam.png"}
        assert all(np.array_equal(i1[k], i2[k]) for k in i1)
    for a, b in zip(alone["captures"], together["captures"], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hook_count(model.module) == 0


def test_upload_of_an_atlas_whose_model_cannot_be_loaded_is_503(atlas_dir):
    with TestClient(create_app(atlas_dir), headers=SAME_ORIGIN) as c:  # TinyNet was passed as an object: no spec to load
        r = c.post("/api/image", content=png_bytes())
        assert r.status_code == 503 and "create_app(atlas_dir, model=" in r.json()["error"]
        assert c.get("/api/layers/features").status_code == 200  # the gallery itself still works


def test_uploads_keep_only_the_newest(atlas_dir, tmp_path):
    app = create_app(atlas_dir, model=tiny_model(), upload_dir=tmp_path / "up", keep_uploads=2)
    with TestClient(app, headers=SAME_ORIGIN) as c:
        ids = [c.post("/api/image?explain=0", content=png_bytes(colour=(i, i, i))).json()["id"] for i in range(3)]
        assert sorted(p.name for p in (tmp_path / "up").iterdir()) == sorted(ids[1:])
        assert c.get(f"/uploads/{ids[0]}/input.png").status_code == 404
        assert c.get(f"/uploads/{ids[2]}/input.png").status_code == 200


def test_every_response_has_security_headers(client):
    r = client.get("/")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/api/layers/x").headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------- static export


def test_static_export_links_all_resolve(atlas_dir, atlas, tmp_path):
    import re
    import urllib.parse

    out = tmp_path / "site"
    counts = export_static(atlas_dir, out)
    units = sum(LAYERS.values())
    assert counts["pages"] == 1 + len(LAYERS) + units + units * 3
    hashes = {e["sha256"] for layer in LAYERS for u in range(LAYERS[layer]) for e in atlas.examples(layer, u)}
    assert counts["sources"] == len(hashes)  # each source photo once
    pages = list(out.rglob("*.html"))
    assert len(pages) == counts["pages"]
    for page in pages:
        html = page.read_text()
        assert 'href="/' not in html and 'src="/' not in html  # relative links only
        for link in re.findall(r'(?:href|src)="([^"#]+)"', html):
            target = (page.parent / urllib.parse.unquote(link)).resolve()
            assert target.is_file(), (page.relative_to(out), link)
    layer = (out / "layers" / "features.1" / "index.html").read_text()
    assert layer.count('class="tile"') == 8
    data = json.loads((out / "api" / "layers" / "features.1.json").read_text())
    assert (out / "atlas" / data["units"][2]["featvis"]).read_bytes() == atlas.path(data["units"][2]["featvis"]).read_bytes()
    assert "/image" not in (out / "index.html").read_text()  # no upload page in an export
    assert not list(out.rglob("*.sqlite")) and not list(out.rglob("*.pt"))


def test_serve_and_export_commands(atlas_dir, tmp_path):
    from click.testing import CliRunner

    from convscope.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["export", str(atlas_dir), "--out", str(tmp_path / "site")])
    assert r.exit_code == 0, r.output
    assert "wrote 59 pages" in r.output and (tmp_path / "site" / "index.html").is_file()
    r = runner.invoke(main, ["serve", str(tmp_path / "nothing-here")])
    assert r.exit_code == 1 and r.output.startswith("error: no atlas folder") and "Traceback" not in r.output
    r = runner.invoke(main, ["serve", str(tmp_path / "site")])
    assert r.exit_code == 1 and "holds no atlas" in r.output


@pytest.mark.slow
def test_demo_builds_once_then_reuses(tmp_path, monkeypatch):
    """`convscope demo --no-serve` with a tiny recipe: a real build with projections and feature
    visualizations, a stamp, and a second run that reuses the atlas."""
    from click.testing import CliRunner

    from convscope.atlas import Atlas
    from convscope.cli import main
    from convscope.web import demo

    tiny = {"version": 1, "model": "torchvision:alexnet", "pretrained": False, "layers": ["features.1"], "top": 2,
            "project": 1, "crops": "1,2", "featvis": {"units": 2, "steps": 2, "size": 32}}
    monkeypatch.setattr(demo, "RECIPE", tiny)
    out = tmp_path / "demo"
    runner = CliRunner()
    r = runner.invoke(main, ["demo", "--no-serve", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "building the demo atlas" in r.output and "atlas ready" in r.output
    with Atlas.open(out) as atlas:
        info = atlas.info()
        assert info["crops"]["levels"] == [1, 2] and info["images"]["scanned"] == len(demo._photos([])[0])
        assert atlas.featvis("features.1", 1) is not None and atlas.featvis("features.1", 2) is None
        # AlexNet's features.1 (conv, ReLU) lies above no max-pool: its deconvnet is
        # image-independent, left out; guided backprop is the projection, for the top 1
        assert atlas.layer("features.1")["deconvnet"]["computed"] is False
        top = atlas.examples("features.1", 0)
        assert top[0]["guided"] and top[0]["deconvnet"] is None and top[1]["guided"] is None
    stamp = json.loads((out / "demo.json").read_text())
    assert stamp["recipe"] == tiny and stamp["complete"] is True
    db_time = (out / "atlas.sqlite").stat().st_mtime_ns
    r = runner.invoke(main, ["demo", "--no-serve", "--out", str(out)])
    assert r.exit_code == 0 and "reusing the demo atlas" in r.output
    assert (out / "atlas.sqlite").stat().st_mtime_ns == db_time
    r = runner.invoke(main, ["demo", "--no-serve", "--out", str(out), "--images", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_demo_feature_visualizations_show_one_bar(tmp_path, monkeypatch, capfd):
    """The demo's feature-visualization phase is one bar over every layer (the renders count into
    it), not a line per layer."""
    from convscope.web import demo

    tiny = {"version": 1, "model": "torchvision:alexnet", "pretrained": False, "layers": ["features.1", "features.4"],
            "top": 2, "project": 0, "crops": "1", "featvis": {"units": 2, "steps": 3, "size": 32}}
    monkeypatch.setattr(demo, "RECIPE", tiny)
    monkeypatch.setenv("CONVSCOPE_PROGRESS", "1")
    lines = []
    demo.ensure_demo_atlas(tmp_path / "demo", echo=lines.append)
    err = capfd.readouterr().err
    assert "feature visualizations" in err and "6/6" in err  # 2 layers x 3 steps x 1 batch
    assert "featvis features.1" not in err and "featvis features.4" not in err
    assert sum("feature visualizations" in line for line in lines) == 1


def test_a_page_group_is_wired_like_every_other_and_a_missing_one_says_so(client):
    """The page-group protocol (convscope.web.site): a group given to create_app serves its
    routes, its header links and its /api entries, and its home is / when it is the first
    with one; every group kind the server lacks answers each of its paths with its reason."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from convscope.web.app import GROUPS
    from convscope.web.site import NavLink

    class Hello:
        search = None
        absent = None
        api = {"hello": "/api/hello"}

        def __init__(self, site):
            self.site = site
            self.nav = [NavLink("Hello", "/hello")]
            self.home = self.hello

        async def hello(self, request):
            return PlainTextResponse("hello")

        def routes(self):
            return [Route("/hello", self.hello), Route("/api/hello", self.hello)]

    with TestClient(create_app(pages=[Hello])) as c:
        assert c.get("/").text == "hello" and c.get("/api/hello").text == "hello"
        assert c.get("/api").json()["hello"] == "/api/hello"
        for kind in GROUPS:
            if kind.absent is None:
                continue
            for path in kind.absent.paths:
                url = path.replace("{rest:path}", "x/1").replace("{name:path}", "x")
                r = c.get(url)
                reason = r.json()["error"] if url.startswith("/api") else html.unescape(r.text)
                assert r.status_code == 404 and kind.absent.reason in reason, url
    # an atlas server has the atlas's, the uploads', the health and the fill's groups, no index's or run's
    kinds = {type(g).__name__ for g in client.app.state.groups}
    assert kinds == {"AtlasPages", "UploadPages", "HealthPages"}  # fill=False
    page = client.get("/").text
    assert client.get("/api/search").json()["error"].startswith("this server has no index")
    assert "/api/atlas" in client.get("/api").json().values() and "Try a photo" in page
