"""Pictures that tell the truth (issue 13, parts 1 and 2) in the atlas: the deconvnet's dependence
on the image recorded per layer and its projections left out where it has none; projections
drawn by ``display.to_picture`` with the crop box recorded; older atlases still read."""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from convscope.atlas import Atlas, build
from convscope.backproject import project
from convscope.cli import main
from convscope.display import crop_wanted, energy_box, to_picture
from convscope.models import Preprocessing, load_model

from tests.test_atlas import make_photos
from tests.tiny import TinyNet, pooled, strided

SIZE = 24
POOLED = ["features.1", "features.4", "features"]  # before the first max-pool, after it, the end
STRIDED = ["features.2", "features"]

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::convscope.backproject.ActivationRuleWarning")]


def _model(recipe):
    torch.manual_seed(0)
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(TinyNet(*recipe()), preprocessing=prep, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"), 10)[:-1]  # without the broken file


@pytest.fixture(scope="module")
def pooled_atlas(photos, tmp_path_factory):
    model = _model(pooled)
    out = tmp_path_factory.mktemp("pooled") / "atlas"
    build(model, photos, out, layers=POOLED, top=3, workers=0, batch_size=8, progress=False)
    return model, Atlas.open(out)


@pytest.fixture(scope="module")
def strided_atlas(photos, tmp_path_factory):
    model = _model(strided)
    out = tmp_path_factory.mktemp("strided") / "atlas"
    build(model, photos, out, layers=STRIDED, top=3, workers=0, batch_size=8, progress=False)
    return model, Atlas.open(out)


def _files(atlas, layer, method):
    return sorted(atlas.path(f"layers/{layer}").rglob(f"*_{method}.png"))


def test_with_max_pooling_the_deconvnet_is_kept_after_the_pool(pooled_atlas):
    _model_, atlas = pooled_atlas
    for layer in ("features.4", "features"):
        dep = atlas.layer(layer)["deconvnet"]
        assert dep["depends"] is True and dep["computed"] is True
        assert dep["switches"][0] == {"name": "features.2", "what": "MaxPool2d", "kind": "max-pool switch"}
        assert "max-pool switch (MaxPool2d) at 'features.2'" in dep["reason"]
        assert dep["note"].startswith("depends on the image through max-pool switch")
        assert len(_files(atlas, layer, "deconvnet")) == len(_files(atlas, layer, "guided")) == 3 * atlas.layer(layer)["units"]
        assert all(e["deconvnet"] and e["guided"] for e in atlas.examples(layer, 2))
    # before the first pool: no switch yet, so no deconvnet pictures there
    first = atlas.layer("features.1")["deconvnet"]
    assert first["depends"] is False and first["computed"] is False and first["switches"] == []
    assert _files(atlas, "features.1", "deconvnet") == [] and len(_files(atlas, "features.1", "guided")) == 3 * 8
    assert atlas.info()["projections"]["layer_methods"] == {"features.1": ["guided"]}


def test_without_max_pooling_no_deconvnet_is_computed_and_info_says_why(strided_atlas):
    _model_, atlas = strided_atlas
    for layer in STRIDED:
        dep = atlas.layer(layer)["deconvnet"]
        assert dep["depends"] is False and dep["computed"] is False and dep["switches"] == []
        assert dep["reason"].startswith(f"no max-pool or other forward-dependent routing between the input and {layer!r}")
        assert dep["note"].startswith("image-independent here (no max-pool") and dep["note"].endswith("guided backprop shown")
        assert _files(atlas, layer, "deconvnet") == []
        assert len(_files(atlas, layer, "guided")) == 3 * atlas.layer(layer)["units"]
        for e in atlas.examples(layer, 1):
            assert e["deconvnet"] is None and e["guided"] is not None and atlas.path(e["guided"]).is_file()
    notes = atlas.info()["projections"]["notes"]
    assert any(n.startswith("deconvnet projections not computed for features.2, features: image-independent")
               for n in notes), notes
    res = CliRunner().invoke(main, ["atlas", "info", str(atlas.root)])
    assert res.exit_code == 0, res.output
    assert "  deconvnet: image-independent here (no max-pool or other forward-dependent routing between the input " \
           "and 'features.2'" in res.output and "guided backprop shown" in res.output
    data = json.loads(CliRunner().invoke(main, ["atlas", "info", str(atlas.root), "--json"]).output)
    assert [(entry["name"], entry["deconvnet"]["depends"], entry["ranked_by"]) for entry in data["layers"]] == [
        ("features.2", False, "output"), ("features", False, "output")]
    assert data["layers"][0]["deconvnet"]["note"].startswith("image-independent here (no max-pool")


def test_deconvnet_always_computes_it_everywhere(photos, tmp_path):
    atlas = build(_model(strided), photos[:4], tmp_path / "a", layers=["features"], top=2, workers=0, progress=False,
                  deconvnet="always")
    dep = atlas.layer("features")["deconvnet"]
    assert dep["depends"] is False and dep["computed"] is True and "computed anyway" in dep["note"]
    assert len(_files(atlas, "features", "deconvnet")) == 2 * 16
    assert atlas.info()["projections"]["layer_methods"] == {}
    with pytest.raises(Exception, match="`deconvnet` must be 'auto' or 'always'"):
        build(_model(strided), photos[:2], tmp_path / "b", layers=["features"], deconvnet="never")


def test_projections_are_drawn_by_to_picture_with_the_crop_box_recorded(pooled_atlas, photos):
    model, atlas = pooled_atlas
    seen_crop = seen_whole = 0
    for layer in POOLED:
        for u in (0, 3):
            for e in atlas.examples(layer, u):
                t, l, b, r = e["box"]
                x = model.transform(Image.open(e["path"]).convert("RGB")).unsqueeze(0)
                guided = project(model, x, layer, [u], [(e["y"], e["x"])], method="guided")[0][:, t:b, l:r]
                if crop_wanted(e["box"], (SIZE, SIZE)):
                    bt, bl, bb, br = energy_box(guided)
                    assert e["display_box"] == [t + bt, l + bl, t + bb, l + br] and e["display_box"] != e["box"]
                    seen_crop += 1
                else:
                    assert e["display_box"] == e["box"]
                    seen_whole += 1
                dt, dl, db, dr = e["display_box"]
                for method in ("guided", "deconvnet") if e["deconvnet"] else ("guided",):
                    p = project(model, x, layer, [u], [(e["y"], e["x"])], method=method)[0]
                    expected, _box = to_picture(p[:, dt:db, dl:dr])
                    got = np.asarray(Image.open(atlas.path(e[method]))).astype(int)
                    assert got.shape == expected.shape == (db - dt, dr - dl, 3)
                    assert np.abs(got - expected.astype(int)).max() <= 1, (layer, u, method)
                    assert got.min() < 60 and got.max() > 195  # the percentile contrast reaches the ends
    assert seen_crop and seen_whole


def test_an_atlas_written_before_these_fields_still_reads(pooled_atlas, tmp_path):
    _model_, atlas = pooled_atlas
    old = tmp_path / "old"
    shutil.copytree(atlas.root, old)
    conn = sqlite3.connect(old / "atlas.sqlite")
    with conn:
        for col in ("ranked_by", "deconvnet_depends", "deconvnet_reason", "deconvnet_switches", "deconvnet_computed"):
            conn.execute(f"ALTER TABLE layers DROP COLUMN {col}")
        for col in ("pre_value", "display_top", "display_left", "display_bottom", "display_right"):
            conn.execute(f"ALTER TABLE examples DROP COLUMN {col}")
    conn.close()
    with Atlas.open(old) as a:
        entry = a.layer("features.4")
        assert entry["ranked_by"] is None and entry["deconvnet"] is None and entry["shape"] == atlas.layer("features.4")["shape"]
        e = a.examples("features.4", 0)[0]
        assert e["pre"] is None and e["display_box"] is None and e["value"] == atlas.examples("features.4", 0)[0]["value"]
    res = CliRunner().invoke(main, ["atlas", "info", str(old)])
    assert res.exit_code == 0 and "deconvnet:" not in res.output
