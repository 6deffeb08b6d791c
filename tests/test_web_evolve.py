"""The gallery's pages of an evolve run (convscope.web.evolve_pages): a real tiny training run
evolved, its folder served; JSON against the Evolution it came from, pictures byte for byte,
folders that lack pieces, pictures confined to the run folder, and the pages in Chromium."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from convscope.evolve import evolve  # noqa: E402
from convscope.web import create_app  # noqa: E402
from convscope.evolve import save_cells  # noqa: E402
from convscope.web.evolve_pages import SETTLED, EvolvePages  # noqa: E402

from tests.test_evolve import LAYERS, PREP, StripeNet, stripes  # noqa: E402

from tests.served import CHROMIUM, chromium, serving  # noqa: E402
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EPOCHS = 3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def evolved(tmp_path_factory):
    """Three epochs of StripeNet on 192 pictures (a checkpoint each), evolved over 40 held-out
    photos (top 4, 3 units a layer), saved with its cells into ``run/``."""
    folder = tmp_path_factory.mktemp("evolve-web")
    x, y = stripes(192, 0)
    xt = torch.tensor((x - 0.5) / 0.25).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y)
    torch.manual_seed(0)
    net = StripeNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    paths = []
    for epoch in range(EPOCHS):
        for i in range(0, len(xt), 32):
            loss = nn.functional.cross_entropy(net(xt[i : i + 32]), yt[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
        paths.append(folder / f"epoch{epoch + 1}.pt")
        torch.save(net.state_dict(), paths[-1])
    photos = folder / "photos"
    photos.mkdir()
    for i, img in enumerate(stripes(40, 1)[0]):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(photos / f"{i:02d}.png")
    result = evolve(StripeNet, paths, [photos], LAYERS, count=3, top=4, preprocessing=PREP, device="cpu",
                    workers=0, progress=False)
    run = folder / "run"
    result.save(run, size=32)
    save_cells(result, run)
    (folder / "secret.png").write_bytes((run / "evolve-changes.png").read_bytes())  # outside the run
    return result, run


def app_for(run_dir):
    return create_app(pages=[lambda site: EvolvePages(site, run_dir)])


@pytest.fixture(scope="module")
def client(evolved):
    with TestClient(app_for(evolved[1])) as c:
        yield c


def kept(v: float) -> str:
    """An overlap as the page writes it (render.fmt with 2 digits: 0.5, 0.75, 1)."""
    return f"kept {v:.2f}".rstrip("0").rstrip(".")


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_run_as_json(client, evolved):
    result, _run = evolved
    data = client.get("/api/evolve").json()
    assert data["checkpoints"] == ["epoch1", "epoch2", "epoch3"] == result.checkpoints
    assert (data["top"], data["photos"], data["method"]) == (4, 40, "deconvnet")
    assert [L["name"] for L in data["layers"]] == LAYERS
    for L in data["layers"]:
        want = result.changes(L["name"])
        assert [(s["from"], s["to"]) for s in L["changes"]] == [(s["from"], s["to"]) for s in want]
        assert [s["overlap"] for s in L["changes"]] == pytest.approx([s["overlap"] for s in want])
        assert L["channels"] == result.layers[L["name"]].channels and L["drawn"] == 3
        means = result.layers[L["name"]].mean_overlap()
        # settled from the first step after which every step keeps at least SETTLED
        ok = [bool(m >= SETTLED) for m in means]
        expect = next((result.steps[s][0] for s in range(len(ok)) if all(ok[s:])), None)
        assert L["settled_from"] == expect
        assert client.get(L["grid"]).headers["content-type"] == "image/png"
    assert png(client.get(data["changes_plot"]).content).shape[2] == 3


def test_a_layer_as_json_with_its_pictures(client, evolved):
    result, _run = evolved
    ev = result.layers["relu2"]
    data = client.get("/api/evolve/relu2").json()
    assert [r["unit"] for r in data["units"]] == ev.units
    assert (data["prev"], data["next"]) == ("relu1", "relu3")
    for i, row in enumerate(data["units"]):
        u = row["unit"]
        assert [c["checkpoint"] for c in row["cells"]] == result.checkpoints
        assert [s["overlap"] for s in row["changes"]] == pytest.approx(ev.overlap[:, u].tolist())
        for c, cell in enumerate(row["cells"]):
            want = ev.cells[i][c]
            assert cell["value"] == pytest.approx(want.value) and (cell["y"], cell["x"]) == (want.y, want.x)
            assert cell["photo"] == Path(want.photo).name  # a name, no server path
            assert np.array_equal(png(client.get(cell["patch"]).content), want.patch)
            assert np.array_equal(png(client.get(cell["projection"]).content), want.projection)
    assert (data["method"], data["method_note"]) == ("deconvnet", None)
    first = client.get("/api/evolve/relu1").json()  # before any max-pool: guided backprop, and why
    assert first["method"] == "guided" and first["method_note"] == result.layers["relu1"].method_note
    assert "guided backprop is shown instead" in client.get("/evolve/relu1").text


def test_the_pages(client, evolved):
    result, _run = evolved
    page = client.get("/evolve")
    assert page.status_code == 200 and 'href="/evolve"' in page.text  # the header's link
    for name in LAYERS:
        assert f'href="/evolve/{name}"' in page.text
    layer = client.get("/evolve/relu3")
    ev = result.layers["relu3"]
    assert layer.status_code == 200
    assert layer.text.count('class="unit-row"') == len(ev.units)
    assert layer.text.count('class="cell"') == len(ev.units) * 3
    assert kept(ev.overlap[0, ev.units[0]]) in layer.text


def test_unknown_layers_and_pictures_outside_the_run(client, evolved, tmp_path):
    _result, run = evolved
    r = client.get("/api/evolve/relu22")
    assert r.status_code == 404 and "relu2" in r.json()["error"] and "\n" not in r.json()["error"]
    page = client.get("/evolve/relu22")
    assert page.status_code == 404 and "unknown layer" in page.text
    (run / "link.png").symlink_to(run.parent / "secret.png")
    (run / "fake.png").write_text("not a png")
    try:
        for bad in ("../secret.png", "%2e%2e/secret.png", "link.png", "fake.png", "evolve.jsonl", "evolve.json",
                    "cells", "/etc/passwd", "nothing.png"):
            r = client.get("/evolve-files/" + bad)
            assert r.status_code == 404, bad
            assert b"PNG" not in r.content[:8]
        assert client.get("/evolve-files/evolve-changes.png").status_code == 200
    finally:
        (run / "link.png").unlink()
        (run / "fake.png").unlink()


def test_folders_that_lack_pieces(evolved, tmp_path):
    _result, run = evolved
    with TestClient(app_for(tmp_path / "nowhere")) as c:
        r = c.get("/api/evolve")
        assert r.status_code == 404 and "is not a folder" in r.json()["error"]
        page = c.get("/evolve")
        assert page.status_code == 404 and "convscope evolve" in page.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(app_for(empty)) as c:
        assert "has no evolve.jsonl" in c.get("/api/evolve/relu1").json()["error"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "evolve.jsonl").write_text('{"layer": "relu1", "unit": null}\n')
    with TestClient(app_for(broken)) as c:
        r = c.get("/evolve")
        assert r.status_code == 404 and "malformed evolve.jsonl" in r.text
    old = tmp_path / "old"  # written by Evolution.save alone: no cells, the grid is shown
    old.mkdir()
    for f in run.glob("evolve*"):
        if f.name != "evolve.json":
            shutil.copy(f, old / f.name)
    with TestClient(app_for(old)) as c:
        page = c.get("/evolve/relu1")
        assert page.status_code == 200 and "no evolve.json" in page.text and 'class="unit-row"' not in page.text
        assert 'src="/evolve-files/evolve-relu1.png"' in page.text
        assert c.get("/api/evolve").json()["layers"][0]["drawn"] is None


# --------------------------------------------------------------------------- Chromium


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_the_evolve_page_in_chromium(evolved):
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("uvicorn")
    result, run = evolved
    with serving(app_for(run)) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/evolve")
        assert page.locator("#evolve-layers tbody tr").count() == len(LAYERS)
        page.click("text=relu2")
        page.wait_for_url("**/evolve/relu2")
        page.wait_for_load_state("load")
        ev = result.layers["relu2"]
        rows = page.locator("#evolve-grid tbody tr.unit-row")
        assert rows.count() == len(ev.units)
        assert page.locator("#evolve-grid thead th.ckpt").all_inner_texts() == result.checkpoints
        for i, u in enumerate(ev.units):
            row = rows.nth(i)
            assert row.get_attribute("data-unit") == str(u)
            assert row.locator("td.cell").count() == len(result.checkpoints)
            sizes = row.locator("td.cell img").evaluate_all("els => els.map(e => [e.complete, e.naturalWidth])")
            assert len(sizes) == 2 * len(result.checkpoints) and all(done and w > 0 for done, w in sizes)
            text = row.locator("td.changes").inner_text()
            for s in range(len(result.steps)):
                assert kept(ev.overlap[s, u]) in text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "evolve-layer.png"), full_page=True)
