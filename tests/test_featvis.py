"""Feature visualization: optimization, batching == one by one, seeds, objectives, transforms,
the model left as it was, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from convscope import featvis
from convscope.errors import UnknownLayerError
from convscope.featvis import objectives as O
from convscope.featvis.export import save_pngs, save_to_atlas
from convscope.featvis.param import COLOR_CORRELATION_SVD_SQRT, fourier, pixel
from convscope.featvis.render import element_seed
from convscope.featvis.transforms import Compose, Jitter, Pad, RandomRotate, RandomScale, standard_transforms
from convscope.hooks import forward_layers, hook_count
from convscope.models import Preprocessing, load_model

from tests.tiny import TinyNet, strided

SIZE = 48
FAST = dict(steps=10, size=SIZE, progress=False)


def tiny_model():
    torch.manual_seed(0)
    net = TinyNet(*strided(), classes=5)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval vs train mode matters
        for m in net.modules():
            if isinstance(m, nn.Conv2d):  # ReLU-preserving scale, so units respond from the start
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        net.features[1].running_mean.uniform_(-0.2, 0.2)
        net.features[1].running_var.uniform_(0.5, 2.0)
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    return load_model(net, preprocessing=prep, device="cpu")


# Small tensors gain nothing from a second thread, and on a shared, busy machine two threads
# spin-wait for each other (measured: 10x slower here).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def resnet():
    return load_model("torchvision:resnet18", pretrained=False, device="cpu")


def channel_mean(model, layer, images_uint8, units):
    """The reference measurement, written out: untransformed image -> normalize -> layer -> mean."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        act = forward_layers(model.module, model.preprocessing.normalize(x), [layer])[layer]
    return np.array([act[i, u].mean().item() for i, u in enumerate(units)])


# --------------------------------------------------------------------------- the render loop


def test_objective_rises_and_final_value_is_measured_untransformed(tiny):
    units = list(range(12))
    # The conv before the ReLU: every unit has a gradient from the first step.
    r = featvis.render(tiny, "features.3", units, **{**FAST, "steps": 30, "lr": 0.1})
    assert r.images.shape == (12, SIZE, SIZE, 3) and r.images.dtype == np.uint8
    assert r.history.shape == (30, 12) and r.units == units
    # Every unit's channel grows from its random start (-0.8..0.6 at step 0), on average clearly.
    rise = r.history[-5:].mean(0) - r.history[:5].mean(0)
    assert np.all(rise > 0.01) and rise.mean() > 0.2
    assert np.all(r.objective > r.history[0] + 0.05)
    # The reported value is the channel mean on the saved image, without transforms.
    np.testing.assert_allclose(r.objective, channel_mean(tiny, "features.3", r.images, units), rtol=1e-5, atol=1e-6)
    # Not a flat grey image: the optimization changed pixels.
    assert r.images.std() > 5


def test_batch_gives_the_same_images_as_one_by_one(tiny):
    units = [2, 5, 9]
    together = featvis.render(tiny, "features.4", units, batch=3, **FAST)
    pairs = featvis.render(tiny, "features.4", [9, 2, 5], batch=2, **FAST)  # other order, other chunks
    for i, u in enumerate(units):
        alone = featvis.render(tiny, "features.4", [u], **FAST)
        assert np.abs(together.images[i].astype(int) - alone.images[0]).max() <= 2
        np.testing.assert_allclose(together.objective[i], alone.objective[0], rtol=1e-3, atol=1e-4)
        j = [9, 2, 5].index(u)
        assert np.abs(pairs.images[j].astype(int) - together.images[i]).max() <= 2
        assert together.seeds[i] == alone.seeds[0] == element_seed(0, u)


def test_batch_equals_one_by_one_on_resnet18(resnet):
    kw = dict(steps=6, size=64, progress=False)
    together = featvis.render(resnet, "layer1", [1, 4], batch=2, **kw)
    alone = featvis.render(resnet, "layer1", [4], **kw)
    assert np.abs(together.images[1].astype(int) - alone.images[0]).max() <= 2
    np.testing.assert_allclose(together.objective[1], alone.objective[0], rtol=1e-3, atol=1e-4)
    assert not np.array_equal(together.images[0], together.images[1])


