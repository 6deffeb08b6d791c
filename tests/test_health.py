"""Model health: planted dead, saturated, constant and duplicate units are found, and only they;
the filters' frequency bands; the command's JSON lines."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from convscope.atlas import Atlas, build
from convscope.cli._common import Group
from convscope.cli.health import health as health_command
from convscope.health import (
    CONSTANT_RANGE, HIGH_BAND, LOW_BAND, activation_ceiling, band_shares, filter_sheet, first_layer_filters, health,
    producing_activation, sheet_flags, unit_weights,
)
from convscope.errors import ConvscopeError
from convscope.hooks import hook_count
from convscope.models import Preprocessing, load_model

from tests.tiny import TinyNet

SIZE = 32
LAYERS = ["features.1", "features"]
# What was planted (see flawed_net), and nothing else.
PLANTED = {
    ("features.1", 2): ["dead"],
    ("features.1", 4): ["saturated"],
    ("features.1", 5): ["constant"],
    ("features.1", 7): ["duplicate"],   # of unit 1
    ("features", 4): ["dead"],
    ("features", 5): ["duplicate"],   # of unit 0
}

pytestmark = pytest.mark.usefixtures("one_thread")


def flawed_net() -> nn.Module:
    """Conv-ReLU6 (8 units) then a strided conv-ReLU (6 units), seeded, with flaws planted."""
    torch.manual_seed(0)
    net = TinyNet(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())
    first, second = net.features[0], net.features[2]
    with torch.no_grad():
        first.bias[2] = -50.0                    # dead: its weights can never lift it above 0
        first.bias[4] = 50.0                     # saturated: ReLU6 at 6 everywhere
        first.weight[5] *= 1e-4                  # constant: 2.0, whatever it sees
        first.bias[5] = 2.0
        first.weight[7] = first.weight[1]        # duplicate of unit 1
        first.bias[7] = first.bias[1]
        second.bias[4] = -100.0                  # dead
        second.weight[5] = second.weight[0]      # duplicate of unit 0
        second.bias[5] = second.bias[0]
    return net


def tiny_model():
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(flawed_net(), preprocessing=prep, device="cpu")


def make_photos(folder: Path, n: int = 36) -> list[str]:
    """Photos with structure: a colour gradient, a rectangle and a disc at random places, noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:40, 0:40]
    out = []
    for i in range(n):
        a = rng.uniform(0, 2 * np.pi)
        grad = (np.cos(a) * xx + np.sin(a) * yy) / 56 + 0.5
        arr = np.stack([grad * rng.uniform(0.2, 1) for _ in range(3)], -1) * 255
        t, l = rng.integers(0, 30, 2)
        arr[t : t + rng.integers(4, 12), l : l + rng.integers(4, 12)] = rng.integers(0, 256, 3)
        cy, cx, r = *rng.integers(5, 35, 2), rng.integers(3, 8)
        arr[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        arr += rng.normal(0, 12, arr.shape)
        p = folder / f"photo{i:02d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def atlas_dir(model, tmp_path_factory):
    photos = make_photos(tmp_path_factory.mktemp("photos"))
    out = tmp_path_factory.mktemp("atlases") / "atlas"
    build(model, photos, out, layers=LAYERS, top=5, crops="1", project=0, batch_size=12, workers=0)
    return out


def test_planted_flaws_are_found_and_only_they(model, atlas_dir):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    with Atlas.open(atlas_dir) as atlas:
        report = health(atlas, model)
    got = {(u.layer, u.unit): u.flags for u in report.flagged()}
    assert got == PLANTED
    assert len(report.units) == 8 + 6 and all(u.flags == [] for u in report.units if (u.layer, u.unit) not in PLANTED)
    assert hook_count(model.module) == 0  # the probe's hooks came off
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())  # model unchanged

    units = {(u.layer, u.unit): u for u in report.units}
    dead = units["features.1", 2]
    assert dead.max == 0.0 and dead.frac_positive == 0.0
    sat = units["features.1", 4]
    assert sat.max == 6.0 and sat.at_ceiling == 1.0
    assert max(u.at_ceiling for k, u in units.items() if k[0] == "features.1" and k != ("features.1", 4)) < 0.95
    const = units["features.1", 5]
    assert const.range_ratio < 0.05 and 1.9 < const.max < 2.1
    sparse = units["features", 3]  # healthy: positive at 0.1 % of the positions, but then up to 0.135
    assert sparse.flags == [] and sparse.frac_positive < 0.01 and sparse.range_ratio > 2 * CONSTANT_RANGE
    dup = units["features.1", 7]
    assert (dup.duplicate_of, dup.overlap) == (1, 1.0) and dup.cosine == pytest.approx(1.0)
    dup2 = units["features", 5]
    assert (dup2.duplicate_of, dup2.overlap) == (0, 1.0) and dup2.cosine == pytest.approx(1.0)
    healthy = [u for u in report.units if not u.flags]
    assert all(u.at_ceiling is None for u in healthy if u.layer == "features")  # a ReLU: no ceiling

    first, second = report.layer("features.1"), report.layer("features")
    assert (first.activation, first.ceiling, first.weights) == ("features.1", 6.0, "features.0")
    assert (second.activation, second.ceiling, second.weights) == (None, None, "features.2")
    assert first.counts == {"dead": 1, "saturated": 1, "constant": 1, "duplicate": 1}
    assert first.shares == {"dead": 0.125, "saturated": 0.125, "constant": 0.125, "duplicate": 0.125}
    assert second.counts == {"dead": 1, "saturated": 0, "constant": 0, "duplicate": 1}
    # the pooled distribution: unit 4 is 6.0 at all 1,024 positions of each of 36 photos, so at
    # least an eighth of the layer's positions are at the ceiling; unit 2 adds zeros
    assert 0.125 <= first.distribution["at_ceiling"] < 0.25
    assert first.distribution["quantiles"]["0.99"] == pytest.approx(6.25)  # the midpoint of 6.0's bin
    assert second.distribution["at_ceiling"] is None

    as_dict = report.to_dict()
    assert [(u["layer"], u["unit"]) for u in as_dict["units"]] == list(PLANTED)
    json.dumps(as_dict)  # JSON-ready


