"""The atlas on disk: contents, projections, the CLI, crash safety and exact resume."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from convscope.atlas import Atlas, IncompleteAtlasError, build
from convscope.errors import ConvscopeError
from convscope.hooks import hook_count
from convscope.models import Preprocessing, load_model

from tests.tiny import TinyNet, pooled

SIZE = 32
LAYERS = ["features.1", "features.4", "features"]
SETTINGS = dict(layers=LAYERS, top=4, crops="1,2", batch_size=8, workers=0, checkpoint_every=3)


def tiny_model():
    torch.manual_seed(0)
    prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return load_model(TinyNet(*pooled()), preprocessing=prep, device="cpu")


def make_photos(folder: Path, n: int = 20) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        h, w = int(rng.integers(36, 52)), int(rng.integers(36, 52))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[h // 2 :, : w // 2] = (30 * i % 255, 200, 90)
        p = folder / f"photo{i:02d}.png"
        Image.fromarray(arr).save(p)
        out.append(str(p))
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out.append(str(folder / "zz_broken.jpg"))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def atlas_dir(model, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlases") / "atlas"
    build(model, photos, out, **SETTINGS)
    return out


def test_atlas_contents(model, photos, atlas_dir):
    atlas = Atlas.open(atlas_dir)
    info = atlas.info()
    assert info["complete"] is True and info["model"]["spec"] == "TinyNet"
    assert info["images"] == {"inputs": 21, "scanned": 20, "skipped": 1, "crops_per_photo": 5, "scanned_crops": 100}
    assert info["preprocessing"]["input_size"] == [SIZE, SIZE] and info["top_k"] == 4
    assert atlas.layers == LAYERS  # network order
    geometry = {i.name: i for i in model.layers.select(LAYERS)}
    for entry in info["layers"]:
        g = geometry[entry["name"]]
        assert entry["shape"] == list(g.shape) and entry["stride"] == list(g.stride) and entry["complete"]
        assert entry["receptive_field"] == list(g.receptive_field) and atlas.layer(g.name) == entry
    assert atlas.skipped()[0][0].endswith("zz_broken.jpg")

    state = atlas.state()
    for layer in LAYERS:
        units = atlas.units(layer)
        assert [u["unit"] for u in units] == list(range(geometry[layer].shape[0]))
        summary = state.summary(layer)
        values, ids, ys, xs = state.top(layer)
        for u in (0, len(units) - 1):
            rec = units[u]
            assert rec["top"] == float(values[u, 0]) == rec["max"]
            assert rec["mean"] == pytest.approx(float(summary["mean"][u]))
            assert sum(rec["histogram"]["counts"]) == sum(rec["sketch"]["counts"]) == 100 * np.prod(geometry[layer].shape[1:])
            assert len(rec["histogram"]["edges"]) == len(rec["histogram"]["counts"]) + 1
            assert rec["quantiles"]["0.01"] <= rec["quantiles"]["0.5"] <= rec["quantiles"]["0.99"] <= rec["max"]
            examples = atlas.examples(layer, u)
            assert [e["rank"] for e in examples] == [0, 1, 2, 3]
            assert [e["value"] for e in examples] == sorted((e["value"] for e in examples), reverse=True)
            assert [e["image_id"] for e in examples] == ids[u].tolist()
            for e in examples:
                assert e["box"] == list(geometry[layer].box(e["y"], e["x"], (SIZE, SIZE)))
                assert e["path"] == os.path.abspath(photos[e["image_id"] // 5]) and e["crop"] == e["image_id"] % 5
                assert e["sha256"] == hashlib.sha256(Path(e["path"]).read_bytes()).hexdigest()
                t, l, b, r = e["box"]
                dt, dl, db, dr = e["display_box"]  # the box the projections show (an energy crop of a whole-input field)
                assert t <= dt < db <= b and l <= dl < dr <= r
                with Image.open(atlas.path(e["patch"])) as im:
                    assert im.size == (r - l, b - t)
                deconvnet = atlas.layer(layer)["deconvnet"]["depends"]  # left out where it cannot depend on the image
                assert (e["deconvnet"] is not None) == deconvnet
                for kind in ("deconvnet", "guided") if deconvnet else ("guided",):
                    with Image.open(atlas.path(e[kind])) as im:
                        assert im.size == (dr - dl, db - dt)
                top, left, bottom, right = e["box_original"]
                cl, ct, cr, cb = e["window"]  # as ImageRecord.window: left, top, right, bottom
                assert ct <= top < bottom <= cb and cl <= left < right <= cr
                assert e["size"] == list(Image.open(e["path"]).size)


def test_patch_and_projections_are_those_of_the_example(model, photos, atlas_dir):
    """Cross-check one deep example against a direct computation."""
    from convscope.backproject import project
    from convscope.display import to_picture
    from convscope.scan import Crops

    atlas = Atlas.open(atlas_dir)
    e = atlas.examples("features", 5)[1]
    img = Image.open(photos[e["image_id"] // 5]).convert("RGB")
    window = Crops.parse("1,2").windows(*img.size)[e["crop"]]
    assert list(window) == e["window"]
    x = model.transform(img.crop(window)).unsqueeze(0)
    with torch.no_grad():
        act = model.module.features(x)
    assert float(act[0, 5, e["y"], e["x"]]) == pytest.approx(e["value"], rel=1e-5)
    t, l, b, r = e["box"]
    pixels = (model.preprocessing.denormalize(x)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(atlas.path(e["patch"]))), pixels[t:b, l:r])
    dt, dl, db, dr = e["display_box"]
    for method in ("deconvnet", "guided"):
        p = project(model, x, "features", [5], [(e["y"], e["x"])], method=method)[0]
        expected = to_picture(p[:, dt:db, dl:dr])[0]
        got = np.asarray(Image.open(atlas.path(e[method])))
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert hook_count(model.module) == 0


class SENet(nn.Module):
    """A squeeze-excitation gate fed a detached tensor: every unit after it sees the whole
    input, but no gradient says so, so the layer catalogue reports a local receptive field."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(6, 6, 1), nn.Sigmoid())
        self.body = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.body(x * self.gate(x.detach())))


