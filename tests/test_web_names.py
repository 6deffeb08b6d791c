"""A file whose name is not valid UTF-8 (``b"caf\\xe9.png"``, Latin-1 bytes) on every surface of
the gallery's search pages, through the real server (uvicorn on loopback): the search page and
its JSON, "more like this", the thumbnail, the original, the picture of why, the duplicates and
the albums answer 200 and show the name as :func:`convscope.files.printable_path` does
(``caf\\xe9.png``); the JSON's ``path`` is the exact name, written as the CLI's ``--json`` writes
it (the undecodable byte as ``\\udce9``).
"""
from __future__ import annotations

import html
import json
import os

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")

from convscope.files import printable_path  # noqa: E402
from convscope.index import Index  # noqa: E402
from convscope.web import create_app  # noqa: E402

from tests.served import serving  # noqa: E402
from tests.test_web_search import search_model  # noqa: E402

NAME = b"caf\xe9.png"  # Latin-1: not UTF-8
SHOWN = "caf\\xe9.png"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("web-names")
    photos = root / "photos"
    photos.mkdir()
    odd = os.path.join(os.fsencode(photos), NAME)
    try:
        with open(odd, "wb") as f:
            Image.fromarray(skimage.data.chelsea()[::2, ::2]).save(f, format="PNG")
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not valid UTF-8")
    with open(odd, "rb") as f:  # a byte copy: a duplicate group that holds the odd name
        (photos / "copy.png").write_bytes(f.read())
    Image.fromarray(skimage.data.astronaut()[::2, ::2]).save(photos / "astronaut.png")
    Index.build(search_model(), [photos], root / "index", batch_size=8, workers=0, progress=False).close()
    return root


@pytest.fixture(scope="module")
def base(library):
    with serving(create_app(index=library / "index", model=search_model())) as url:
        yield url


def get(base, url, **params):
    r = httpx.get(base + url, params=params or None, timeout=60)
    assert r.status_code == 200, (url, r.status_code, r.text[:400])
    return r


def test_printable_path_shows_the_byte():
    assert printable_path(os.fsdecode(NAME)) == SHOWN


def test_search_json_and_page_show_the_name(base, library):
    data = get(base, "/api/search", q="entity").json()
    odd = next(r for r in data["results"] if os.fsencode(r["path"]).endswith(NAME))
    assert odd["name"] == SHOWN
    assert os.fsencode(odd["path"]) == os.path.join(os.fsencode(library / "photos"), NAME)  # exact
    assert "\\udce9" in get(base, "/api/search", q="entity").text  # as the CLI's --json writes it
    page = html.unescape(get(base, "/search", q="entity").text)
    assert SHOWN in page and "\udce9" not in page
    # the files behind its links: by id and entry, whatever the name
    assert get(base, odd["thumb"]).headers["content-type"] == "image/jpeg"
    original = get(base, odd["file"])
    with open(os.fsencode(odd["path"]), "rb") as f:
        assert original.content == f.read()
    assert get(base, odd["explain"]).content[:2] == b"\xff\xd8"
    # more like this, from its own link
    like = get(base, odd["like"].replace("/search", "/api/search", 1)).json()
    assert like["mode"] == "like" and like["query"]["name"] == SHOWN
    assert json.loads(json.dumps(like["query"]["like"])) == odd["path"]
    assert SHOWN in html.unescape(get(base, odd["like"]).text)
    # a like of a file the index does not hold: said, with the name shown, not a 500
    gone = os.fsencode(library / "photos") + b"/gone-caf%E9.png"
    r = httpx.get(base + "/api/search?like=" + gone.decode("ascii"), timeout=60)
    assert r.status_code == 404 and r.json()["error"].startswith("'gone-caf\\xe9.png' is not a file of this index")
    r = httpx.get(base + "/search?like=" + gone.decode("ascii"), timeout=60)
    assert r.status_code == 404 and "'gone-caf\\xe9.png' is not a file of this index" in html.unescape(r.text)


def test_duplicates_and_albums_show_the_name(base):
    groups = get(base, "/api/duplicates").json()["groups"]
    group = next(g["files"] for g in groups if SHOWN in [f["name"] for f in g["files"]])
    copy = next(f for f in group if f["name"] in (SHOWN, "copy.png") and f.get("copy_of"))  # the later of the two
    assert {copy["name"], copy["copy_of"]} == {SHOWN, "copy.png"}
    page = html.unescape(get(base, "/duplicates").text)
    assert SHOWN in page and "\udce9" not in page
    albums = get(base, "/api/albums").json()["albums"]
    album = next(a for a in albums if SHOWN in [f["name"] for f in a["files"]])
    assert SHOWN in html.unescape(get(base, "/albums").text)
    assert SHOWN in html.unescape(get(base, album["url"]).text)
    assert SHOWN in [f["name"] for f in get(base, "/api" + album["url"]).json()["files"]]
