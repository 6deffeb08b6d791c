"""The concept pages of the gallery (``convscope.web.concept_pages``): teach a concept from two
results, its page lists them, remove one, forget; a cross-origin write is refused (403), an
oversized body too (413), a bad name gets one line (400); and in Chromium, mark two results
"this one", teach them as a name, then search the name and see them.

The index is tests/test_concepts.py's: scikit-image's samples with planted groups (chelsea the
cat and coffee, seven transformed copies each), indexed with the embedded EfficientNet-Lite0.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from convscope.index import Index, concepts
from convscope.web import create_app
from tests.test_concepts import built, library, table  # noqa: F401 (fixtures)

SAME_ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def index_dir(built, tmp_path):  # noqa: F811
    out = tmp_path / "index"
    shutil.copytree(built, out)
    return out


@pytest.fixture
def client(index_dir, default_model):
    with TestClient(create_app(index=index_dir, model=default_model)) as c:
        yield c


def like(client, path) -> list[dict]:
    r = client.get("/api/search", params={"like": str(path), "top": 6})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_teach_from_two_results_list_remove_one_and_forget(client, library, index_dir):  # noqa: F811
    _, groups = library
    cat, coffee = groups["chelsea"], groups["coffee"]
    hits = like(client, cat[0])[:3]
    assert all(Path(h["path"]).name.startswith("chelsea") for h in hits)  # the planted copies come first
    r = client.post("/api/concepts/Rex", json={"examples": [hits[0]["entry"], hits[1]["entry"]]}, headers=SAME_ORIGIN)
    assert r.status_code == 200, r.text
    assert r.json()["concept"] == "Rex" and r.json()["examples"] == 2 and r.json()["url"] == "/concepts/Rex"

    listing = client.get("/concepts")
    assert listing.status_code == 200 and 'href="/concepts/Rex"' in listing.text
    assert client.get("/api/concepts").json()["concepts"][0]["examples"] == 2
    data = client.get("/api/concepts/rex").json()
    assert sorted(e["path"] for e in data["examples"]) == sorted(h["path"] for h in hits[:2])
    assert sorted(e["entry"] for e in data["examples"]) == sorted(h["entry"] for h in hits[:2])
    page = client.get("/concepts/rex")
    assert page.status_code == 200
    for h in hits[:2]:
        assert f'src="/thumbs/{h["entry"]}.jpg"' in page.text
    assert page.text.count('class="remove"') == 2
    # the name is a word of the search box now, and its results are the cat's copies
    found = client.get("/api/search", params={"q": "rex"}).json()["results"]
    entries = [h["entry"] for h in found]
    assert {hits[0]["entry"], hits[1]["entry"]} <= set(entries)
    assert found[0]["why"][0]["kind"] == "concept" and found[0]["why"][0]["concept"] == "Rex"
    assert all(Path(h["path"]).name.startswith("chelsea") for h in found[:4])
    assert [h["entry"] for h in data["results"]][:4] == entries[:4]  # the concept's page shows them
    # hover shows where the network saw the concept: the Grad-CAM of its score
    assert found[0]["explain"] == f"/concepts/Rex/why/{found[0]['entry']}.jpg"
    r = client.get(found[0]["explain"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    cam = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)
    photo = np.asarray(Image.open(io.BytesIO(client.get(f"/explain/{found[0]['entry']}.jpg?class=281").content))
                       .convert("RGB"), np.float32)
    assert cam.shape == photo.shape and cam.std() > 10 and np.abs(cam - photo).mean() > 1  # not the class's picture
    assert client.get(f"/concepts/Rex/why/{10**6}.jpg").status_code == 404

    # refine: a third example and a counter-example, by indexed path
    r = client.post("/api/concepts/rex", json={"examples": [hits[2]["entry"]], "counter": [str(coffee[0])]},
                    headers=SAME_ORIGIN)
    assert r.status_code == 200 and r.json()["examples"] == 3 and r.json()["counter_examples"] == 1
    assert r.json()["concept"] == "rex"  # the name as last given

    # remove one from the page's form (by SHA-256): back to the page, taught again from the rest
    sha = hashlib.sha256(Path(hits[0]["path"]).read_bytes()).hexdigest()
    r = client.post("/concepts/rex/remove", data={"example": sha}, headers=SAME_ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/concepts/rex"
    left = client.get("/api/concepts/rex").json()
    assert sorted(e["path"] for e in left["examples"]) == sorted(h["path"] for h in hits[1:3])
    # and one by the API, by path: the counter-example
    r = client.post("/api/concepts/rex/remove", json={"example": str(coffee[0])}, headers=SAME_ORIGIN)
    assert r.status_code == 200 and r.json()["counter_examples"] == 0
    r = client.post("/api/concepts/rex/remove", json={"example": str(coffee[0])}, headers=SAME_ORIGIN)
    assert r.status_code == 400 and "holds no example" in r.json()["error"]

    r = client.post("/api/concepts/REX/forget", headers=SAME_ORIGIN)
    assert r.status_code == 200 and r.json() == {"forgot": "rex", "examples": 2}
    assert client.get("/api/concepts").json() == {"concepts": []}
    r = client.get("/api/concepts/rex")
    assert r.status_code == 404 and "no concept 'rex'" in r.json()["error"]
    assert table(index_dir)[0] == []  # the database holds nothing of it


def test_writes_are_same_origin_bounded_and_checked(client, library, index_dir):  # noqa: F811
    _, groups = library
    cat = groups["chelsea"]
    row = Index.open(index_dir).file_of(cat[0])["first_row"]
    before = table(index_dir)
    r = client.post("/api/concepts/rex", json={"examples": [row]}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site request refused" in r.json()["error"]
    r = client.post("/api/concepts/rex", json={"examples": [row]})  # no Origin, no Referer
    assert r.status_code == 403
    r = client.post("/api/concepts/rex", content=b'{"examples": [' + b"1, " * 40_000 + b"1]}",
                    headers={**SAME_ORIGIN, "Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]
    r = client.post("/api/concepts/rex", json={"examples": list(range(201))}, headers=SAME_ORIGIN)
    assert r.status_code == 413 and "at most 200 photos" in r.json()["error"]
    for name, said in [("x" * 65, "at most 64 characters"), ("a%07b", "control characters"), ("%20", "cannot be empty")]:
        r = client.post(f"/api/concepts/{name}", json={"examples": [row]}, headers=SAME_ORIGIN)
        assert r.status_code == 400 and said in r.json()["error"] and "\n" not in r.json()["error"], (name, r.text)
    bad = [({"examples": ["/etc/passwd"]}, "not a file of this index"),
           ({"examples": [10**6]}, None),
           ({"examples": []}, "at least one example"),
           ({"examples": "12"}, "must be a list"),
           ({"photos": [row]}, "unknown field"),
           ({"examples": [True]}, "entry (a number) or an indexed path")]
    for body, said in bad:
        r = client.post("/api/concepts/rex", json=body, headers=SAME_ORIGIN)
        assert r.status_code in (400, 404), (body, r.text)
        assert said is None or said in r.json()["error"], (body, r.text)
    r = client.post("/api/concepts/rex", content=b"{not json", headers={**SAME_ORIGIN, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert client.post("/api/concepts/rex/forget", headers=SAME_ORIGIN).status_code == 404
    assert client.get("/concepts/nobody").status_code == 404
    assert table(index_dir) == before  # nothing was written
    assert len(concepts.load(Index.open(index_dir))) == 0


# --------------------------------------------------------------------------- in Chromium


@pytest.mark.browser
def test_mark_two_results_teach_and_search_the_name_in_chromium(index_dir, library, default_model):  # noqa: F811
    from tests.served import CHROMIUM, chromium, serving
    from tests.test_browser import images_loaded, shot

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    pytest.importorskip("uvicorn")
    _, groups = library
    errors = []
    with serving(create_app(index=index_dir, model=default_model)) as base, chromium() as browser:
        context = browser.new_context(viewport={"width": 1200, "height": 860})
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("response", lambda resp: resp.status >= 400 and errors.append(f"{resp.status} {resp.url}"))
        page.goto(base + "/search?" + __import__("urllib.parse").parse.urlencode({"like": str(groups["chelsea"][0])}))
        hits = page.locator(".hit")
        assert hits.count() >= 3
        chosen = [hits.nth(i).get_attribute("data-entry") for i in (0, 1)]
        assert page.locator(".teach-bar").is_hidden()
        for i in (0, 1):
            hits.nth(i).locator('[data-mark="example"]').click()
            assert hits.nth(i).locator('[data-mark="example"]').get_attribute("aria-pressed") == "true"
        hits.nth(2).locator('[data-mark="counter"]').click()
        hits.nth(2).locator('[data-mark="counter"]').click()  # and unmarked again
        bar = page.locator(".teach-bar")
        assert bar.is_visible() and bar.locator(".count").inner_text() == "2 this one, 0 not this one"
        bar.locator("input[name=name]").fill("our cat")
        bar.locator("button[type=submit]").click()
        link = bar.locator(".result a").first
        link.wait_for(timeout=60_000)
        assert "taught “our cat” (2 examples)" in link.inner_text()
        shot(page, "concept-teach")
        link.click()
        page.wait_for_url("**/search?q=our%20cat")
        n, broken = images_loaded(page)
        assert n >= 2 and not broken
        found = [page.locator(".hit").nth(i).get_attribute("data-entry") for i in range(page.locator(".hit").count())]
        assert set(chosen) <= set(found)
        assert "our cat" in page.locator(".hit").first.locator(".why").inner_text()
        page.locator(".hit .pic").first.hover()  # where the network saw the concept
        page.wait_for_function("() => { const i = document.querySelector('.hit img.cam'); "
                               "return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
        assert "/concepts/our%20cat/why/" in page.locator(".hit img.cam").first.get_attribute("src")
        shot(page, "concept-search")
        page.goto(base + "/concepts/our%20cat")
        assert page.locator(".card.example").count() == 2
        n, broken = images_loaded(page)
        assert not broken
        shot(page, "concept-page")
        page.locator(".card.example button.remove").first.click()  # the page's own form: same-origin
        page.wait_for_function("document.querySelectorAll('.card.example').length === 1", timeout=60_000)
        assert "1 example," in page.locator(".hero p.muted").inner_text()
        context.close()
    assert not errors, errors
