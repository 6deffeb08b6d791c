"""Browsing an index by place and by time (:mod:`convscope.index.browse`) and its pages
(:mod:`convscope.web.browse_pages`): counts by country -> region -> city and by year -> month,
the files of a place or a month newest first, the date taken else the file's time, an index
without the place columns, and the pages' escaping and errors.

The index is built once per session from eight scikit-image photos: six JPEGs with an EXIF
date (one named with a byte that is not UTF-8), two PNGs with none whose file times are set,
with tests/test_index.py's random ResNet-18 on 64 px inputs (tests/test_web_search.py's).
Places are set by :func:`with_places` (ALTER TABLE and UPDATE: the places signal is not on this
branch; swap it for photos with real EXIF GPS once it is).
"""
from __future__ import annotations

import calendar
import collections
import datetime
import os
import shutil
import sqlite3
from pathlib import Path

import markupsafe
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.index import Index  # noqa: E402
from convscope.index import browse  # noqa: E402
from convscope.index.store import DB_NAME, db_path  # noqa: E402
from convscope.web import create_app  # noqa: E402

from tests.test_web_search import search_model  # noqa: E402

CAFE = b"caf\xe9.jpg"  # Latin-1: not UTF-8
#: file name -> (scikit-image picture, EXIF DateTimeOriginal or None, file time (UTC) for those without).
PHOTOS = {
    "astronaut.jpg": ("astronaut", "2015:05:02 14:03:00", None),
    "clock.jpg": ("clock", "2015:05:02 18:30:00", None),
    "chelsea.jpg": ("chelsea", "2015:05:20 09:00:00", None),
    "coffee.jpg": ("coffee", "2015:07:04 12:00:00", None),
    "rocket.jpg": ("rocket", "2008:08:15 10:00:00", None),
    CAFE: ("coins", "2008:08:16 11:00:00", None),
    "camera.png": ("camera", None, (2019, 3, 10, 12, 0, 0)),
    "moon.png": ("moon", None, (2019, 3, 31, 23, 30, 0)),  # UTC: still March
}
IRISH = "O'Brien's \"<Town>\" & Co"  # a name that HTML must escape
#: file name -> (lat, lon, city, region, country, country_code); the others have no place.
PLACES = {
    "astronaut.jpg": (45.7640, 4.8357, "Lyon", "Auvergne-Rhône-Alpes", "France", "FR"),
    "clock.jpg": (45.7600, 4.8400, "Lyon", "Auvergne-Rhône-Alpes", "France", "FR"),
    "chelsea.jpg": (45.7700, 4.8300, "Lyon", "Auvergne-Rhône-Alpes", "France", "FR"),
    "rocket.jpg": (44.6590, 11.1290, "Sant'Agata Bolognese", "Emilia-Romagna", "Italy", "IT"),
    CAFE: (44.4949, 11.3426, "Bologna", "Emilia-Romagna", "Italy", "IT"),
    "coffee.jpg": (52.6680, -8.6305, IRISH, None, "Ireland", "IE"),
}
#: The columns the places signal adds (the lead's contract), with their SQL types.
PLACE_COLUMNS = {"lat": "REAL", "lon": "REAL", "city": "TEXT", "region": "TEXT", "country": "TEXT",
                 "country_code": "TEXT", "utc_offset": "INTEGER", "taken_from": "TEXT", "notes": "TEXT"}


def _name(name) -> str:
    return os.fsdecode(name)


def browse_library(factory) -> Path:
    """``photos/`` (:data:`PHOTOS`) indexed into ``index/``, built once per session in its base
    folder, whichever test module asks first."""
    import skimage.data

    root = factory.getbasetemp() / "browse"
    if (root / "index" / DB_NAME).exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    photos = root / "photos"
    photos.mkdir(parents=True)
    for name, (picture, taken, mtime) in PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, picture)()[::4, ::4]).convert("RGB")
        path = os.path.join(os.fsencode(photos), name if isinstance(name, bytes) else os.fsencode(name))
        if taken:
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
            image.save(path, "JPEG", exif=exif, quality=85)
        else:
            image.save(path, "PNG")
            seconds = calendar.timegm(mtime)
            os.utime(path, (seconds, seconds))
    Index.build(search_model(), [photos], root / "index", batch_size=8, workers=0, progress=False).close()
    return root


