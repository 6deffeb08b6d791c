"""The gallery's model-health pages (convscope.web.health_pages) over tests/test_health.py's small
atlas of a TinyNet with planted dead, saturated, constant and duplicate units: JSON against the
report, the filter sheet's pixels, the link from each layer page, the report made once, errors,
and the pages in Chromium (a flagged unit opens its unit page)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.atlas import Atlas, build  # noqa: E402
from convscope.health import filter_sheet, first_layer_filters, health, sheet_flags  # noqa: E402
from convscope.web import create_app  # noqa: E402
from convscope.web import health_pages  # noqa: E402

from tests.test_health import LAYERS, PLANTED, make_photos, tiny_model  # noqa: E402

from tests.served import CHROMIUM, chromium, serving  # noqa: E402
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def atlas_dir(model, tmp_path_factory):
    photos = make_photos(tmp_path_factory.mktemp("health-photos"))
    out = tmp_path_factory.mktemp("health-atlas") / "atlas"
    build(model, photos, out, layers=LAYERS, top=5, crops="1", project=0, batch_size=12, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def report(atlas_dir, model):
    with Atlas.open(atlas_dir) as atlas:
        return health(atlas, model)


def app_for(atlas_dir, model):
    return create_app(atlas_dir, model=model)


@pytest.fixture(scope="module")
def client(atlas_dir, model):
    with TestClient(app_for(atlas_dir, model)) as c:
        yield c


def test_the_report_as_json(client, report):
    data = client.get("/api/health").json()
    assert [L["name"] for L in data["layers"]] == LAYERS
    got = {(u["layer"], u["unit"]): u["flags"] for L in data["layers"] for u in L["units_flagged"]}
    assert got == PLANTED == {(u.layer, u.unit): u.flags for u in report.flagged()}
    first = data["layers"][0]
    assert first["shares"] == {"dead": 0.125, "saturated": 0.125, "constant": 0.125, "duplicate": 0.125}
    assert (first["activation"], first["ceiling"]) == ("features.1", 6.0)
    assert {u["unit"]: u["url"] for u in first["units_flagged"]} == {u: f"/layers/features.1/units/{u}" for u in (2, 4, 5, 7)}
    assert data["flagged"] == len(PLANTED) and data["units"] == 14
    assert data["first_layer"]["layer"] == "features.0" and len(data["first_layer"]["bands"]) == 8


def test_a_layer_as_json(client, report):
    data = client.get("/api/health/features").json()
    assert [(u["unit"], u["flags"]) for u in data["flagged"]] == [(4, ["dead"]), (5, ["duplicate"])]
    dup = data["flagged"][1]
    assert (dup["duplicate_of"], dup["overlap"]) == (0, 1.0) and dup["cosine"] == pytest.approx(1.0)
    assert data["distribution"] == report.layer("features").to_dict()["distribution"]
    hist = data["histogram"]
    assert len(hist["counts"]) == health_pages.HISTOGRAM_BINS == len(hist["edges"]) - 1
    with Atlas.open(client.app.state.gallery.atlas.root) as atlas:
        units = atlas.units("features")
    # every sampled position of every unit, pooled: the sketches' total count
    assert sum(hist["counts"]) == sum(sum(u["sketch"]["counts"]) for u in units)
    assert hist["edges"][0] == min(u["min"] for u in units) and hist["edges"][-1] == pytest.approx(max(u["max"] for u in units))
    assert (data["prev"], data["next"]) == ("features.1", None)


def test_the_filter_sheet_is_the_health_modules(client, model, report):
    got = np.asarray(Image.open(io.BytesIO(client.get("/health/filters.png").content)).convert("RGB"))
    filters = first_layer_filters(model)
    want = np.asarray(filter_sheet(filters, flags=sheet_flags(report, filters)).convert("RGB"))
    assert np.array_equal(got, want)


def test_the_pages_and_the_link_from_each_layer(client):
    page = client.get("/health")
    assert page.status_code == 200 and 'id="filter-sheet"' in page.text and 'href="/health"' in page.text
    for (layer, unit), flags in PLANTED.items():
        assert f'href="/layers/{layer}/units/{unit}" data-unit="{unit}" data-flags="{" ".join(flags)}"' in page.text
    layer = client.get("/health/features.1")
    assert layer.status_code == 200 and layer.text.count("<tr data-unit=") == 4 and "<svg class=\"hist\"" in layer.text
    for name in LAYERS:
        assert f'href="/health/{name}"' in client.get(f"/layers/{name}").text


def test_the_report_is_made_once(atlas_dir, model, monkeypatch):
    calls = []
    real = health_pages.health
    monkeypatch.setattr(health_pages, "health", lambda *a: calls.append(1) or real(*a))
    with TestClient(app_for(atlas_dir, model)) as c:
        assert calls == []  # nothing before a health page is asked for
        for url in ("/api/health", "/health", "/health/features", "/health/filters.png", "/api/health/features.1"):
            assert c.get(url).status_code == 200
    assert calls == [1]


def test_errors_are_one_line(client, atlas_dir, tmp_path):
    r = client.get("/api/health/feature")
    assert r.status_code == 404 and "features" in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.get("/health/nope").status_code == 404
    # an atlas whose model cannot be loaded by name: 503 with the reason, not a 500
    with TestClient(create_app(atlas_dir)) as c:
        r = c.get("/api/health")
        assert r.status_code == 503 and "create_app(atlas_dir, model=" in r.json()["error"]
        page = c.get("/health")
        assert page.status_code == 503 and "cannot be made" in page.text


# --------------------------------------------------------------------------- Chromium


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_the_health_page_in_chromium(atlas_dir, model):
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    with serving(app_for(atlas_dir, model)) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/layers/features.1")
        page.click("#layer-health")
        page.wait_for_url("**/health/features.1")
        assert page.locator("#flagged-units tbody tr").count() == 4
        page.click("text=health")  # the header's link
        page.wait_for_url(base + "/health")
        page.wait_for_load_state("load")
        sheet = page.locator("#filter-sheet")
        assert sheet.evaluate("e => e.complete && e.naturalWidth") > 0
        shown = page.locator("a.flagged-unit").evaluate_all(
            "els => els.map(e => [e.closest('tr').dataset.layer, +e.dataset.unit, e.innerText])")
        assert {(layer, unit) for layer, unit, _ in shown} == set(PLANTED)
        for layer, unit, text in shown:
            assert all(f in text for f in PLANTED[layer, unit])
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "health.png"), full_page=True)
        page.click('tr[data-layer="features.1"] a.flagged-unit[data-unit="7"]')
        page.wait_for_url("**/layers/features.1/units/7")
        assert "unit 7" in page.locator("h1").inner_text()
