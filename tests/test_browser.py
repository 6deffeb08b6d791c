"""The gallery in real headless Chromium: navigation, tiles, images, arrow keys, an upload.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and Playwright for
Python (``pip install playwright``; its own browser download is never used). Screenshots go to
``artifacts/`` in the repository root.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.served import CHROMIUM, chromium, free_port, serving  # noqa: F401 (free_port: for other test files)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]
playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
uvicorn = pytest.importorskip("uvicorn")

# the same tiny atlas as the HTTP tests (tests/ may or may not be a package)
if __package__:
    from .test_web import LAYERS, tiny_model  # noqa: E402
else:
    from test_web import LAYERS, tiny_model  # noqa: E402

from convscope.web import create_app  # noqa: E402


@pytest.fixture(scope="module")
def atlas_dir(web_atlas_dir):
    return web_atlas_dir


@pytest.fixture(scope="module")
def atlas(atlas_dir):
    from convscope.atlas import Atlas

    with Atlas.open(atlas_dir) as a:
        yield a


@pytest.fixture(scope="module")
def server(atlas_dir):
    """The gallery on 127.0.0.1 at a free port, in a background thread, stopped after the tests."""
    with serving(create_app(atlas_dir, model=tiny_model(), fill=False)) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # every failed request counts, except the upload form's own answer to a bad photo
    expected = "/image"

    def on_console(msg):
        if msg.type == "error" and not msg.location.get("url", "").endswith(expected):
            errors.append(msg.text)

    def on_response(resp):
        if resp.status >= 400 and not resp.url.endswith(expected):
            errors.append(f"{resp.status} {resp.url}")

    pg.on("console", on_console)
    pg.on("response", on_response)
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def images_loaded(pg) -> tuple[int, list[str]]:
    """Wait for every <img> to finish; the number of images and the sources of broken ones."""
    pg.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=10_000)
    broken = pg.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    return pg.evaluate("document.images.length"), broken


def test_home_layer_unit_and_back(server, page, atlas):
    page.goto(server + "/")
    assert page.locator("h1").inner_text() == "TinyNet"
    assert page.locator("table.layers tbody tr").count() == len(LAYERS)
    n, broken = images_loaded(page)
    assert n == sum(LAYERS.values()) and not broken  # the preview strips
    shot(page, "home")

    page.get_by_role("link", name="features.1", exact=True).click()
    page.wait_for_url(server + "/layers/features.1")
    assert page.locator(".tile").count() == atlas.layer("features.1")["shape"][0] == 8
    n, broken = images_loaded(page)
    assert n == 8 and not broken
    shot(page, "layer")

    page.locator(".tile").nth(3).click()
    page.wait_for_url(server + "/layers/features.1/units/3")
    assert "unit 3" in page.locator("h1").inner_text()
    assert page.locator(".ex").count() == 3
    assert page.locator("svg.hist rect").count() == len(atlas.units("features.1")[3]["histogram"]["counts"])
    n, broken = images_loaded(page)
    # features.1's deconvnet is image-independent (no max-pool below it): 3 x (patch, guided)
    assert atlas.layer("features.1")["deconvnet"]["computed"] is False
    assert n == 6 and not broken
    assert page.locator(".ex-head span").all_text_contents() == ["#", "image patch", "guided backprop", "source"]
    assert "depends only on the unit and its position" in page.locator("#projection-note").inner_text()
    assert page.locator(".featvis .missing").inner_text() == "not computed yet"  # unit 3 has none
    shot(page, "unit")

    page.locator(".src").first.click()
    page.wait_for_url(server + "/layers/features.1/units/3/examples/0")
    page.wait_for_function("() => document.querySelector('svg.source-img image').getBBox().width > 0")
    images_loaded(page)
    shot(page, "source")

    page.go_back()
    page.go_back()
    page.wait_for_url(server + "/layers/features.1")
    assert page.locator(".tile").count() == 8


def test_unit_with_feature_visualization(server, page):
    page.goto(server + "/layers/features/units/1")
    n, broken = images_loaded(page)
    assert n == 10 and not broken
    assert page.locator(".featvis img").count() == 1


def test_toggle_shows_projections_and_feature_visualizations(server, page, atlas):
    page.goto(server + "/layers/features.1")
    # image-independent deconvnet here (the atlas left it out): the projection is guided backprop
    assert atlas.layer("features.1")["deconvnet"]["computed"] is False
    page.get_by_role("button", name="guided backprop projection").click()
    srcs = page.eval_on_selector_all(".tile img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs == ["/atlas/" + atlas.examples("features.1", u)[0]["guided"] for u in range(8)]
    assert "Mahendran & Vedaldi" in page.locator("#projection-note").inner_text()
    n, broken = images_loaded(page)
    assert n == 8 and not broken
    page.get_by_role("button", name="feature visualization").click()
    assert page.locator(".tile img").count() == 2 and page.locator(".tile .missing").count() == 6
    n, broken = images_loaded(page)
    assert n == 2 and not broken
    assert page.get_by_role("button", name="feature visualization").get_attribute("aria-pressed") == "true"
    shot(page, "layer-featvis")
    page.keyboard.press("ArrowRight")  # the choice follows to the next layer
    page.wait_for_url(server + "/layers/features")
    assert page.locator(".tile img").count() == 1 and page.locator(".tile .missing").count() == 5
    page.get_by_role("button", name="deconvnet projection").click()  # features depends on the image
    srcs = page.eval_on_selector_all(".tile img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs == ["/atlas/" + atlas.examples("features", u)[0]["deconvnet"] for u in range(6)]
    assert page.locator("#projection-note").count() == 0
    page.get_by_role("button", name="top patch").click()
    assert page.locator(".tile img").count() == 6


def test_arrow_keys_move_between_layers(server, page):
    page.goto(server + "/layers/features.1")
    page.keyboard.press("ArrowLeft")  # the first layer: nothing before it
    page.wait_for_timeout(200)
    assert page.url == server + "/layers/features.1"
    page.keyboard.press("ArrowRight")
    page.wait_for_url(server + "/layers/features")
    assert page.locator(".tile").count() == LAYERS["features"]
    page.keyboard.press("ArrowRight")  # the last layer: nothing after it
    page.wait_for_timeout(200)
    assert page.url == server + "/layers/features"
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(server + "/layers/features.1")
    page.keyboard.press("ArrowUp")
    page.wait_for_url(server + "/")


def test_upload_shows_predictions(server, page, tmp_path):
    import skimage.data
    from PIL import Image

    photo = tmp_path / "cat.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    page.goto(server + "/image")
    page.set_input_files("input[type=file]", str(photo))
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector("#predictions li")
    assert page.locator("#predictions li").count() == 5
    assert page.locator("#predictions li").first.inner_text().startswith("thing ")
    n, broken = images_loaded(page)
    assert n == 1 + 2 + sum(LAYERS.values()) and not broken  # photo, occlusion, Grad-CAM, units
    shot(page, "upload")
    page.locator(".result ~ section .tile").first.click()
    page.wait_for_url(server + "/layers/features.1/units/*")


def test_not_an_image_upload_shows_the_reason(server, page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("just text")
    page.goto(server + "/image")
    page.set_input_files("input[type=file]", str(bad))
    page.get_by_role("button", name="Analyze").click()
    page.wait_for_selector(".error")
    assert "not an image" in page.locator(".error").inner_text()


def test_a_form_on_another_site_cannot_upload(server, page, tmp_path):
    """A page on another origin (served by Playwright's router, so nothing leaves the machine)
    posts a photo to the gallery's upload form: Chromium sends its Origin, the gallery refuses."""
    import skimage.data
    from PIL import Image

    photo = tmp_path / "cat.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    evil = (
        f'<!doctype html><form method="post" action="{server}/image" enctype="multipart/form-data">'
        '<input type="file" name="image"><button type="submit">Send</button></form>'
    )
    page.route("http://evil.example.com/**", lambda route: route.fulfill(status=200, content_type="text/html", body=evil))
    page.goto("http://evil.example.com/")
    page.set_input_files("input[type=file]", str(photo))
    with page.expect_response(server + "/image") as answer:
        page.get_by_role("button", name="Send").click()
    assert answer.value.status == 403
    page.wait_for_selector("main")
    assert "cross-site request refused" in page.locator("main").inner_text()
    assert "http://evil.example.com" in page.locator("main").inner_text()