def with_places(index: Path, out: Path) -> Path:
    """A copy of ``index`` in ``out`` whose files have the places of :data:`PLACES`: the columns
    added (where the index lacks them) and filled. The one stand-in for the places signal."""
    shutil.copytree(index, out)
    with sqlite3.connect(out / DB_NAME) as conn:
        have = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
        for column, kind in PLACE_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")
        photos = os.path.join(os.path.dirname(os.path.abspath(index)), "photos")
        for name, (lat, lon, city, region, country, code) in PLACES.items():
            path = db_path(os.path.join(photos, _name(name)))
            done = conn.execute("UPDATE files SET lat = ?, lon = ?, city = ?, region = ?, country = ?, country_code = ?, "
                                "taken_from = 'exif' WHERE path = ?", (lat, lon, city, region, country, code, path))
            assert done.rowcount == 1, name
    conn.close()
    return out


def without_places(index: Path, out: Path) -> Path:
    """A copy of ``index`` in ``out`` laid out as before places: none of their columns."""
    shutil.copytree(index, out)
    with sqlite3.connect(out / DB_NAME) as conn:
        have = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
        for index in [r[1] for r in conn.execute("PRAGMA index_list(files)") if r[3] == "c"]:  # made by CREATE INDEX
            if {r[2] for r in conn.execute(f"PRAGMA index_info('{index}')")} & set(PLACE_COLUMNS):
                conn.execute(f"DROP INDEX '{index}'")  # (a column in an index cannot be dropped)
        for column in PLACE_COLUMNS:
            if column in have:
                conn.execute(f"ALTER TABLE files DROP COLUMN {column}")
    conn.close()
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return browse_library(tmp_path_factory)


@pytest.fixture(scope="module")
def placed(library, tmp_path_factory):
    with Index.open(with_places(library / "index", tmp_path_factory.mktemp("placed") / "index")) as idx:
        yield idx


@pytest.fixture(scope="module")
def old(library, tmp_path_factory):
    with Index.open(without_places(library / "index", tmp_path_factory.mktemp("old") / "index")) as idx:
        yield idx


def names(page: browse.FilePage) -> list[str]:
    return [os.path.basename(f["path"]) for f in page.files]


def row_of(index, name) -> int:
    """The entry row of the indexed photo called ``name``."""
    return next(f["first_row"] for f in index.files().values() if os.path.basename(f["path"]) == _name(name))


# --------------------------------------------------------------------------- times


def test_timeline_counts_years_and_months_by_date_taken_else_file_time(old):
    tree = old.timeline()
    got = [(y.name, y.count, y.by_file, [(m.name, m.key, m.count, m.by_file) for m in y.children]) for y in tree]
    assert got == [("2008", 2, 0, [("August", 8, 2, 0)]),
                   ("2015", 4, 0, [("May", 5, 3, 0), ("July", 7, 1, 0)]),
                   ("2019", 2, 2, [("March", 3, 2, 2)])]
    may = tree[1].children[0]
    assert (may.row, may.date) == (row_of(old, "chelsea.jpg"), "2015-05-20T09:00:00")  # its newest
    assert tree[2].children[0].date == "2019-03-31T23:30:00"


def test_timeline_equals_a_plain_loop_over_the_records(old):
    want = collections.Counter()
    for f in old.files().values():
        if f["taken"]:
            want[f["taken"][:7]] += 1
        else:
            when = datetime.datetime.fromtimestamp(f["mtime_ns"] / 1e9, datetime.timezone.utc)
            want[f"{when:%Y-%m}"] += 1
    got = {f"{y.key:04d}-{m.key:02d}": m.count for y in old.timeline() for m in y.children}
    assert got == dict(want) and sum(got.values()) == len(PHOTOS)


