"""Every kind of evidence on the search page in real headless Chromium (issue 21): a word written
in a photo with its box drawn on hover, a place and a time in the why, an everyday word's reason.
Screenshots go to ``artifacts/``.

As tests/test_browser.py: Debian's Chromium at /usr/bin/chromium and Playwright for Python."""
from __future__ import annotations

import os

import pytest

from convscope import ocr
from tests.served import serving
from tests.test_browser import CHROMIUM, browser, images_loaded, shot  # noqa: F401 (browser: a fixture)
from tests.test_query import write_photos, write_signs

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
    pytest.mark.skipif(ocr.available() is not None, reason=str(ocr.available())),
]
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("reverse_geocoder")

from convscope.index import Index  # noqa: E402
from convscope.models import load_model  # noqa: E402
from convscope.web import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-query")
    write_photos(root / "photos")
    boxes = write_signs(root / "photos")
    model = load_model()
    Index.build(model, [root / "photos"], root / "index", workers=0, progress=False, text=True).close()
    with serving(create_app(index=root / "index", model=model)) as base:
        yield base, boxes


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("response", lambda resp: resp.status >= 400 and errors.append(f"{resp.status} {resp.url}"))
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def test_a_word_in_a_photo_shows_its_box_on_hover(server, page):
    base, boxes = server
    page.goto(base + "/search?q=bakery")
    hits = page.locator("article.hit")
    assert hits.count() == 1
    why = hits.locator("ul.why li.text")
    assert why.count() == 1 and "BAKERY" in why.inner_text().upper() and "written in the photo" in why.inner_text()
    box = hits.locator(".pic .textbox")
    assert box.count() == 1 and float(box.evaluate("e => getComputedStyle(e).opacity")) == 0
    hits.locator(".pic").hover()
    page.wait_for_function("() => getComputedStyle(document.querySelector('.textbox')).opacity === '1'")
    pic, drawn = hits.locator(".pic").bounding_box(), box.bounding_box()
    # the sign is 800 x 600: its tile shows the middle 600 x 600, so x moves by 100 px of 800
    left, top, right, _ = boxes["BAKERY"]
    want_left = (left * 800 - 100) / 600
    assert abs((drawn["x"] - pic["x"]) / pic["width"] - want_left) < 0.06
    assert abs((drawn["y"] - pic["y"]) / pic["height"] - top) < 0.06
    images_loaded(page)
    shot(page, "search-text")


def test_place_time_and_everyday_word_in_the_why(server, page):
    base, _ = server
    page.goto(base + "/search?q=cat%20lyon%202015")
    hit = page.locator("article.hit")
    assert hit.count() == 1 and hit.locator(".name").inner_text() == "chelsea.jpg"
    assert "Lyon" in hit.locator("ul.why li.place").inner_text()
    assert "2015-05-02 14:03" in hit.locator("ul.why li.time").inner_text()
    assert hit.locator("ul.why li.class").count() >= 1
    shot(page, "search-place-time")
    page.goto(base + "/search?q=pets")
    word = page.locator("article.hit ul.why li.word").first
    assert "pet:" in word.inner_text() and "house cat" in word.inner_text()
    import json
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:  # a word the network has no class for: one line, 400
        urllib.request.urlopen(base + "/api/search?q=sunset")
    assert err.value.code == 400
    assert "the network has no class for 'sunset'" in json.loads(err.value.read())["error"]
