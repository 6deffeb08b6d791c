"""Missing projections and feature visualizations filled in on demand (convscope.atlas.fill, the
gallery's fill endpoint), equal to what a build with every projection writes; serve's page groups."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.web import create_app  # noqa: E402

from tests.tiny import TinyNet  # noqa: E402

LAYERS = ["features.1", "features"]  # ReLU6 below no max-pool (image-independent deconvnet), and above one
FV = {"steps": 4, "size": 32}


def relu6_model():
    """A seeded TinyNet with ReLU6 activations (so both layers are ranked by their pre-activation)."""
    from convscope.models import Preprocessing, load_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = TinyNet(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU6(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 6, 3, padding=1), nn.ReLU6())
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(6.0)  # drive it into saturation
    prep = Preprocessing((64, 64), 64, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(net, preprocessing=prep, labels=[f"thing {i}" for i in range(10)], device="cpu")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two atlases of the same model and photos: ``partial`` with projections of the top 1 only,
    ``full`` with all top 3 (the reference a fill must equal)."""
    import skimage.data

    from convscope.atlas import build

    photos = tmp_path_factory.mktemp("fill-photos")
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()[::3, ::3]).save(photos / f"{name}.png")
    root = tmp_path_factory.mktemp("fill")
    model = relu6_model()
    for name, project in (("partial", 1), ("full", 3)):
        build(model, [str(photos)], root / name, layers=LAYERS, top=3, crops="1,2", project=project,
              progress=False).close()
    return root


@pytest.fixture
def partial(built, tmp_path):
    """A fresh copy of the partial atlas for each test (fills write into it)."""
    out = tmp_path / "atlas"
    shutil.copytree(built / "partial", out)
    return out


def pixels(atlas, rel) -> np.ndarray:
    with Image.open(atlas.path(rel)) as img:
        return np.asarray(img.convert("RGB"))


def assert_like_full(atlas_dir, full_dir, layer, unit):
    """Every top example of ``unit`` has the projections the full build has, pixel for pixel,
    with the same display box."""
    from convscope.atlas import Atlas

    with Atlas.open(atlas_dir) as a, Atlas.open(full_dir) as f:
        mine, ref = a.examples(layer, unit), f.examples(layer, unit)
        assert len(mine) == len(ref) == 3
        for m, r in zip(mine, ref):
            for method in ("deconvnet", "guided"):
                assert (m[method] is None) == (r[method] is None)
                if r[method] is not None:
                    assert m[method] == r[method]
                    np.testing.assert_array_equal(pixels(a, m[method]), pixels(f, r[method]))
            assert m["display_box"] == r["display_box"]


def test_fill_unit_equals_the_build_with_every_projection_and_is_idempotent(partial, built):
    from convscope.atlas import Atlas
    from convscope.atlas.fill import Filler

    model = relu6_model()
    with Atlas.open(partial) as atlas:
        assert [e["guided"] is not None for e in atlas.examples("features", 2)] == [True, False, False]
        filler = Filler(atlas, model, featvis=False)
        assert filler.missing("features", 2) == {"patches": [], "projections": [1, 2], "featvis": False,
                                                   "methods": ["deconvnet", "guided"], "any": True}
        assert atlas.missing("features", 2)["featvis"] is True  # the atlas's answer; this filler makes none
        # features.1's deconvnet was left out as image-independent: the fill leaves it out too
        assert filler.missing("features.1", 5)["methods"] == ["guided"]
        done = filler.fill("features", 2)
        assert done["projections"] == [1, 2] and done["featvis"] is False
        assert filler.fill("features", 2)["projections"] == []  # nothing left: nothing done
        filler.fill("features.1", 5)
    assert_like_full(partial, built / "full", "features", 2)
    assert_like_full(partial, built / "full", "features.1", 5)
    with Atlas.open(partial) as atlas:  # the other units are as they were
        assert [e["guided"] is not None for e in atlas.examples("features", 3)] == [True, False, False]