def test_the_files_of_a_month_or_year_newest_first_a_page_at_a_time(old):
    may = browse.period_files(old, 2015, 5)
    assert names(may) == ["chelsea.jpg", "clock.jpg", "astronaut.jpg"] and may.total == 3
    assert [f["date"] for f in may.files] == ["2015-05-20T09:00:00", "2015-05-02T18:30:00", "2015-05-02T14:03:00"]
    assert {f["dated_by"] for f in may.files} == {"taken"}
    assert names(browse.period_files(old, 2015, 5, offset=1, limit=1)) == ["clock.jpg"]
    assert names(browse.period_files(old, 2015)) == ["coffee.jpg", "chelsea.jpg", "clock.jpg", "astronaut.jpg"]
    march = browse.period_files(old, 2019, 3)
    assert names(march) == ["moon.png", "camera.png"] and {f["dated_by"] for f in march.files} == {"file"}
    assert march.files[0]["date"] == "2019-03-31T23:30:00"
    assert browse.period_files(old, 2019, 4).total == 0 and browse.period_files(old, 2016).files == []
    august = browse.period_files(old, 2008, 8)
    assert [os.fsencode(os.path.basename(f["path"])) for f in august.files] == [CAFE, b"rocket.jpg"]  # exact bytes


def test_a_taken_date_that_is_not_a_date_falls_back_to_the_file_time(library, tmp_path):
    out = shutil.copytree(library / "index", tmp_path / "index")
    with sqlite3.connect(out / DB_NAME) as conn:
        conn.execute("UPDATE files SET taken = '2015-13-40T00:00:00' WHERE path LIKE '%/astronaut.jpg'")
    conn.close()
    with Index.open(out) as idx:
        record = next(f for f in idx.files().values() if f["path"].endswith("/astronaut.jpg"))
        when = datetime.datetime.fromtimestamp(record["mtime_ns"] / 1e9, datetime.timezone.utc)
        months = {(y.key, m.key): m.count for y in idx.timeline() for m in y.children}
        assert months[2015, 5] == 2 and months[when.year, when.month] >= 1
        found = browse.period_files(idx, when.year, when.month)
        assert "astronaut.jpg" in names(found)
        assert next(f for f in found.files if f["path"] == record["path"])["dated_by"] == "file"


# --------------------------------------------------------------------------- places


def test_places_count_countries_regions_and_cities(placed):
    tree = placed.places()
    got = [(c.name, c.code, c.count, [(r.name, r.key, r.count, [(t.name, t.count) for t in r.children])
                                      for r in c.children]) for c in tree]
    assert got == [("France", "FR", 3, [("Auvergne-Rhône-Alpes", "Auvergne-Rhône-Alpes", 3, [("Lyon", 3)])]),
                   ("Italy", "IT", 2, [("Emilia-Romagna", "Emilia-Romagna", 2,
                                        [("Bologna", 1), ("Sant'Agata Bolognese", 1)])]),
                   ("Ireland", "IE", 1, [("(no region)", None, 1, [(IRISH, 1)])])]
    lyon = tree[0].children[0].children[0]
    assert lyon.lat == pytest.approx((45.7640 + 45.7600 + 45.7700) / 3)
    assert lyon.lon == pytest.approx((4.8357 + 4.8400 + 4.8300) / 3)
    assert (lyon.row, tree[0].row) == (row_of(placed, "chelsea.jpg"),) * 2  # the newest photo's
    italy = tree[1]
    assert italy.row == row_of(placed, CAFE) and italy.date == "2008-08-16T11:00:00"


def test_the_files_of_a_place_newest_first(placed):
    lyon = browse.place_files(placed, "France", "Auvergne-Rhône-Alpes", "Lyon", any_region=False, any_city=False)
    assert names(lyon) == ["chelsea.jpg", "clock.jpg", "astronaut.jpg"] and lyon.total == 3
    first = lyon.files[0]
    assert (first["city"], first["region"], first["country"], first["country_code"]) == (
        "Lyon", "Auvergne-Rhône-Alpes", "France", "FR")
    assert (first["lat"], first["lon"], first["taken_from"]) == (45.77, 4.83, "exif")
    italy = browse.place_files(placed, "Italy")
    assert [os.fsencode(os.path.basename(f["path"])) for f in italy.files] == [CAFE, b"rocket.jpg"]
    assert names(browse.place_files(placed, "Ireland", None, IRISH, any_region=False)) == ["coffee.jpg"]
    assert browse.place_files(placed, "Ireland", "Munster").total == 0
    assert names(browse.place_files(placed, "France", limit=2, offset=2)) == ["astronaut.jpg"]