@pytest.mark.filterwarnings("ignore:gate.2 is Sigmoid")
@pytest.mark.parametrize("kind", ["local", "squeeze-excitation"])
def test_projections_on_windows_equal_whole_input_projections(kind, model, photos, tmp_path):
    """Projections run on the window holding the receptive field; where a gate sees the whole
    input the unit's value differs on the window, and the example falls back to the whole input."""
    from convscope.backproject import project
    from convscope.display import to_picture

    if kind == "local":
        net, layers = model, ["features.1", "features.4"]
    else:
        torch.manual_seed(0)
        prep = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5,) * 3, (0.25,) * 3)
        net, layers = load_model(SENet(), preprocessing=prep, device="cpu"), ["stem", "body"]
    atlas = build(net, photos[:6], tmp_path / "a", layers=layers, top=2, workers=0, batch_size=4)
    stats = atlas.info()["projections"]["layers"]
    if kind == "local":
        assert all(s["windowed"] > 0 and s["fallbacks"] == 0 for s in stats.values()), stats
    else:
        assert stats["stem"]["windowed"] > 0 and stats["stem"]["fallbacks"] == 0
        assert stats["body"]["windowed"] == 0 and stats["body"]["fallbacks"] > 0, stats
    for layer in layers:
        for u in range(3):
            for e in atlas.examples(layer, u):
                img = Image.open(e["path"]).convert("RGB")
                x = net.transform(img).unsqueeze(0)
                t, l, b, r = e["display_box"]
                for method in ("deconvnet", "guided") if e["deconvnet"] else ("guided",):
                    p = project(net, x, layer, [u], [(e["y"], e["x"])], method=method)[0]
                    got = np.asarray(Image.open(atlas.path(e[method]))).astype(int)
                    assert np.abs(got - to_picture(p[:, t:b, l:r])[0].astype(int)).max() <= 1, (layer, u, method)


def test_featvis_and_paths_stay_inside(atlas_dir, tmp_path):
    atlas = Atlas.open(atlas_dir)
    assert atlas.featvis("features", 2) is None
    png = tmp_path / "fv.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(png)
    rel = atlas.set_featvis("features", 2, png)
    assert atlas.featvis("features", 2) == rel and atlas.path(rel).read_bytes() == png.read_bytes()
    assert Atlas.open(atlas_dir).units("features")[2]["featvis"] == rel
    for bad in ("../outside.png", "/etc/passwd", "patches/../../x", ""):
        with pytest.raises(ConvscopeError):
            atlas.path(bad)
    with pytest.raises(ConvscopeError, match="units 0 to 15"):
        atlas.examples("features", 16)
    with pytest.raises(ConvscopeError, match="not in this atlas"):
        atlas.units("features.9")


