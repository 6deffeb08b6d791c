"""The rest follows (issue 24): a gallery whose atlas has its patches cut on demand cuts every
patch it lacks in the background, layer by layer from the first, as batch work on the model
thread; a unit a page asks for meanwhile is served before the background reaches it, and the
patches are the build's, byte for byte."""
from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from convscope import data
from convscope.atlas import Atlas, build
from convscope.atlas.store import Atlas as AtlasStore
from convscope.web import create_app
from convscope.web.fill_pages import cut_in_background
from tests.on_demand import ON_DEMAND, model, photos, reference  # noqa: F401 (fixtures)
from tests.served import serving
from tests.test_atlas import _files

pytestmark = pytest.mark.usefixtures("one_thread")


def _wait(check, seconds: float = 60.0, every: float = 0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_background_cutting_goes_layer_by_layer_and_a_page_asked_unit_goes_first(model, photos, reference, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "atlas"
    atlas = build(model, photos, out, patches=False, **ON_DEMAND)
    layers = atlas.layers
    assert atlas.patches_on_demand and sum(cut for cut, _n in atlas.patch_counts().values()) == 0
    total = sum(n for _cut, n in atlas.patch_counts().values())
    atlas.close()

    # every photo read takes a while, so the background is still on the first layers when the page asks
    load = data.load_image_hashed
    monkeypatch.setattr(data, "load_image_hashed", lambda path: (time.sleep(0.1), load(path))[1])
    records: list[tuple[str, list[int]]] = []  # every record of patches, in order
    set_patches = AtlasStore.set_patches

    def logged(self, layer, cut, images):
        set_patches(self, layer, cut, images)
        records.append((layer, sorted(cut)))

    monkeypatch.setattr(AtlasStore, "set_patches", logged)
    app = create_app(out, model=model, fill={"featvis": False})
    asked_layer, asked_unit = layers[-1], 3
    with serving(app) as url, httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as http:
        assert http.get("/api/fill").json() == {"cutting": None}
        assert cut_in_background(app) and not cut_in_background(app)  # once
        _wait(lambda: records)  # the background has begun, on the first layer
        assert records[0][0] == layers[0]
        home = http.get("/").text
        assert "Cutting patches:" in home and f"of {total:,} cut" in home  # the banner, with counts
        cutting = http.get("/api/fill").json()["cutting"]
        assert cutting["state"] == "cutting" and cutting["total"] == total and cutting["layers"] == len(layers)
        # a person opens a unit of the last layer: it is served before the background gets there
        assert http.post(f"/api/layers/{asked_layer}/units/{asked_unit}/fill").status_code in (200, 202)
        answer = _wait(lambda: (a := http.get(f"/api/layers/{asked_layer}/units/{asked_unit}/fill").json())["status"]
                       in ("done", "error") and a)
        assert answer["status"] == "done", answer
        page = http.get(f"/api/layers/{asked_layer}/units/{asked_unit}").json()
        assert all(ex["patch"] for ex in page["examples"])
        background = http.get("/api/fill").json()["cutting"]
        assert background["state"] == "cutting" and background["layer"] != asked_layer  # not there yet
        _wait(lambda: http.get("/api/fill").json()["cutting"]["state"] in ("done", "error"))
        final = http.get("/api/fill").json()["cutting"]
        assert final["state"] == "done" and final["done"] == final["total"] == total and final["unreadable"] == 0
        assert "Cutting patches" not in http.get("/").text
        tops = http.get(f"/api/layers/{layers[0]}").json()
        assert tops["missing_tops"] == 0 and all(u["patch"] for u in tops["units"])

    # the unit the page asked for was recorded before any other of its layer, by a page's fill
    first_of_last = next(i for i, r in enumerate(records) if r[0] == asked_layer)
    assert records[first_of_last][1] == [asked_unit]
    # the background recorded layer after layer, in network order
    order = [layers.index(layer) for layer, _units in records]
    background = [o for i, o in enumerate(order) if i != first_of_last]
    assert background == sorted(background) and set(background) == set(range(len(layers)))
    # every example has its patch, the build's: the same rows and files, byte for byte (the unit
    # the page opened has its projections too: a finished atlas's unit page fills them)
    with Atlas.open(out) as cut:
        assert all(c == n for c, n in cut.patch_counts().values())
        assert not any(cut.lacking_patches(layer) for layer in layers)
    assert _patch_rows(out) == _patch_rows(reference)
    patches = lambda files: {k: v for k, v in files.items() if k.startswith("patches/")}  # noqa: E731
    assert patches(_files(out)) == patches(_files(reference)) and patches(_files(reference))


def _patch_rows(folder) -> tuple[list, list]:
    conn = sqlite3.connect(folder / "atlas.sqlite")
    try:
        examples = conn.execute("SELECT layer, unit, rank, image, value, y, x, box_top, box_left, box_bottom, "
                                "box_right, orig_top, orig_left, orig_bottom, orig_right, patch FROM examples "
                                "ORDER BY layer, unit, rank").fetchall()
        images = conn.execute("SELECT * FROM images ORDER BY id").fetchall()
    finally:
        conn.close()
    return examples, images


def test_cut_layer_skips_an_unreadable_photo_and_cuts_the_rest(model, photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    copies = []
    for p in photos[:-1]:  # the readable ones
        target = folder / p.rsplit("/", 1)[1]
        target.write_bytes(open(p, "rb").read())
        copies.append(str(target))
    out = tmp_path / "atlas"
    atlas = build(model, copies, out, patches=False, **ON_DEMAND)
    layer = atlas.layers[0]
    gone = atlas.examples(layer, 0)[0]["path"]
    open(gone, "ab").write(b"changed")  # its bytes differ from the scan's now
    from convscope.atlas.fill import Filler

    filler = Filler(atlas, model, featvis=False)
    done = filler.cut_layer(layer)
    assert done["done"] and [p for p, _why in done["unreadable"]] == [gone]
    assert "changed since the scan" in done["unreadable"][0][1]
    lacking = atlas.lacking_patches(layer)
    on_gone = {(u, ex["rank"]) for u in range(atlas.layer(layer)["shape"][0]) for ex in atlas.examples(layer, u)
               if ex["path"] == gone}
    assert {(u, r) for u, ranks in lacking.items() for r in ranks} == on_gone and on_gone
    again = filler.cut_layer(layer)  # nothing else to cut
    assert again["patches"] == 0 and again["done"]


def test_serve_cuts_the_rest_in_the_background_unless_told_not_to_fill(model, photos, tmp_path, monkeypatch):
    """`convscope serve ATLAS` starts the background cutting for the app it serves (the demo
    did; serve alone did not); with --no-fill it fills and cuts nothing."""
    from click.testing import CliRunner

    from convscope.cli import main
    from convscope.cli import serve as serve_cli
    from convscope.web import fill_pages

    out = tmp_path / "atlas"
    build(model, photos, out, patches=False, **ON_DEMAND).close()
    served, started = [], []
    monkeypatch.setattr(serve_cli, "_run_server", lambda app, host, port: served.append(app))
    monkeypatch.setattr(fill_pages, "cut_in_background", lambda app: started.append(app) or True)
    runner = CliRunner()
    r = runner.invoke(main, ["serve", str(out)])
    assert r.exit_code == 0, r.output
    assert len(served) == 1 and started == served
    r = runner.invoke(main, ["serve", str(out), "--no-fill"])
    assert r.exit_code == 0, r.output
    assert len(served) == 2 and started == served[:1]


def test_an_atlas_with_every_patch_cut_has_nothing_cut_and_no_bar(model, reference, monkeypatch, capfd):
    """What `serve` mostly opens: an atlas whose build cut every patch. The background cutting
    counts them all as cut, ends at once, and shows no `cutting patches` bar or page line."""
    monkeypatch.setenv("CONVSCOPE_PROGRESS", "1")
    app = create_app(reference, model=model, fill={"featvis": False})
    with serving(app) as url, httpx.Client(base_url=url, timeout=30, headers={"Origin": url}) as http:
        assert cut_in_background(app)
        cutting = _wait(lambda: (c := http.get("/api/fill").json()["cutting"]) and c["state"] == "done" and c)
        with AtlasStore.open(reference) as atlas:
            total = sum(n for _cut, n in atlas.patch_counts().values())
        assert total > 0 and cutting["done"] == cutting["total"] == total
        assert "Cutting patches" not in http.get("/").text
    assert "cutting patches" not in capfd.readouterr().err