def test_an_index_without_the_place_columns_has_no_places_and_its_timeline(old, placed):
    assert not browse.has_places(old) and browse.has_places(placed)
    assert old.places() == [] and browse.place_files(old, "France").files == []
    assert [(y.key, y.count) for y in old.timeline()] == [(y.key, y.count) for y in placed.timeline()]
    may = browse.period_files(old, 2015, 5)
    assert may.files[0]["city"] is None and may.files[0]["taken_from"] is None  # the columns read as None


# --------------------------------------------------------------------------- the pages


@pytest.fixture(scope="module")
def client(placed):
    with TestClient(create_app(index=placed, model=search_model()), headers={"Origin": "http://testserver"}) as c:
        yield c


@pytest.fixture(scope="module")
def old_client(old):
    with TestClient(create_app(index=old, model=search_model()), headers={"Origin": "http://testserver"}) as c:
        yield c


def test_places_json_drills_country_region_city(client):
    top = client.get("/api/places").json()
    assert top["note"] is None and (top["located"], top["files"]) == (6, 8)
    assert [(p["name"], p["count"], p["url"]) for p in top["places"]] == [
        ("France", 3, "/places?country=France"), ("Italy", 2, "/places?country=Italy"),
        ("Ireland", 1, "/places?country=Ireland")]
    assert all(p["thumb"].startswith("/thumbs/") for p in top["places"])
    ireland = client.get("/api/places?country=Ireland").json()
    assert ireland["level"] == "country" and ireland["places"][0]["name"] == "(no region)"
    city = ireland["places"][0]["places"][0]
    assert city["name"] == IRISH and city["url"] == "/places?country=Ireland&region=&city=O%27Brien%27s+%22%3CTown%3E%22+%26+Co"
    data = client.get(city["url"].replace("/places", "/api/places")).json()
    assert data["level"] == "city" and [p["name"] for p in data["photos"]] == ["coffee.jpg"]
    assert data["photos"][0]["where"] == f"{IRISH}, Ireland"
    lyon = client.get("/api/places", params={"country": "France", "region": "Auvergne-Rhône-Alpes", "city": "Lyon"}).json()
    assert [p["name"] for p in lyon["photos"]] == ["chelsea.jpg", "clock.jpg", "astronaut.jpg"]
    assert lyon["photos"][0]["when"] == "20 May 2015, 09:00" and lyon["photos"][0]["dated_by"] == "taken"
    assert lyon["trail"][-1] == {"name": "Lyon", "url": lyon["place"]["url"]}
    assert client.get(lyon["photos"][0]["thumb"]).headers["content-type"] == "image/jpeg"
    assert client.get(lyon["photos"][0]["file"]).status_code == 200


def test_the_pages_escape_names_and_show_the_non_utf8_one(client):
    page = client.get("/places", params={"country": "Ireland"}).text
    assert IRISH not in page and str(markupsafe.escape(IRISH)) in page
    italy = client.get("/places", params={"country": "Italy", "region": "Emilia-Romagna", "city": "Bologna"}).text
    assert "caf\\xe9.jpg" in italy and "Bologna, Emilia-Romagna, Italy" in italy
    assert "8 August 2008" not in italy and "16 August 2008, 11:00" in italy
    listed = client.get("/api/places?country=Italy&region=Emilia-Romagna&city=Bologna").json()["photos"][0]
    assert os.fsencode(listed["path"]).endswith(b"/" + CAFE)  # the JSON path is exact


def test_timeline_json_and_pages(client):
    top = client.get("/api/timeline").json()
    assert [(y["name"], y["count"]) for y in top["periods"]] == [("2019", 2), ("2015", 4), ("2008", 2)]  # newest first
    assert top["by_file"] == 2 and [m["name"] for m in top["periods"][1]["periods"]] == ["May", "July"]
    march = client.get("/api/timeline?year=2019&month=3").json()
    assert [p["name"] for p in march["photos"]] == ["moon.png", "camera.png"]
    assert march["photos"][0]["when"] == "31 March 2019, 23:30 UTC" and march["by_file"] == 2
    page = client.get("/timeline?year=2019&month=3").text
    assert "2 with no date taken, placed by the file" in page and page.count(">file time<") == 2
    assert "<h1>March 2019</h1>" in page
    year = client.get("/timeline?year=2015").text
    assert 'href="/timeline?year=2015&amp;month=5"' in year and 'href="/timeline?year=2015&amp;month=7"' in year
    home = client.get("/search").text
    assert 'href="/places"' in home and 'href="/timeline"' in home