def test_producing_activation_of_the_default_model(default_model):
    """bn1 and bn2 end in an in-place ReLU6; the blocks end in a linear bottleneck (and a residual)."""
    found = {layer: producing_activation(default_model, layer)[:2] for layer in ("bn1", "blocks.0", "blocks.2", "bn2")}
    assert found == {"bn1": ("bn1.act", 6.0), "blocks.0": (None, None), "blocks.2": (None, None), "bn2": ("bn2.act", 6.0)}
    assert hook_count(default_model.module) == 0
    assert unit_weights(default_model, "bn1", 32)[0] == "conv_stem"
    assert unit_weights(default_model, "blocks.2", 40)[0] == "blocks.2.1.conv_pwl"
    assert unit_weights(default_model, "bn2", 1280)[1].shape == (1280, 320)


def test_activation_ceilings():
    assert activation_ceiling(nn.ReLU6()) == 6.0 and activation_ceiling(nn.Hardtanh(-1, 0.5)) == 0.5
    assert activation_ceiling(nn.Sigmoid()) == 1.0 and activation_ceiling(nn.Tanh()) == 1.0
    assert activation_ceiling(nn.ReLU()) is None and activation_ceiling(nn.SiLU()) is None


def test_band_shares_on_known_filters():
    constant = np.ones((1, 3, 3, 3))
    checker = np.indices((4, 4)).sum(0) % 2 * 2.0 - 1  # +-1 alternating: the Nyquist frequency only
    stripes = np.tile([1.0, 0.0, -1.0, 0.0], (4, 1))       # a quarter cycle per pixel along x: radius 1/2
    filters = np.stack([np.broadcast_to(checker, (3, 4, 4)), np.broadcast_to(stripes, (3, 4, 4)), np.zeros((3, 4, 4))])
    assert np.array_equal(band_shares(constant), [[1.0, 0.0, 0.0]])
    got = band_shares(filters)
    assert np.allclose(got, [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
    assert LOW_BAND < 0.5 < HIGH_BAND
    # a 3x3 filter: the mean is low, one cycle along an axis mid, the diagonal high
    axis = np.cos(2 * np.pi * np.arange(3) / 3)[None, :].repeat(3, 0)
    diagonal = np.cos(2 * np.pi * np.add.outer(np.arange(3), np.arange(3)) / 3)
    assert np.allclose(band_shares(np.stack([[axis], [diagonal]])), [[0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="shaped"):
        band_shares(np.ones((3, 3)))


def test_first_layer_filters_and_sheet(model):
    f = first_layer_filters(model, scale=4)
    w = model.module.features[0].weight.detach().numpy()
    assert f.layer == "features.0" and f.images.shape == (8, 12, 12, 3) and f.bands.shape == (8, 3)
    assert np.allclose(f.bands.sum(1), 1.0)
    # unit 1: its largest weight (in magnitude) is black or white, zero is mid-grey, nearest-neighbour
    i = np.unravel_index(np.abs(w[1]).argmax(), w[1].shape)
    pixel = f.images[1, i[1] * 4 + 3, i[2] * 4, i[0]]
    assert pixel == (255 if w[1][i] > 0 else 0)
    assert np.array_equal(f.images[1], f.images[7])  # the duplicate looks the same
    sheet = np.asarray(filter_sheet(f, columns=4))
    assert sheet.shape[1] >= 4 * (60 + 10) + 10 and sheet.shape[0] > 2 * (12 + 14)
    # unit 5 (weights scaled by 1e-4) is normalized on its own, so it still shows its pattern
    assert f.images[5].max() - f.images[5].min() > 200


def invoke(args):
    root = Group("convscope")  # the root group: its one-line errors
    root.add_command(health_command, "health")
    return CliRunner().invoke(root, ["health", *args])


def test_cli_json_lines(model, atlas_dir, tmp_path, monkeypatch):
    # The atlas was built from a model object, which the command cannot load by name: one line.
    result = invoke([str(atlas_dir), "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error: the atlas was made with a model object (TinyNet)")
    assert len(result.stderr.strip().splitlines()) == 1

    # A TinyNet has no spec to load it by, so hand the command the model object through the one
    # loader it uses for the atlas's own model
    import convscope.models as models_module

    monkeypatch.setattr(models_module, "load_recorded", lambda recorded, device=None, **kw: model)
    out = tmp_path / "health"
    result = invoke([str(atlas_dir), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["layer"], r["unit"], r["flags"]) for r in records] == [(*k, v) for k, v in PLANTED.items()]
    assert records[3]["duplicate_of"] == 1 and records[3]["overlap"] == 1.0
    saved = json.loads((out / "health.json").read_text())
    assert saved["first_layer"]["layer"] == "features.0" and len(saved["first_layer"]["bands"]) == 8
    assert [u["unit"] for u in saved["units"]] == [k[1] for k in PLANTED]
    assert Image.open(out / "filters.png").size[0] == 8 * (60 + 10) + 10  # 3x3 filters at 20 pixels a weight

    text = invoke([str(atlas_dir)])
    assert text.exit_code == 0
    assert "features.1: 4 of 8 units flagged" in text.stdout
    assert "unit 7     duplicate   of unit 1 (top-example overlap 100%, weight cosine 1.000)" in text.stdout

    missing = invoke([str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no atlas folder")


def test_device_alone_keeps_the_atlas_model_and_a_wrong_model_is_refused(model, atlas_dir, monkeypatch):
    import convscope.models as models_module

    asked = []
    monkeypatch.setattr(models_module, "load_recorded", lambda recorded, device=None, **kw: asked.append(device) or model)
    result = invoke([str(atlas_dir), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert asked == ["cpu"]  # --device says where the recorded model runs, not to load another one
    assert [(json.loads(line)["layer"], json.loads(line)["unit"]) for line in result.stdout.splitlines()] == list(PLANTED)

    # same layer names, other units: refused in one line instead of judging the wrong weights
    torch.manual_seed(1)
    other = TinyNet(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU6(), nn.Conv2d(5, 6, 3, stride=2, padding=1), nn.ReLU())
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ConvscopeError, match="'features.1' has 5 units in this model but 8 in the atlas"):
        health(atlas_dir, load_model(other, preprocessing=prep, device="cpu"))


def test_help_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys; from convscope.cli.health import health; from click.testing import CliRunner; "
            "r = CliRunner().invoke(health, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(r.output)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout and "--out" in result.stdout


def test_sheet_marks_the_flagged_first_layer_units(model, atlas_dir):
    with Atlas.open(atlas_dir) as atlas:
        report = health(atlas, model)
    f = first_layer_filters(model, scale=4)
    flags = sheet_flags(report, f)
    assert flags == {2: ["dead"], 4: ["saturated"], 5: ["constant"], 7: ["duplicate"]}
    marked = np.asarray(filter_sheet(f, columns=4, flags=flags)).astype(int)
    height = 14 + 12 + 3 + 8 + 14 + 10  # number, filter, gap, bar, the flags' line, padding
    assert marked.shape[0] == 60 + 2 * height + 10  # a taller header: the flags' legend
    red = (marked[..., 0] > 150) & (marked[..., 1] < 120) & (marked[..., 2] < 120)
    found = set()
    for unit in range(8):
        r, c = divmod(unit, 4)
        top = 60 + r * height + 14 + 12 + 3 + 8
        if red[top : top + 14, 10 + c * 70 : 10 + (c + 1) * 70].sum() > 5:
            found.add(unit)
    assert found == set(flags)
    assert np.array_equal(np.asarray(filter_sheet(f, columns=4))[44 : 44 + 14 + 12, 4:290],
                          marked[60 : 60 + 14 + 12, 4:290])  # the first row's numbers and filters are the same
