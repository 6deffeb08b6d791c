"""The search pages in real headless Chromium: the search box, the results grid and its images,
"more like this", the Grad-CAM on hover and click, an unknown word, duplicates and albums.

As tests/test_browser.py: Debian's Chromium at /usr/bin/chromium and Playwright for Python (its
own browser download is never used); screenshots go to ``artifacts/``. The index is the one of
tests/test_web_search.py (built once per session).
"""
from __future__ import annotations

import os

import pytest

from tests.served import serving  # noqa: E402
from tests.test_browser import CHROMIUM, browser, images_loaded, shot  # noqa: F401 (browser: a fixture)

#: The first picture of why on the page has loaded.
CAM_LOADED = "() => { const i = document.querySelector('.hit img.cam'); return i && i.complete && i.naturalWidth > 0; }"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]
uvicorn = pytest.importorskip("uvicorn")

from convscope.web import create_app  # noqa: E402

from tests.test_web_search import search_library, search_model  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return search_library(tmp_path_factory)


@pytest.fixture(scope="module")
def server(library):
    """The search pages of the index (no atlas) on 127.0.0.1 at a free port, in a thread."""
    with serving(create_app(index=library / "index", model=search_model())) as base:
        yield base


@pytest.fixture
def page(browser):  # noqa: F811
    """A page that fails its test on any script error or failed request, but the 400 that
    answers an unknown word (the page that says so)."""
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    errors = []
    expected = "/search?q=dgo"
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: msg.type == "error" and not msg.location.get("url", "").endswith(expected)
          and errors.append(msg.text))
    pg.on("response", lambda resp: resp.status >= 400 and not resp.url.endswith(expected)
          and errors.append(f"{resp.status} {resp.url}"))
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def search_for(pg, words: str) -> None:
    pg.get_by_role("searchbox", name="Search the photos").fill(words)
    with pg.expect_navigation():
        pg.keyboard.press("Enter")


def test_a_word_in_the_search_box_shows_thumbnails_scores_and_why(server, page):
    page.goto(server + "/")
    assert page.locator("h1").inner_text() == "Search 7 photos and 1 video"
    search_for(page, "entity")
    assert page.url == server + "/search?q=entity"
    assert page.locator("h1").inner_text() == "8 results for “entity”"
    assert page.locator(".hit").count() == 8
    n, broken = images_loaded(page)
    assert n == 7 and not broken  # every thumbnail but the link's, which is not served
    assert page.locator(".hit .missing").inner_text() == "not served (outside the indexed folders)"
    first = page.locator(".hit").first
    assert first.locator(".score").inner_text().endswith("%")
    assert first.locator(".why li").first.locator(".path").inner_text().endswith("> entity")
    assert page.locator(".hit .when").inner_text() == "▶ 0:00–0:02"  # the clip, one segment
    assert page.get_by_role("searchbox", name="Search the photos").input_value() == "entity"
    shot(page, "search-results")


def test_more_like_this_finds_the_others(server, page):
    page.goto(server + "/search?q=entity")
    name = page.locator(".hit .name").first.inner_text()
    page.locator(".hit .more").first.click()
    page.wait_for_url("**/search?like=*")
    assert page.locator("h1").inner_text() == f"Photos like {name}"
    assert page.locator(".hit").count() == 7  # all but the photo itself
    assert name not in page.locator(".hits").inner_text().split("\n")
    n, broken = images_loaded(page)
    assert n == 1 + 6 and not broken  # the query's thumbnail and the results' (not the link's)
    shot(page, "search-like")


def test_hover_and_click_show_the_gradcam(server, page):
    page.goto(server + "/search?q=entity")
    hit = page.locator(".hit[data-cam^='/explain/']").first  # the link's result has no picture
    cam = hit.locator("img.cam")
    assert cam.count() == 0  # made on first use only
    hit.locator(".pic").hover()
    page.wait_for_function(CAM_LOADED)
    page.wait_for_function("() => getComputedStyle(document.querySelector('.hit img.cam')).opacity === '1'")
    assert cam.get_attribute("src").startswith("/explain/")
    assert hit.locator(".cam-label").inner_text() == "Grad-CAM"
    page.mouse.move(5, 300)  # away: the photo again
    page.wait_for_function("() => getComputedStyle(document.querySelector('.hit img.cam')).opacity === '0'")
    hit.locator(".pic").click()  # a click keeps it
    page.mouse.move(5, 300)
    page.wait_for_function("() => getComputedStyle(document.querySelector('.hit img.cam')).opacity === '1'")
    assert hit.locator(".pic").get_attribute("aria-pressed") == "true"
    # the toolbar: every result at once
    page.get_by_role("button", name="where the network saw it (Grad-CAM)").click()
    page.wait_for_function("() => document.querySelectorAll('.hit img.cam').length === 7")
    n, broken = images_loaded(page)
    assert n == 7 + 7 and not broken
    shot(page, "search-gradcam")
    page.get_by_role("button", name="the photo").click()
    assert page.locator(".hit.pinned").count() == 0


def test_an_unknown_word_says_so_with_links_to_close_matches(server, page):
    page.goto(server + "/search?q=entity")
    search_for(page, "dgo")
    assert "unknown word 'dgo'" in page.locator(".error").inner_text()
    page.get_by_role("link", name="dog", exact=True).click()
    page.wait_for_url(server + "/search?q=dog")
    assert page.locator(".error").count() == 0


def test_unit_search_shows_receptive_fields(server, page):
    page.goto(server + "/")
    page.get_by_label("layer:unit").fill("layer1:5")
    page.get_by_role("button", name="Find").click()
    page.wait_for_url("**/search?unit=layer1%3A5")
    assert page.locator("h1").inner_text() == "What excites unit 5 of layer1 most"
    served = page.locator(".hit[data-cam^='/explain/']").first  # the link's result has no picture
    served.locator(".pic").hover()
    page.wait_for_function(CAM_LOADED)
    assert served.locator(".cam-label").inner_text() == "receptive field"


def test_duplicates_and_albums_pages_show_their_groups(server, page):
    page.goto(server + "/")
    page.get_by_role("link", name="Duplicates", exact=True).first.click()
    page.wait_for_url(server + "/duplicates")
    assert page.locator(".group").count() >= 1
    assert page.locator(".group .note", has_text="exact copy").count() == 1
    n, broken = images_loaded(page)
    assert n == page.locator(".group .card img").count() > 0 and not broken
    shot(page, "duplicates")
    page.get_by_role("link", name="Albums", exact=True).first.click()
    page.wait_for_url(server + "/albums")
    albums = page.locator(".album")
    assert albums.count() >= 1
    n, broken = images_loaded(page)
    assert n > 0 and not broken
    shot(page, "albums")
    count = int(albums.first.locator(".muted").inner_text().split()[0])
    albums.first.click()
    page.wait_for_url(server + "/albums/*")
    assert page.locator(".card").count() == count
    images_loaded(page)
    page.locator(".card .more").first.click()  # more like this, from an album
    page.wait_for_url("**/search?like=*")
    assert page.locator(".hit").count() >= 1