@pytest.mark.parametrize("url, status, says", [
    ("/api/places?country=Frnace", 404, "unknown country 'Frnace'. Close matches: France."),
    ("/api/places?country=France&region=Auvergne&city=Lyon", 404, "unknown region 'Auvergne'"),
    ("/api/places?country=France&region=Auvergne-Rh%C3%B4ne-Alpes&city=Lyn", 404, "Close matches: Lyon."),
    ("/api/places?country=France&region=Auvergne-Rh%C3%B4ne-Alpes&city=Lyon&page=2", 404,
     "there is no page 2; pages run from 1 to 1"),
    ("/api/timeline?year=1999", 404, "unknown year '1999'"),
    ("/api/timeline?year=abc", 400, "year must be a whole number, got 'abc'"),
    ("/api/timeline?year=2015&month=13", 404, "there is no month 13; months run from 1 to 12"),
    ("/api/timeline?year=2015&month=0", 404, "there is no month 0; months run from 1 to 12"),
    ("/api/places?country=", 404, "unknown country ''"),
    ("/api/timeline?year=2015&month=6", 404, "unknown month 'June'. Close matches: July."),
    ("/api/timeline?year=99999999999999999999999", 404, "there is no year"),
])
def test_bad_places_and_periods_get_one_line(client, url, status, says):
    r = client.get(url)
    assert r.status_code == status and says in r.json()["error"] and "\n" not in r.json()["error"]


def test_an_unknown_place_page_escapes_what_the_url_asked(client):
    r = client.get("/places?country=%E9%22%3Cb%3Ebold")
    assert r.status_code == 404 and "<b>bold" not in r.text and "&lt;b&gt;bold" in r.text


def test_an_index_without_places_says_so_in_one_line(old_client, old):
    data = old_client.get("/api/places").json()
    assert data["places"] == [] and data["note"].startswith("No photo of this index has a GPS position.")
    assert f"convscope index --update --out {old.root}" in data["note"]
    page = old_client.get("/places").text
    assert 'id="no-places"' in page and "No photo of this index has a GPS position." in page
    assert old_client.get("/api/places?country=France").status_code == 404
    assert [y["name"] for y in old_client.get("/api/timeline").json()["periods"]] == ["2019", "2015", "2008"]
    assert old_client.get("/timeline?year=2008&month=8").status_code == 200


def test_a_server_without_an_index_says_why_on_the_browse_paths(web_atlas_dir):
    with TestClient(create_app(web_atlas_dir, fill=False)) as c:
        for url in ("/places", "/api/places?country=France", "/timeline", "/api/timeline?year=2015"):
            r = c.get(url)
            assert r.status_code == 404 and "has no places or timeline pages" in r.text
        assert 'href="/places"' not in c.get("/").text  # no link to what is not there


def test_a_country_page_shows_a_few_cities_of_each_region_and_links_the_rest(client, monkeypatch):
    from convscope.web import browse_pages

    monkeypatch.setattr(browse_pages, "CITIES_PREVIEW", 1)
    region = client.get("/api/places?country=Italy").json()["places"][0]
    assert [c["name"] for c in region["places"]] == ["Bologna"] and region["more"] == 1
    assert "and 1 more city of Emilia-Romagna" in client.get("/places?country=Italy").text
    assert [c["name"] for c in client.get(region["url"].replace("/places", "/api/places")).json()["places"]] == [
        "Bologna", "Sant'Agata Bolognese"]  # the region's own page: all of them


def test_what_a_tile_says_of_bad_values():
    from convscope.web.browse_pages import _offset, position_text, when_text

    assert position_text(45.764, -4.8357) == "45.7640° N, 4.8357° W"
    assert position_text("45.7", 4.8) is None and position_text(float("nan"), 0.0) is None and position_text(None, 1.0) is None
    assert (_offset(120), _offset(-330), _offset(7200), _offset("x")) == ("UTC+02:00", "UTC-05:30", None, None)
    assert when_text("2019-03-31T23:30:00", "file") == "31 March 2019, 23:30 UTC"
    assert when_text("2015-05-02", "taken") == "2 May 2015" and when_text(None, "taken") is None