def test_seeds_reproduce_and_differ(tiny):
    a = featvis.render(tiny, "features.2", [1, 1], steps=4, size=SIZE, progress=False, param="pixel")
    b = featvis.render(tiny, "features.2", [1, 1], steps=4, size=SIZE, progress=False, param="pixel")
    c = featvis.render(tiny, "features.2", [1], steps=4, size=SIZE, progress=False, param="pixel", seed=1)
    assert np.array_equal(a.images, b.images)
    assert a.seeds[0] != a.seeds[1]  # a repeated unit gets its own start (for diversity)
    assert not np.array_equal(a.images[0], a.images[1])
    assert not np.array_equal(a.images[0], c.images[0])
    # the global RNG is neither used nor disturbed
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    featvis.render(tiny, "features.2", [1], steps=2, size=SIZE, progress=False)
    assert torch.equal(torch.rand(3), before)


def test_model_unchanged_flags_restored_no_hooks():
    model = tiny_model()
    net = model.module
    net.train()  # a model handed over in training mode must come back in training mode
    net.features[0].bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, SIZE, SIZE)
    net.eval()
    with torch.no_grad():
        before = net(x)
    net.train()

    featvis.render(model, "features.4", [0, 1], steps=5, size=SIZE, progress=False)

    assert hook_count(net) == 0
    assert all(m.training for m in net.modules())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), before)


def test_no_hooks_and_flags_restored_after_errors(tiny):
    net = tiny.module
    calls = []

    def explode(ctx):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return ctx.layer("features.4")[:, 0].mean(dim=(1, 2))

    with pytest.raises(RuntimeError, match="boom"):
        featvis.render(tiny, "features.4", [0], objective=O.Objective(explode, ["features.4"]), **FAST)
    assert hook_count(net) == 0
    assert all(p.requires_grad for p in net.parameters())
    assert not any(m.training for m in net.modules())

    with pytest.raises(UnknownLayerError, match="features.44|Close matches"):
        featvis.render(tiny, "features.44", [0], **FAST)
    with pytest.raises(ValueError, match=r"12 units: use 0-11"):
        featvis.render(tiny, "features.4", "10-12", **FAST)
    with pytest.raises(ValueError, match="outside the"):
        featvis.render(tiny, "features.4", [0], objective=O.neuron("features.4", 0, y=99), **FAST)
    assert hook_count(net) == 0
    assert all(p.requires_grad for p in net.parameters())


def test_resolve_units():
    r = featvis.resolve_units
    assert r("0-3, 7", 10, "L") == [0, 1, 2, 3, 7]
    assert r("all", 3, "L") == [0, 1, 2]
    assert r(None, 40, "L") == list(range(16)) and r(None, 5, "L") == list(range(5))
    assert r(4, 5, "L") == [4] and r(range(2), 5, "L") == [0, 1]
    for bad in ("5-2", "x", "", [5]):
        with pytest.raises(featvis.UnitRangeError, match="0-4"):
            r(bad, 5, "L")