def wait_done(client, url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(url).json()
        if data["status"] in ("done", "error"):
            return data
        time.sleep(0.05)
    pytest.fail(f"{url} did not finish: {data}")


def test_fill_endpoint_computes_once_writes_the_atlas_and_serves_the_files(partial, built):
    from convscope import featvis
    from convscope.atlas import Atlas

    model = relu6_model()
    app = create_app(partial, model=model, fill=FV)
    url = "/api/layers/features/units/2/fill"
    with TestClient(app, headers={"Origin": "http://testserver"}) as c:
        before = c.get(url).json()
        assert before["status"] == "missing" and before["missing"]["projections"] == [1, 2]
        assert before["missing"]["featvis"] is True
        html = c.get("/layers/features/units/2").text
        assert f'data-fill-url="{url}"' in html and 'data-fill="1:deconvnet"' in html and 'data-fill="featvis"' in html
        first, second = c.post(url), c.post(url)  # the second joins the first
        assert first.status_code == 202 and first.json()["status"] == "queued"
        assert second.status_code == 202 and second.json()["status"] in ("queued", "running", "done")
        data = wait_done(c, url)
        assert data["status"] == "done", data
        group = next(g for g in app.state.groups if hasattr(g, "runs"))
        assert group.runs == 1
        assert c.post(url).json()["status"] == "done" and group.runs == 1  # done: nothing queued again
        files = data["files"]
        assert set(files) == {"featvis", *(f"{r}:{m}" for r in range(3) for m in ("deconvnet", "guided"))}
        for name, src in files.items():  # every URL serves the PNG the atlas now holds
            r = c.get(src)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        page = c.get("/api/layers/features/units/2").json()
        assert page["missing"]["any"] is False and page["featvis"] is not None
        assert "data-fill-url" not in c.get("/layers/features/units/2").text
    assert_like_full(partial, built / "full", "features", 2)  # re-opened from disk
    with Atlas.open(partial) as atlas:
        rel = atlas.featvis("features", 2)
        assert rel == "featvis/features/unit_0002.png"
        expected = np.asarray(featvis.render(model, "features", [2], progress=False, **FV).image(0).convert("RGB"))
        np.testing.assert_array_equal(pixels(atlas, rel), expected)


def test_fill_refuses_cross_site_posts_a_full_queue_and_bad_units(partial):
    import threading

    app = create_app(partial, model=relu6_model(), fill=FV, fill_queue=1)
    with TestClient(app, headers={"Origin": "http://testserver"}) as c:
        evil = c.post("/api/layers/features/units/0/fill", headers={"Origin": "http://evil.example.com"})
        assert evil.status_code == 403 and "cross-site request refused" in evil.json()["error"]
        assert c.get("/api/layers/features/units/0/fill").json()["status"] == "missing"  # nothing queued
        group = next(g for g in app.state.groups if hasattr(g, "runs"))
        gate = threading.Event()
        real = group._fill
        group._fill = lambda layer, unit: gate.wait(30) and real(layer, unit)
        assert c.post("/api/layers/features/units/0/fill").status_code == 202
        full = c.post("/api/layers/features/units/1/fill")
        assert full.status_code == 503 and "at most 1 wait" in full.json()["error"]
        assert full.headers["retry-after"] == "60"
        gate.set()
        assert wait_done(c, "/api/layers/features/units/0/fill")["status"] == "done"
        assert c.post("/api/layers/features/units/1/fill").status_code == 202  # room again
        assert wait_done(c, "/api/layers/features/units/1/fill")["status"] == "done"
        r = c.post("/api/layers/features/units/99/fill")
        assert r.status_code == 404 and "units 0 to 5" in r.json()["error"]
        r = c.post("/api/layers/nope/units/0/fill")
        assert r.status_code == 404 and "features" in r.json()["error"]


def test_fill_error_is_one_line_and_tried_again(partial, tmp_path):
    """A photo gone since the scan: the fill answers with one line, and the atlas is unchanged."""
    from convscope.atlas import Atlas

    with Atlas.open(partial) as atlas:
        photo = Path(atlas.examples("features", 3)[1]["path"])
        before = [e["guided"] for e in atlas.examples("features", 3)]
    moved = tmp_path / "moved.png"
    shutil.move(photo, moved)
    try:
        with TestClient(create_app(partial, model=relu6_model(), fill={"featvis": False}),
                        headers={"Origin": "http://testserver"}) as c:
            assert c.post("/api/layers/features/units/3/fill").status_code == 202
            data = wait_done(c, "/api/layers/features/units/3/fill")
            assert data["status"] == "error" and "cannot be read again" in data["error"] and "\n" not in data["error"]
    finally:
        shutil.move(moved, photo)
    with Atlas.open(partial) as atlas:
        assert [e["guided"] for e in atlas.examples("features", 3)] == before


def test_unit_page_shows_the_ranking_pre_activation_beside_the_output(partial):
    from convscope.atlas import Atlas
    from convscope.web.render import fmt

    with Atlas.open(partial) as atlas:
        ranked_by = atlas.layer("features")["ranked_by"]
        examples = atlas.examples("features", 0)
    assert ranked_by.startswith("pre-activation (input of ReLU6")
    assert all(e["pre"] is not None for e in examples)
    with TestClient(create_app(partial, model=relu6_model(), fill=False)) as c:
        data = c.get("/api/layers/features/units/0").json()
        assert data["ranked_by"] == ranked_by
        assert [e["pre"] for e in data["examples"]] == pytest.approx([e["pre"] for e in examples])
        html = c.get("/layers/features/units/0").text
        assert 'id="ranked-by"' in html and "data-fill-url" not in html  # fill=False: no requests
        for e in examples:
            assert f"ranked by input of ReLU6: {fmt(e['pre'])}</small>" in html
            assert f'<small class="output">output {fmt(e["value"])}</small>' in html
        html = c.get("/layers/features/units/0/examples/0").text
        assert f"ranked by the input of ReLU6 &#39;features.4&#39;: {fmt(examples[0]['pre'])}" in html


def test_static_export_says_what_it_lacks(partial, tmp_path):
    from convscope.web import export_static

    export_static(partial, tmp_path / "site", progress=False)
    html = (tmp_path / "site" / "layers" / "features" / "units" / "2" / "index.html").read_text()
    assert "not in this export" in html and "convscope atlas build --project" in html
    assert "convscope featvis --atlas" in html and "data-fill-url" not in html


def test_serve_lists_evolve_and_a_server_without_one_says_why(partial):
    from click.testing import CliRunner

    from convscope.cli import main

    res = CliRunner().invoke(main, ["serve", "--help"])
    assert res.exit_code == 0 and "--evolve RUN" in res.output and "--no-fill" in res.output
    res = CliRunner().invoke(main, ["serve"])
    assert res.exit_code == 2 and "--evolve RUN" in res.output
    with TestClient(create_app(partial, model=relu6_model(), fill=False)) as c:
        for path in ("/evolve", "/api/evolve", "/evolve/features"):
            r = c.get(path)
            assert r.status_code == 404 and "no evolve run; start it with --evolve RUN" in r.text


def test_the_unit_page_and_the_fill_read_one_answer_of_what_a_unit_lacks(partial):
    """The atlas says which methods a layer has and what a unit lacks (Atlas.methods, Atlas.missing);
    the gallery's pages and the fill read those answers, they do not decide them again."""
    from convscope.atlas import Atlas
    from convscope.atlas.fill import Filler
    from convscope.web.gallery import Gallery

    with Atlas.open(partial) as atlas:
        gallery, filler = Gallery(atlas), Filler(atlas, relu6_model())
        assert atlas.methods("features") == ["deconvnet", "guided"] and atlas.methods("features.1") == ["guided"]
        for layer in atlas.layers:
            assert gallery.projection_view(layer)["methods"] == atlas.methods(layer)
            for unit in range(3):
                assert gallery.unit(layer, unit)["missing"] == atlas.missing(layer, unit) == filler.missing(layer, unit)
