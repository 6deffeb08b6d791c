"""In headless Chromium: a unit page whose projections and feature visualization are missing
asks the server for them, and its grey tiles become the pictures; the atlas holds them after."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
uvicorn = pytest.importorskip("uvicorn")

from convscope.web import create_app  # noqa: E402

from tests.served import serving  # noqa: E402
from tests.test_browser import ARTIFACTS  # noqa: E402
from tests.test_fill import FV, built, relu6_model  # noqa: E402,F401  (built: the module's atlases)


@pytest.fixture
def served(built, tmp_path):  # noqa: F811
    atlas_dir = tmp_path / "atlas"
    shutil.copytree(built / "partial", atlas_dir)
    with serving(create_app(atlas_dir, model=relu6_model(), fill=FV)) as base:
        yield base, atlas_dir


def test_missing_tiles_fill_in_and_the_atlas_keeps_them(served):
    from convscope.atlas import Atlas

    server, atlas_dir = served
    with Atlas.open(atlas_dir) as atlas:
        assert atlas.featvis("features", 2) is None
        assert [e["deconvnet"] is not None for e in atlas.examples("features", 2)] == [True, False, False]
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server + "/layers/features/units/2")
            # 1 featvis + 2 examples x (deconvnet, guided) were grey; each becomes a loaded image
            page.wait_for_function("() => document.querySelectorAll('.missing[data-fill]').length === 0",
                                   timeout=60_000)
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=10_000)
            widths = page.eval_on_selector_all(".ex img.ex-img, .featvis img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) == 1 + 3 * 3 and all(w > 0 for w in widths)  # featvis, 3 x (patch, deconvnet, guided)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser-unit-filled.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    with Atlas.open(atlas_dir) as atlas:
        assert atlas.featvis("features", 2) == "featvis/features/unit_0002.png"
        assert all(e["deconvnet"] and e["guided"] for e in atlas.examples("features", 2))
        assert atlas.path(atlas.featvis("features", 2)).is_file()


def test_a_unit_queued_behind_another_says_its_place_then_fills_in(built, tmp_path):  # noqa: F811
    """Issue 20, point 11: a queued unit's tiles say its place in the queue, not "computing"."""
    import httpx

    from tests.test_serve_lanes import gate_fills, post

    atlas_dir = tmp_path / "atlas"
    shutil.copytree(built / "partial", atlas_dir)
    app = create_app(atlas_dir, model=relu6_model(), fill={"featvis": False})
    gate = gate_fills(app)
    with serving(app) as server, httpx.Client(base_url=server, timeout=60) as c, \
            playwright_sync.sync_playwright() as p:
        assert post(c, "/api/layers/features/units/0/fill").status_code == 202  # held: it runs, the next waits
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.goto(server + "/layers/features/units/2")
            page.wait_for_function("() => Array.from(document.querySelectorAll('.missing[data-fill]'))"
                                   ".some(t => t.textContent.includes('queued: place 1 in the queue'))", timeout=20_000)
            assert c.get("/api/layers/features/units/2/fill").json()["status"] == "queued"
            gate.set()
            page.wait_for_function("() => document.getElementById('unit-page').dataset.fill === 'done'", timeout=60_000)
            left = page.eval_on_selector_all(".missing[data-fill]", "els => els.map(e => e.dataset.fill)")
            assert left == ["featvis"]  # this server fills projections only
        finally:
            gate.set()
            browser.close()


def test_an_atlas_with_patches_on_demand_fills_its_layer_and_unit_pages(tmp_path):
    """Issue 24: the demo's atlas cuts no patch while it builds; the layer page asks for its top
    patches and reloads with them, the unit page's grey patch tiles become the patches."""
    from convscope.atlas import Atlas, build
    from tests.test_atlas import SETTINGS, make_photos, tiny_model

    model = tiny_model()
    out = tmp_path / "atlas"
    build(model, make_photos(tmp_path / "photos", 8), out, **dict(SETTINGS, project=0, names=False), patches=False)
    with serving(create_app(out, model=model, fill={"featvis": False})) as server, \
            playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/layers/features.1")
            page.wait_for_function("() => !document.getElementById('tops-cutting') && "
                                   "document.querySelectorAll('#units .tile img').length === 8", timeout=60_000)
            page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=10_000)
            page.goto(server + "/layers/features.1/units/3")  # (no feature visualizations in this server)
            page.wait_for_function("() => document.querySelectorAll('.ex .missing[data-fill]').length === 0",
                                   timeout=60_000)
            assert page.eval_on_selector_all(".ex img.ex-img", "els => els.filter(e => e.alt.startsWith('patch')).length") == 4
            assert not errors, errors
        finally:
            browser.close()
    with Atlas.open(out) as atlas:
        assert all(ex["patch"] and (out / ex["patch"]).is_file() for ex in atlas.examples("features.1", 3))
        assert all(atlas.examples("features.1", u)[0]["patch"] for u in range(8))
