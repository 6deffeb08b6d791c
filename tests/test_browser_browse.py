"""The places and timeline pages in real headless Chromium: from the search page's links to
/places, a country, its region and a city's photos; /timeline, a year's month and its photos;
the note of an index without places. Screenshots go to ``artifacts/``.

As tests/test_browser.py: Debian's Chromium at /usr/bin/chromium and Playwright for Python. The
index is tests/test_browse.py's (its places set by its ``with_places``).
"""
from __future__ import annotations

import os

import pytest

from tests.served import serving
from tests.test_browser import CHROMIUM, browser, images_loaded, shot  # noqa: F401 (browser: a fixture)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]
uvicorn = pytest.importorskip("uvicorn")

from convscope.web import create_app  # noqa: E402

from tests.test_browse import IRISH, browse_library, with_places, without_places  # noqa: E402
from tests.test_web_search import search_model  # noqa: E402


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return browse_library(tmp_path_factory)


@pytest.fixture(scope="module")
def server(library, tmp_path_factory):
    index = with_places(library / "index", tmp_path_factory.mktemp("browser-placed") / "index")
    with serving(create_app(index=index, model=search_model())) as base:
        yield base


@pytest.fixture
def page(browser):  # noqa: F811
    """A page that fails its test on any script error or failed request."""
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    pg.on("response", lambda resp: resp.status >= 400 and errors.append(f"{resp.status} {resp.url}"))
    yield pg
    context.close()
    assert not errors, f"the page logged errors: {errors}"


def click(pg, locator) -> None:
    with pg.expect_navigation():
        locator.click()


def tiles(pg) -> list[tuple[str, str]]:
    """(name, count) of the place or period tiles on the page."""
    return [(t.locator(".album-name").inner_text(), t.locator(".count").inner_text())
            for t in pg.locator("a.album").all()]


def photos(pg) -> list[dict]:
    return [{"name": p.locator(".name").inner_text(), "where": p.locator(".where").inner_text(),
             "when": p.locator(".when").inner_text()} for p in pg.locator(".card.photo").all()]


def test_places_country_region_city_and_its_photos(server, page):
    page.goto(server + "/search")
    click(page, page.locator("header nav.tools").get_by_role("link", name="Places"))
    assert page.url == server + "/places"
    assert page.locator("h1").inner_text() == "Places"
    assert tiles(page) == [("France", "3 photos"), ("Italy", "2 photos"), ("Ireland", "1 photo")]
    n, broken = images_loaded(page)
    assert n == 3 and not broken  # each country's newest photo
    shot(page, "places")
    click(page, page.get_by_role("link", name="France"))
    assert page.locator("h1").inner_text() == "France"
    assert page.locator(".group.region h2 a").all_inner_texts() == ["Auvergne-Rhône-Alpes"]
    assert tiles(page) == [("Lyon", "3 photos")]
    shot(page, "places-country")
    click(page, page.get_by_role("link", name="Lyon"))
    assert page.locator("h1").inner_text() == "Lyon"
    assert page.locator("nav.crumbs").inner_text().split() == ["places", "/", "France", "/", "Auvergne-Rhône-Alpes", "/", "Lyon"]
    assert photos(page) == [
        {"name": "chelsea.jpg", "where": "Lyon, Auvergne-Rhône-Alpes, France", "when": "20 May 2015, 09:00"},
        {"name": "clock.jpg", "where": "Lyon, Auvergne-Rhône-Alpes, France", "when": "2 May 2015, 18:30"},
        {"name": "astronaut.jpg", "where": "Lyon, Auvergne-Rhône-Alpes, France", "when": "2 May 2015, 14:03"}]
    n, broken = images_loaded(page)
    assert n == 3 and not broken
    assert page.locator(".card.photo .why-link").count() == 3 and page.locator(".card.photo a.more").count() == 3
    shot(page, "places-city")
    click(page, page.locator("nav.crumbs").get_by_role("link", name="places"))
    click(page, page.get_by_role("link", name="Ireland"))
    assert tiles(page) == [(IRISH, "1 photo")]  # shown as written: quotes, <, & and all
    click(page, page.locator("a.album"))
    assert photos(page) == [{"name": "coffee.jpg", "where": f"{IRISH}, Ireland", "when": "4 July 2015, 12:00"}]


def test_timeline_year_month_and_its_photos(server, page):
    page.goto(server + "/search")
    click(page, page.locator("header nav.tools").get_by_role("link", name="Timeline"))
    assert page.locator("h1").inner_text() == "Timeline"
    assert page.locator(".group.year h2 a").all_inner_texts() == ["2019", "2015", "2008"]
    assert tiles(page) == [("March", "2 files · 2 by file time"), ("May", "3 files"), ("July", "1 file"),
                           ("August", "2 files")]
    assert "2 of them have none and are placed by their file's modification time" in page.locator("#by-file").inner_text()
    n, broken = images_loaded(page)
    assert n == 4 and not broken
    shot(page, "timeline")
    click(page, page.get_by_role("link", name="2015", exact=True))
    assert page.locator("h1").inner_text() == "2015" and tiles(page) == [("May", "3 files"), ("July", "1 file")]
    click(page, page.get_by_role("link", name="May"))
    assert page.locator("h1").inner_text() == "May 2015"
    assert [p["name"] for p in photos(page)] == ["chelsea.jpg", "clock.jpg", "astronaut.jpg"]
    n, broken = images_loaded(page)
    assert n == 3 and not broken
    page.goto(server + "/timeline?year=2019&month=3")
    got = photos(page)
    assert [(p["name"], p["where"], p["when"]) for p in got] == [
        ("moon.png", "no place", "31 March 2019, 23:30 UTC (file time)"),
        ("camera.png", "no place", "10 March 2019, 12:00 UTC (file time)")]
    assert page.locator(".card.photo .note.file-time").count() == 2
    shot(page, "timeline-month")


def test_an_index_without_places_says_so(library, tmp_path, browser):  # noqa: F811
    index = without_places(library / "index", tmp_path / "index")
    with serving(create_app(index=index, model=search_model())) as base:
        pg = browser.new_page()
        try:
            pg.goto(base + "/places")
            note = pg.locator("#no-places").inner_text()
            assert note == ("No photo of this index has a GPS position. Built before convscope indexed places? "
                            f"Run `convscope index --update --out {index}`.")
            assert pg.locator("a.album").count() == 0
            shot(pg, "places-none")
            pg.goto(base + "/timeline")
            assert pg.locator(".group.year h2 a").all_inner_texts() == ["2019", "2015", "2008"]
        finally:
            pg.close()