def test_cli_info_and_show(atlas_dir):
    from convscope.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["atlas", "show", str(atlas_dir), "--layers", "features.4", "--units", "3", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["layer"] == "features.4" and data["unit"] == 3 and len(data["examples"]) == 4
    first = data["examples"][0]
    assert {"path", "value", "y", "x", "box"} <= set(first) and len(first["box"]) == 4
    assert [e["value"] for e in data["examples"]] == sorted((e["value"] for e in data["examples"]), reverse=True)
    res = runner.invoke(main, ["atlas", "info", str(atlas_dir), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["layers"][0]["name"] == "features.1"
    res = runner.invoke(main, ["atlas", "info", str(atlas_dir)])
    assert res.exit_code == 0 and "features.4" in res.output and "20 scanned, 1 skipped" in res.output
    res = runner.invoke(main, ["atlas", "show", str(atlas_dir), "--layers", "nope", "--units", "0"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "not in this atlas" in res.output


def test_cli_build_with_a_torchvision_model(tmp_path):
    from convscope.cli import main

    photo_dir = tmp_path / "in"
    make_photos(photo_dir, n=3)
    out = tmp_path / "cli-atlas"
    args = ["atlas", "build", str(photo_dir), "--out", str(out), "--model", "torchvision:resnet18", "--no-pretrained",
            "--layers", "layer1,layer2", "--top", "2", "--project", "0", "--device", "cpu", "--workers", "0"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "zz_broken.jpg" in res.output
    atlas = Atlas.open(out)
    assert atlas.layers == ["layer1", "layer2"] and len(atlas.units("layer2")) == 128
    e = atlas.examples("layer2", 0)
    assert len(e) == 2 and e[0]["patch"] and e[0]["deconvnet"] is None
    res = CliRunner().invoke(main, args)  # refuses to overwrite silently, and says how not to
    assert res.exit_code == 2 and "give --overwrite" in res.output  # a usage error, in flags
    foreign = tmp_path / "my-documents"  # --overwrite replaces an atlas, never a folder of other things
    (foreign / "layers").mkdir(parents=True)
    (foreign / "layers" / "thesis.txt").write_text("mine")
    res = CliRunner().invoke(main, [*args[:4], str(foreign), *args[5:], "--overwrite"])
    assert res.exit_code == 2 and "is not empty and holds no atlas" in res.output
    assert (foreign / "layers" / "thesis.txt").read_text() == "mine"


def _tables(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        out = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            rows = conn.execute(f"SELECT * FROM {name}").fetchall()
            if name == "meta":
                rows = [r for r in rows if r[0] not in ("created", "build_seconds")]
            if name == "units":  # feature visualizations are added later, by other tests too
                rows = [r[:-1] for r in rows]
            out[name] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def _files(root: Path) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.png"))
    }


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
sys.path.insert(0, {tests!r}.rpartition('/')[0])
from test_atlas import tiny_model, SETTINGS
from convscope.atlas import build
torch.set_num_threads({threads})
model = tiny_model()
model.module.features[0].register_forward_pre_hook(lambda m, a: time.sleep(0.15))  # slow it down
build(model, {photos!r}, {out!r}, resume={resume}, **SETTINGS)
"""


def test_killed_build_reads_incomplete_and_resumes_exactly(model, photos, atlas_dir, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "run_build.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads(),
                                    photos=photos, out=str(out), resume=False))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = out / ".partial" / "scan.ckpt"
    deadline = time.time() + 120
    try:
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), proc.stdout.read().decode() if proc.poll() is not None else "no checkpoint in time"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = torch.load(ckpt, weights_only=True)
    assert 0 < saved["extra"]["next"] < len(photos)  # killed mid-scan
    with pytest.raises(IncompleteAtlasError) as err:
        Atlas.open(out)
    message = str(err.value)
    assert "\n" not in message and "resume=True" in message and "incomplete" in message
    with pytest.raises(ConvscopeError, match="resume=True"):
        build(model, photos, out, **SETTINGS)  # no silent restart over an unfinished build

    resumed = build(model, photos, out, resume=True, **SETTINGS)
    assert resumed.info()["complete"] and not (out / ".partial").exists()
    assert not list(out.rglob("*.tmp"))
    assert _tables(out / "atlas.sqlite") == _tables(atlas_dir / "atlas.sqlite")
    mine, reference = _files(out), _files(atlas_dir)
    reference = {k: v for k, v in reference.items() if not k.startswith("featvis/")}
    assert mine.keys() == reference.keys() and mine == reference
    assert resumed.state() == Atlas.open(atlas_dir).state()


KILLED_WRITING = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
sys.path.insert(0, {tests!r}.rpartition('/')[0])
from test_atlas import tiny_model, SETTINGS
from convscope.atlas import build
torch.set_num_threads({threads})
real_replace = os.replace

def replace(src, dst):  # killed with the final scan state written but not yet renamed into place
    if os.path.basename(dst) == "scan_state.pt":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
build(tiny_model(), {photos!r}, {out!r}, **SETTINGS)
"""


def test_resume_after_a_kill_mid_write_leaves_no_temporary_file(model, photos, atlas_dir, tmp_path):
    """The killed run's `.scan_state.pt.<pid>.tmp` (and any other temp of a dead process) is
    removed when the build resumes; the resumed atlas is the uninterrupted one."""
    out = tmp_path / "killed"
    script = tmp_path / "killed_writing.py"
    script.write_text(KILLED_WRITING.format(tests=str(Path(__file__).parent), threads=torch.get_num_threads(),
                                            photos=photos, out=str(out)))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == -signal.SIGKILL, run.stderr
    stale = list(out.rglob("*.tmp"))
    assert [p.name for p in stale] == [f".scan_state.pt.{p.name.split('.')[-2]}.tmp" for p in stale] and len(stale) == 1
    assert (out / ".partial" / "atlas.sqlite").exists()  # the database was written, not committed
    resumed = build(model, photos, out, resume=True, **SETTINGS)
    assert resumed.info()["complete"] and not (out / ".partial").exists()
    assert not list(out.rglob("*.tmp"))
    assert _tables(out / "atlas.sqlite") == _tables(atlas_dir / "atlas.sqlite")
    mine, reference = _files(out), _files(atlas_dir)
    reference = {k: v for k, v in reference.items() if not k.startswith("featvis/")}
    assert mine.keys() == reference.keys() and mine == reference


def test_failure_after_the_scan_leaves_an_incomplete_atlas(model, photos, tmp_path, monkeypatch):
    import convscope.atlas.builder as builder

    def broken(*a, **k):
        raise OSError("disk full")

    out = tmp_path / "broken"
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model.module(x)
    monkeypatch.setattr(builder, "write_db", broken)
    with pytest.raises(OSError):
        build(model, photos[:4], out, layers=["features"], top=2, workers=0)
    assert hook_count(model.module) == 0 and not model.module.training
    with torch.no_grad():
        assert torch.equal(model.module(x), before)  # the projections ran on a private copy
    with pytest.raises(IncompleteAtlasError, match="resume=True"):
        Atlas.open(out)
    monkeypatch.undo()
    atlas = build(model, photos[:4], out, layers=["features"], top=2, workers=0, resume=True)
    assert atlas.info()["images"]["scanned"] == 4


def test_whole_input_examples_share_a_forward_pass_per_input():
    """Where the receptive field is the whole input, examples on one input share its forward
    pass and take turns in the backward passes; each still equals its projection alone."""
    from convscope.backproject import project_boxes, project_full

    torch.manual_seed(0)
    prep = Preprocessing((64, 64), 64, "bilinear", (0.5,) * 3, (0.25,) * 3)
    net = load_model("torchvision:resnet18", pretrained=False, preprocessing=prep, device="cpu")
    info = net.layers.get("layer4")  # a 2x2 map whose units see all 64 x 64 pixels
    images = list(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    which = [0, 1, 0, 2, 0, 1, 0]  # four examples on input 0, two on input 1, one on input 2
    units, positions = [3, 8, 3, 100, 511, 0, 42], [(0, 0), (1, 1), (1, 0), (0, 1), (1, 1), (0, 0), (0, 1)]
    results, counts = project_boxes(net.module, info, [images[i] for i in which], units, positions, batch_size=2)
    assert counts == {"windowed": 0, "whole_input": 7, "fallbacks": 0}
    for k, i in enumerate(which):
        for method in ("deconvnet", "guided"):
            alone = project_full(net, images[i][None], "layer4", [units[k]], [positions[k]], method).pixels[0]
            assert results[k][method].shape == (3, 64, 64)
            torch.testing.assert_close(results[k][method], alone, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(results[k]["deconvnet"], results[k]["guided"])
    assert hook_count(net.module) == 0


def test_projections_handed_over_as_they_come_equal_the_ones_kept():
    """With ``on_result`` each example's projections are handed over once, as soon as they are
    done (the build draws them as they come and holds a few batches, not thousands of arrays),
    and are the ones ``project_boxes`` returns without it; the list it returns is then empty."""
    from convscope.backproject import project_boxes

    torch.manual_seed(0)
    prep = Preprocessing((64, 64), 64, "bilinear", (0.5,) * 3, (0.25,) * 3)
    net = load_model("torchvision:resnet18", pretrained=False, preprocessing=prep, device="cpu")
    images = list(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    which = [0, 1, 0, 2, 0, 1, 0, 2]
    for layer, units, positions in (("layer4", [3, 8, 3, 100, 511, 0, 42, 7], [(0, 0), (1, 1), (1, 0), (0, 1)] * 2),
                                    ("layer1", [1, 2, 3, 4, 5, 6, 7, 8], [(1, 1), (5, 9), (15, 15), (0, 0)] * 2)):
        info = net.layers.get(layer)
        inputs = [images[i] for i in which]
        kept, counts = project_boxes(net.module, info, inputs, units, positions, batch_size=2)
        got, done = {}, []
        returned, counts_again = project_boxes(net.module, info, inputs, units, positions, batch_size=2,
                                               on_result=lambda k, res: got.setdefault(k, []).append(res),
                                               on_done=done.append)
        assert counts_again == counts and sum(done) == len(which)
        assert returned == [{}] * len(which)
        assert sorted(got) == list(range(len(which))) and all(len(v) == 1 for v in got.values())
        for k in range(len(which)):
            assert set(got[k][0]) == {"deconvnet", "guided"}
            for method, pixels in kept[k].items():
                assert torch.equal(got[k][0][method], pixels)
                assert pixels.abs().sum() > 0


@pytest.mark.filterwarnings("ignore::convscope.backproject.ActivationRuleWarning")
def test_private_projection_copy_of_the_default_model_projects_as_the_model(default_model):
    """The atlas projects on a private copy (BatchNorm folded, static TF padding, channels-last):
    its pictures are the model's own, windowed (blocks.2) and whole-input (bn2) alike."""
    from skimage import data as skdata

    from convscope.backproject import project_boxes, project_full, projection_module
    from convscope.display import to_picture

    model = default_model
    x = model.transform(Image.fromarray(skdata.chelsea())).unsqueeze(0)
    layers = ["blocks.2", "bn2"]
    module, fmt = projection_module(model.module, x, layers)
    assert fmt == torch.channels_last
    assert "forward" in vars(module.bn2) and "forward" not in vars(model.module.bn2)  # folded: only its act runs
    assert type(module.blocks[1][0].conv_dw).__name__ == "StaticSameConv2d"
    assert type(model.module.blocks[1][0].conv_dw).__name__ == "Conv2dSame"  # the model is not touched
    for layer, units in (("blocks.2", [3, 11]), ("bn2", [7, 640])):
        info = model.layers.get(layer)
        full = [project_full(model, x, layer, [u]) for u in units]  # each unit's strongest position
        positions = [p.positions[0] for p in full]
        values = [float(p.activations[0]) for p in full]
        results, counts = project_boxes(module, info, [x[0]] * 2, units, positions, values, memory_format=fmt)
        assert counts["fallbacks"] == 0 and counts["windowed" if layer == "blocks.2" else "whole_input"] == 2
        for k, u in enumerate(units):
            t, l, b, r = info.box(*positions[k], model.input_size)
            for method in ("deconvnet", "guided"):
                ref = project_full(model, x, layer, [u], [positions[k]], method).pixels[0]
                got, want = to_picture(results[k][method])[0].astype(int), to_picture(ref[:, t:b, l:r])[0].astype(int)
                assert np.abs(got - want).max() <= 2 and np.abs(got - want).mean() < 0.05, (layer, u, method)
    assert hook_count(model.module) == 0


def test_whole_input_projections_report_their_substitute_rules():
    """The atlas lists the substitute rules of every activation its projections went through,
    the whole-input ones included (ReLU6 after layer1 of a ResNet-18 variant)."""
    import warnings

    from convscope.backproject import ActivationRuleWarning, project_boxes

    torch.manual_seed(0)
    prep = Preprocessing((64, 64), 64, "bilinear", (0.5,) * 3, (0.25,) * 3)
    net = load_model("torchvision:resnet18", pretrained=False, preprocessing=prep, device="cpu")
    net.module.layer4[1].relu = nn.ReLU6()  # the last activation before layer4's output
    info = net.layers.get("layer4")
    x = torch.randn(3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        project_boxes(net.module, info, [x], [3], [(0, 0)], batch_size=2)
    notes = {str(w.message) for w in caught if issubclass(w.category, ActivationRuleWarning)}
    assert any(n.startswith("layer4.1.relu is ReLU6") and "deconvnet rule" in n for n in notes), notes
    assert any(n.startswith("layer4.1.relu is ReLU6") and "guided rule" in n for n in notes), notes


def test_photos_unreadable_after_the_scan_are_written_to_the_atlas(model, photos, tmp_path, monkeypatch):
    """A photo removed, damaged or changed between the scan and the render is kept in the atlas
    (Atlas.unreadable), apart from the scan's own skips; its examples have no files."""
    import convscope.atlas.builder as builder

    folder = tmp_path / "in"
    folder.mkdir()
    mine = []
    for p in photos[:6] + photos[-1:]:  # the broken file too: a skip of the scan
        mine.append(str(folder / Path(p).name))
        Path(mine[-1]).write_bytes(Path(p).read_bytes())
    scanned = {os.path.abspath(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in mine[:-1]}
    real_scan = builder.scan

    def scan_then_tamper(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        assert set(result.hashes) == set(range(6))  # every good photo is among a unit's top 6
        Path(mine[0]).unlink()
        Path(mine[1]).write_bytes(b"\x89PNG damaged")
        Image.open(mine[3]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mine[2])  # another picture
        return result

    monkeypatch.setattr(builder, "scan", scan_then_tamper)
    atlas = build(model, mine, tmp_path / "a", layers=["features"], top=6, workers=0)
    assert [path for path, _reason in atlas.skipped()] == [mine[-1]]
    unreadable = dict(atlas.unreadable())
    assert list(unreadable) == mine[:3]
    assert unreadable[mine[0]].startswith("cannot read") and unreadable[mine[1]].startswith("not an image")
    assert unreadable[mine[2]] == "changed since the scan (its sha256 differs)"
    assert atlas.layer("features")["complete"] is False
    for u in range(16):
        for e in atlas.examples("features", u):
            gone = e["path"] in {os.path.abspath(p) for p in mine[:3]}
            assert (e["patch"] is None) == gone and (e["deconvnet"] is None) == gone
            assert e["sha256"] == scanned[e["path"]]  # the bytes the scan saw


def test_an_uncopyable_model_is_projected_as_it_is_with_one_warning():
    """The private projection copy falls back to the model itself only where copy.deepcopy
    cannot copy it, and says so once."""
    import threading
    import warnings

    from convscope.backproject import projection_module

    net = TinyNet(*pooled()).eval()
    net.lock = threading.Lock()  # deepcopy: "cannot pickle '_thread.lock' object"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, fmt = projection_module(net, torch.randn(1, 3, SIZE, SIZE), ["features"])
    assert module is net and fmt == torch.contiguous_format
    assert [str(w.message) for w in caught] == [
        "projections run on the model itself, not on a faster private copy: TinyNet cannot be copied "
        "(cannot pickle '_thread.lock' object)"
    ]
    del net.lock
    module, fmt = projection_module(net, torch.randn(1, 3, SIZE, SIZE), ["features"])
    assert module is not net and fmt == torch.channels_last
