"""Ranking by the pre-activation (issue 13, part 3): units of a saturating activation (ReLU6) are
ranked by its input, which a brute-force ranking of pre-activations reproduces; the output
ranking is unchanged; shards merge; checkpoints refuse another choice; the atlas keeps both."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from convscope.errors import ConvscopeError
from convscope.hooks import hook_count
from convscope.saturation import activation_maps, saturating_activation
from convscope.models import Preprocessing, load_model
from convscope.scan import ScanState, merge, scan

SIZE = 64
LAYERS = ["bn1", "blocks.5.0.bn1"]
TOP = 5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lite0():
    """timm's tf_efficientnet_lite0, random weights and random BatchNorm statistics, so that
    its ReLU6 layers saturate at 6.0 in many images."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 3)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 2)
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(net, preprocessing=prep, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 synthetic photos: a gradient, a bright disc and noise, each different."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    out = []
    yy, xx = np.mgrid[0:72, 0:80]
    for i in range(24):
        img = np.zeros((72, 80, 3))
        img[..., 0] = xx / 80 * rng.uniform(0, 255)
        img[..., 1] = yy / 72 * rng.uniform(0, 255)
        img[..., 2] = rng.uniform(0, 255)
        cy, cx, r = rng.uniform(10, 60), rng.uniform(10, 70), rng.uniform(5, 25)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        img += rng.normal(0, rng.uniform(5, 40), img.shape)
        path = folder / f"p{i:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        out.append(str(path))
    return out


def brute_force(model, photos, layer, by, batch=1):
    """Per unit, the top image ids, keys, positions and outputs, each image's maps taken one by
    one: key the map's maximum of the pre-activation (``by="pre"``) or of the output, position
    its first argmax, ties by the map's sum and then the lower id (the scan's order). The maps
    are computed ``batch`` photos per forward pass, as the scan compared with runs them: with
    random BatchNorm statistics the network is chaotic, and a batch of one rounds differently
    from a batch of six, enough to change the deep layers' values."""
    sat = saturating_activation(model.module, layer)
    rows = []
    for start in range(0, len(photos), batch):
        x = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in photos[start : start + batch]])
        post, pre = activation_maps(model.module, sat, x)
        rows.extend((post[i], pre[i] if by == "pre" else post[i]) for i in range(len(x)))
    c, w = rows[0][0].shape[0], rows[0][0].shape[2]
    out = []
    for u in range(c):
        cands = []
        for i, (post, key) in enumerate(rows):
            flat = key[u].reshape(-1)
            at = int(flat.argmax())
            cands.append((float(flat.max()), float(flat.sum()), -i, i, at, float(post[u].reshape(-1)[at])))
        cands.sort(reverse=True)
        out.append([(i, k, at // w, at % w, p) for k, _s, _n, i, at, p in cands[:TOP]])
    return out


@pytest.fixture(scope="module")
def scans(lite0, photos):
    kw = dict(layers=LAYERS, top=TOP, workers=0, progress=False)
    out = {how: scan(lite0, photos, rank_by=how, batch_size=6, **kw) for how in ("auto", "output")}
    out["auto", 1] = scan(lite0, photos, batch_size=1, **kw)  # each image alone
    return out


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("layer", LAYERS)
def test_ranking_by_pre_activation_equals_brute_force(lite0, photos, scans, layer, batch):
    result = scans["auto"] if batch == 6 else scans["auto", 1]
    assert result.state.rank_by[layer] == "pre-activation"
    assert result.ranked_by(layer) == f"pre-activation (input of ReLU6 '{layer}.act')"
    keys, ids, ys, xs = result.state.top(layer)
    post = result.state.outputs(layer)
    expected = brute_force(lite0, photos, layer, "pre", batch)
    for u, want in enumerate(expected):
        assert ids[u].tolist() == [w[0] for w in want], (layer, u)
        assert torch.allclose(keys[u], torch.tensor([w[1] for w in want]), atol=1e-4, rtol=1e-5)
        assert ys[u].tolist() == [w[2] for w in want] and xs[u].tolist() == [w[3] for w in want]
        assert torch.allclose(post[u], torch.tensor([w[4] for w in want]), atol=1e-4, rtol=1e-5)
        assert torch.equal(post[u], keys[u].clamp(0, 6))  # ReLU6 of the key: the output's maximum too
    examples = result.examples(layer, 0)
    assert examples[0].value == float(post[0, 0]) and examples[0].pre == float(keys[0, 0])
    assert hook_count(lite0.module) == 0


@pytest.mark.parametrize("layer", LAYERS)
def test_ranking_by_output_is_unchanged_and_ties_at_six(lite0, photos, scans, layer):
    result = scans["output"]
    assert result.state.rank_by[layer] == "output" and "post" not in result.state.tensors[layer]
    assert result.ranked_by(layer) == "output" and result.examples(layer, 0)[0].pre is None
    values, ids, ys, xs = result.state.top(layer)
    expected = brute_force(lite0, photos, layer, "post", 6)
    for u, want in enumerate(expected):
        assert ids[u].tolist() == [w[0] for w in want], (layer, u)
        assert ys[u].tolist() == [w[2] for w in want] and xs[u].tolist() == [w[3] for w in want]
    assert torch.equal(result.state.outputs(layer), values)
    # the ties that the pre-activation ranking orders: many top values at exactly 6.0
    tied = (values == 6.0).float().mean().item()
    untied = (scans["auto"].state.top(layer)[0] == 6.0).float().mean().item()
    assert tied > 0.1 and untied == 0.0, (tied, untied)
    assert not torch.equal(ids, scans["auto"].state.top(layer)[1])


def test_two_shards_merge_to_one_scan_and_state_round_trips(lite0, photos, scans, tmp_path):
    kw = dict(layers=LAYERS, top=TOP, batch_size=6, workers=0, progress=False)
    a = scan(lite0, photos[:10], **kw)
    b = scan(lite0, photos[10:], offset=10, **kw)
    merged = merge(a.state, b.state)
    assert merged == scans["auto"].state
    assert merged != scans["output"].state
    with pytest.raises(ValueError, match="ranked by different values"):
        merge(a.state, scan(lite0, photos[10:], offset=10, rank_by="output", **kw).state)
    path = tmp_path / "state.pt"
    merged.save(path)
    again = ScanState.load(path)
    assert again == merged and again.rank_by == {layer: "pre-activation" for layer in LAYERS}
    with pytest.raises(ValueError, match="pre\\['bn1'\\]"):
        again.update({n: torch.zeros(1, *s) for n, s in again.shapes.items()}, [99])


def test_checkpoint_refuses_another_choice_and_errors_are_one_line(lite0, photos, tmp_path):
    kw = dict(layers=LAYERS, top=TOP, batch_size=6, workers=0, progress=False, checkpoint=tmp_path / "ck.pt")
    first = scan(lite0, photos[:12], **kw)
    assert scan(lite0, photos[:12], resume=True, **kw).state == first.state
    with pytest.raises(ConvscopeError, match=r"other settings \(rank_by differ\)"):
        scan(lite0, photos[:12], resume=True, **{**kw, "rank_by": "output"})
    with pytest.raises(ConvscopeError, match="layer 'blocks.5' does not end in a saturating activation") as err:
        scan(lite0, photos[:2], layers=["blocks.5"], rank_by="pre-activation", workers=0, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConvscopeError, match="`rank_by` must be one of auto, output, pre-activation"):
        scan(lite0, photos[:2], layers=LAYERS, rank_by="pre", workers=0, progress=False)
    assert hook_count(lite0.module) == 0


@pytest.mark.filterwarnings("ignore::convscope.backproject.ActivationRuleWarning")
def test_an_atlas_keeps_both_values_and_what_ranks(lite0, photos, tmp_path):
    from convscope.atlas import Atlas, build
    from convscope.cli import main

    out = tmp_path / "atlas"
    atlas = build(lite0, photos, out, layers=LAYERS, top=3, project=1, batch_size=8, workers=0, progress=False)
    for layer in LAYERS:
        entry = atlas.layer(layer)
        assert entry["ranked_by"] == f"pre-activation (input of ReLU6 '{layer}.act')"
        examples = atlas.examples(layer, 1)
        assert [e["pre"] for e in examples] == sorted((e["pre"] for e in examples), reverse=True)
        for e in examples:  # value: the layer's output at the position of the largest pre-activation
            assert e["value"] == pytest.approx(min(max(e["pre"], 0.0), 6.0), abs=1e-6)
        assert atlas.units(layer)[1]["top"] == examples[0]["value"]
    res = CliRunner().invoke(main, ["atlas", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [(entry["name"], entry["ranked_by"]) for entry in data["layers"]] == [
        (layer, f"pre-activation (input of ReLU6 '{layer}.act')") for layer in LAYERS]
    res = CliRunner().invoke(main, ["atlas", "info", str(out)])
    assert res.exit_code == 0 and "bn1: ranked by pre-activation (input of ReLU6 'bn1.act')" in res.output
    output = build(lite0, photos[:8], tmp_path / "by_output", layers=LAYERS, top=3, project=0, workers=0,
                   progress=False, rank_by="output")
    assert output.layer("bn1")["ranked_by"] == "output" and output.examples("bn1", 0)[0]["pre"] is None
    assert isinstance(Atlas.open(out).examples("bn1", 0)[0]["pre"], float)