def test_other_objectives_and_logits(tiny):
    # The class logits are an (N, C) layer: channel() takes the value itself.
    r = featvis.render(tiny, "head", [0, 4], **FAST)
    with torch.no_grad():
        x = torch.from_numpy(r.images).permute(0, 3, 1, 2).float() / 255
        logits = tiny.module(tiny.preprocessing.normalize(x))
    np.testing.assert_allclose(r.objective, logits[[0, 1], [0, 4]].numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(r.objective > r.history[0])
    # A composite objective drives the images; its value on the final image is what is reported.
    obj = O.neuron("features.3") - 0.5 * O.total_variation()
    r2 = featvis.render(tiny, "features.3", [3, 5], objective=obj, transforms="none", **{**FAST, "steps": 20, "lr": 0.1})
    assert np.all(r2.history[-4:].mean(0) > r2.history[:4].mean(0))
    assert r2.objective_name.startswith("neuron")
    x = torch.from_numpy(r2.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        act = forward_layers(tiny.module, tiny.preprocessing.normalize(x), ["features.3"])["features.3"]
    h, w = act.shape[-2:]
    tv = O.total_variation()(O.Context({}, x, x, torch.tensor([3, 5])))
    expected = act[[0, 1], [3, 5], h // 2, w // 2] - 0.5 * tv
    np.testing.assert_allclose(r2.objective, expected.numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- objectives


def _ctx(act, units, image=None):
    image = torch.full((act.shape[0], 3, 8, 8), 0.5) if image is None else image
    return O.Context({"L": act}, image, image, torch.tensor(units))


def test_objective_values_and_algebra():
    act = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    ctx = _ctx(act, [1, 2])
    ch = O.channel("L")
    assert ch(ctx).tolist() == [act[0, 1].mean().item(), act[1, 2].mean().item()]
    assert O.channel("L", 0)(ctx).tolist() == [act[0, 0].mean().item(), act[1, 0].mean().item()]
    assert O.neuron("L")(ctx).tolist() == [act[0, 1, 1, 1].item(), act[1, 2, 1, 1].item()]
    assert O.neuron("L", 0, y=0, x=2)(ctx).tolist() == [act[0, 0, 0, 2].item(), act[1, 0, 0, 2].item()]
    torch.testing.assert_close(O.direction("L", [0, 0, 3.0])(ctx), act[:, 2].mean(dim=(1, 2)))
    image = torch.zeros(2, 3, 8, 8)
    image[1, :, :, 4:] = 1.0  # one vertical edge: TV = 8 of 56 horizontal steps
    tctx = _ctx(act, [1, 2], image)
    torch.testing.assert_close(O.total_variation()(tctx), torch.tensor([0.0, 1 / 7]))
    torch.testing.assert_close(O.l2()(tctx), torch.tensor([0.5, 0.5]))
    combo = 2 * ch - O.total_variation() + 1.5
    torch.testing.assert_close(combo(tctx), 2 * ch(tctx) - O.total_variation()(tctx) + 1.5)
    torch.testing.assert_close((-ch / 2)(ctx), -0.5 * ch(ctx))
    torch.testing.assert_close(sum([ch, O.channel("L", 0)])(ctx), ch(ctx) + O.channel("L", 0)(ctx))
    assert (ch + O.neuron("M") - O.l2()).layers == ("L", "M")
    with pytest.raises(TypeError):
        ch * ch
    with pytest.raises(ValueError, match="all zeros"):
        O.direction("L", [0, 0, 0])


def test_diversity():
    same = torch.rand(1, 4, 5, 5).expand(3, -1, -1, -1)
    torch.testing.assert_close(O.diversity("L")(_ctx(same, [0, 0, 0])), torch.full((3,), -1.0))
    apart = torch.zeros(2, 4, 5, 5)
    apart[0, 0] = 1.0
    apart[1, 1] = 2.0  # Gram matrices with no overlap: cosine 0
    torch.testing.assert_close(O.diversity("L")(_ctx(apart, [0, 0])), torch.zeros(2))
    assert O.diversity("L")(_ctx(apart[:1], [0])).tolist() == [0.0]


# --------------------------------------------------------------------------- param & transforms


def test_parameterizations_per_element_and_in_range():
    assert COLOR_CORRELATION_SVD_SQRT[0].tolist() == pytest.approx([0.26, 0.09, 0.02])
    for make in (fourier, pixel):
        both = make(2, (16, 20), [torch.Generator().manual_seed(s) for s in (3, 4)])
        second = make(1, (16, 20), [torch.Generator().manual_seed(4)])
        img = both()
        assert img.shape == (2, 3, 16, 20) and 0 < img.min() and img.max() < 1
        torch.testing.assert_close(img[1:], second())
        img.sum().backward()
        assert both.params[0].grad is not None and both.params[0].grad.abs().sum() > 0


def test_transforms_geometry_and_per_element_draws():
    x = torch.rand(2, 3, 20, 20)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    assert Pad(3)(x, gens()).shape == (2, 3, 26, 26)
    assert Pad(3)(x, gens())[0, :, 0, 0].tolist() == [0.5] * 3
    j = Jitter(4)(x, gens())
    assert j.shape == (2, 3, 16, 16)
    # each crop is a window of its own element
    assert any(torch.equal(j[0], x[0, :, dy:dy + 16, dx:dx + 16]) for dy in range(5) for dx in range(5))
    # positive angles turn counter-clockwise on screen, like torch.rot90
    torch.testing.assert_close(RandomRotate([90])(x, gens()), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    assert torch.equal(Compose([RandomScale([1.0]), RandomRotate([0])])(x, gens()), x)
    # zoom by 2 about the centre: the centre pixels spread out
    z = RandomScale([2.0])(x, gens())
    torch.testing.assert_close(z[:, :, 9:11, 9:11].mean(dim=(2, 3)), x[:, :, 9:11, 9:11].mean(dim=(2, 3)), atol=0.2, rtol=0)
    # the standard set: a batch of two equals each element alone with its own generator
    t = standard_transforms()
    out = t(x, gens())
    assert out.shape == (2, 3, 20 + 24 - 12, 20 + 24 - 12)
    g = gens()
    torch.testing.assert_close(t(x[1:], [g[1]]), out[1:])
    # differentiable
    xg = x.clone().requires_grad_(True)
    t(xg, gens()).sum().backward()
    assert xg.grad.abs().sum() > 0


# --------------------------------------------------------------------------- results, files, CLI


def test_result_sheet_png_and_files(tiny, tmp_path):
    r = featvis.render(tiny, "features.2", [0, 1, 2], steps=2, size=SIZE, progress=False)
    png = r._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    sheet = r.sheet(columns=2)
    assert sheet.size[0] == 2 * (SIZE + 4) + 4 and sheet.size[1] > 2 * SIZE
    files, sheet_path = save_pngs(r, tmp_path)
    assert [f.name for f in files] == ["features.2_0.png", "features.2_1.png", "features.2_2.png"]
    assert np.array_equal(np.asarray(Image.open(files[1])), r.images[1]) and sheet_path.is_file()


def test_atlas_gets_the_images(tiny, tmp_path):
    from convscope.atlas import Atlas, build

    photos = []
    rng = np.random.default_rng(0)
    for i in range(3):
        p = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(p)
        photos.append(str(p))
    build(tiny, photos, tmp_path / "atlas", layers=["features.4"], top=1, project=0, workers=0, progress=False).close()
    r = featvis.render(tiny, "features.4", [1, 3], steps=2, size=SIZE, progress=False)
    paths = save_to_atlas(r, tmp_path / "atlas")
    with Atlas.open(tmp_path / "atlas") as atlas:
        rel = atlas.featvis("features.4", 3)
        assert rel is not None and atlas.path(rel) == paths[1]
        assert np.array_equal(np.asarray(Image.open(atlas.path(rel))), r.images[1])


def test_cli_json_lines_and_files(tmp_path):
    out = tmp_path / "fv"
    res = CliRunner().invoke(
        _cli(),
        ["featvis", "--model", "torchvision:resnet18", "--no-pretrained", "--layers", "layer1", "--units", "0-2",
         "--steps", "3", "--size", "64", "--json", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [d["unit"] for d in lines] == [0, 1, 2]
    for d in lines:
        assert Path(d["file"]).is_file() and isinstance(d["objective"], float)
        assert np.asarray(Image.open(d["file"])).shape == (64, 64, 3)
    assert (out / "layer1_sheet.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "layer9", "--out", "x"], "unknown layer 'layer9'"),
        (["--layers", "layer1", "--units", "60-70", "--out", "x"], "use 0-63"),
        (["--layers", "layer1"], "--out"),
        (["--layers", "layer1", "--atlas", "no-such-atlas"], "no-such-atlas"),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(_cli(), ["featvis", "--model", "torchvision:resnet18", "--no-pretrained", "--steps", "1", *args])
    assert res.exit_code != 0
    assert message in res.stderr and "Traceback" not in res.stderr
    if "error:" in res.stderr:
        assert len(res.stderr.strip().splitlines()) == 1


def _cli():
    from convscope.cli import main

    return main
