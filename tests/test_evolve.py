"""Checkpoints in every layout, and features evolving over a real (tiny, seconds-long) training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from convscope.checkpoints import CheckpointError, load_weights, read_state_dict
from convscope.errors import ConvscopeError
from convscope.evolve import checkpoint_models, evolve, map_correlation, top_overlap
from convscope.hooks import hook_count
from convscope.models import Preprocessing

SIZE = 24
PREP = Preprocessing((SIZE, SIZE), SIZE, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
LAYERS = ["relu1", "relu2", "relu3"]
EPOCHS = 6

pytestmark = pytest.mark.usefixtures("one_thread")


class StripeNet(nn.Module):
    """Three conv stages (one in-place ReLU) and a linear head; 3.7k parameters."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2, self.pool2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.conv3, self.relu3 = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.head(self.relu3(self.conv3(x)))


def stripes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, SIZE, SIZE, 3) float pictures in [0, 1] of stripes in one of four directions (the
    class), random colours, widths and phases, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    x = np.empty((n, SIZE, SIZE, 3), np.float32)
    y = rng.integers(0, 4, n)
    for i, k in enumerate(y):
        img = np.empty((SIZE, SIZE, 3), np.float32)
        img[:] = rng.uniform(0, 0.4, 3)
        width, phase = int(rng.integers(2, 5)), int(rng.integers(0, 8))
        coord = (yy, xx, yy + xx, yy - xx)[k] + phase
        img[(coord // width) % 2 == 0] = rng.uniform(0.6, 1, 3)
        x[i] = (img + rng.normal(0, 0.05, img.shape)).clip(0, 1)
    return x, y


def save_lightning(state, path):
    torch.save({"epoch": 3, "global_step": 30, "state_dict": {f"model.{k}": v for k, v in state.items()}}, path)


def save_data_parallel(state, path):
    torch.save({f"module.{k}": v for k, v in state.items()}, path)


# one writer per layout a user has; the training run cycles through them
FORMATS = {
    "bare": lambda s, p: torch.save(s, p),
    "state_dict": lambda s, p: torch.save({"state_dict": s, "epoch": 1, "optimizer": {"lr": 0.1}}, p),
    "model": lambda s, p: torch.save({"model": s, "epoch": 1, "args": {"arch": "stripenet"}}, p),
    "module": save_data_parallel,
    "safetensors": lambda s, p: save_file({k: v.contiguous() for k, v in s.items()}, str(p)),
    "lightning": save_lightning,
}


def write(state, folder, name, fmt):
    path = folder / f"{name}.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    FORMATS[fmt](state, path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny training run: a checkpoint per epoch (the layouts in turn), the step size halved
    every epoch so that training settles, and 60 held-out photos."""
    folder = tmp_path_factory.mktemp("run")
    x, y = stripes(384, 0)
    xt = torch.tensor((x - 0.5) / 0.25).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y)
    torch.manual_seed(0)
    net = StripeNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    paths, states = [], []
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=order)
        for i in range(0, len(xt), 32):
            b = perm[i : i + 32]
            loss = nn.functional.cross_entropy(net(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for group in opt.param_groups:
            group["lr"] *= 0.5
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        states.append(state)
        paths.append(write(state, folder, f"epoch{epoch + 1}", list(FORMATS)[epoch % len(FORMATS)]))
    with torch.no_grad():
        accuracy = (net(xt).argmax(1) == yt).float().mean().item()
    photos = folder / "photos"
    photos.mkdir()
    for i, img in enumerate(stripes(60, 1)[0]):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(photos / f"{i:02d}.png")
    return {"folder": folder, "paths": paths, "states": states, "photos": photos, "accuracy": accuracy}


@pytest.fixture(scope="module")
def result(run):
    return evolve(StripeNet, run["paths"], [run["photos"]], LAYERS, count=3, top=6, preprocessing=PREP,
                  device="cpu", workers=0)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_layout_loads_the_same_weights(run, tmp_path, fmt):
    state = run["states"][2]
    path = write(state, tmp_path, "ckpt", fmt)
    net = load_weights(StripeNet(), path)
    got = net.state_dict()
    assert list(got) == list(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_checkpoints_are_read_with_weights_only(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": StripeNet().state_dict(), "net": StripeNet()}, path)  # a whole module: code
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


def test_the_module_prefix_is_kept_where_the_module_has_it(run):
    """``model.`` is stripped only when the module's own keys lack it."""

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = StripeNet()

    state = {f"model.{k}": v for k, v in run["states"][0].items()}
    net = load_weights(Wrapper(), state)
    assert torch.equal(net.model.conv1.weight, run["states"][0]["conv1.weight"])


def _broken(state, how):
    state = dict(state)
    if how == "missing":
        del state["conv2.bias"]
    elif how == "unexpected":
        state["conv4.weight"] = torch.zeros(1)
    else:
        state["conv2.weight"] = torch.zeros(16, 8, 5, 5)
    return state


@pytest.mark.parametrize("how, expected", [
    ("missing", "missing key 'conv2.bias'"),
    ("unexpected", "unexpected key 'conv4.weight'"),
    ("shape", "key 'conv2.weight' has shape (16, 8, 5, 5) in the checkpoint, (16, 8, 3, 3) in the model"),
])
def test_a_mismatch_names_the_first_key_in_one_line(run, tmp_path, how, expected):
    path = tmp_path / f"{how}.pt"
    save_data_parallel(_broken(run["states"][0], how), path)  # prefixes are handled before the check
    net = StripeNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConvscopeError) as info:
        load_weights(net, path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # left as it was


def test_a_mismatch_counts_the_other_problems(run):
    state = _broken(_broken(run["states"][0], "missing"), "unexpected")
    with pytest.raises(CheckpointError, match=r"missing key 'conv2.bias' \(and 1 more\)"):
        load_weights(StripeNet(), state)


def test_an_unknown_wrapper_prefix_is_named(run):
    state = {f"net.{k}": v for k, v in run["states"][0].items()}
    with pytest.raises(CheckpointError, match="missing key 'conv1.weight'.*starts with 'net.'"):
        load_weights(StripeNet(), state)


def test_a_file_without_a_state_dict_says_what_it_holds(tmp_path):
    path = tmp_path / "stats.pt"
    torch.save({"epoch": 3, "loss": 0.5}, path)
    with pytest.raises(CheckpointError, match="holds no state dict .its keys: 'epoch', 'loss'"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        read_state_dict(tmp_path / "nothing.pt")


def test_a_spec_gets_each_checkpoint(tmp_path):
    from convscope.models import load_model

    model = load_model("torchvision:squeezenet1_1", pretrained=False, device="cpu")
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.module.state_dict().items()}
    path = tmp_path / "sq.safetensors"
    save_file(state, str(path))
    [loaded] = checkpoint_models("torchvision:squeezenet1_1", [path], device="cpu")
    assert all(torch.equal(v, state[k]) for k, v in loaded.module.state_dict().items())
    assert loaded.preprocessing == model.preprocessing and not loaded.module.training


# --------------------------------------------------------------------------- the numbers


def test_overlap_and_correlation_on_hand_made_values():
    a = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, -1, -1]])
    b = torch.tensor([[3, 2, 1, 0], [4, 5, 8, 9], [1, 2, -1, -1]])
    assert top_overlap(a, b).tolist() == [1.0, 0.5, 0.5]
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    other = torch.stack([maps[0] * 3 + 1, -maps[1], maps[2], maps[0]])
    r = map_correlation(maps, other)
    assert r[:3].tolist() == [pytest.approx(1.0), pytest.approx(-1.0), 1.0]  # identical zero maps: exactly 1
    assert np.isnan(r[3])  # a constant map against a varying one: no correlation


def test_the_tiny_model_learns(run):
    assert run["accuracy"] > 0.9


def test_changes_fall_as_training_settles(result):
    """The step size halves every epoch: the units change less between the late checkpoints
    than between the early ones, in every layer and by both numbers."""
    for name in LAYERS:
        ev = result.layers[name]
        overlap, corr = ev.mean_overlap(), ev.mean_correlation()
        assert overlap[:2].mean() < overlap[-2:].mean(), (name, overlap)
        assert corr[:2].mean() < corr[-2:].mean(), (name, corr)
        assert overlap[-1] > 0.8 and corr[-1] > 0.95, (name, overlap, corr)
    assert result.layers["relu3"].mean_overlap()[0] < 0.8  # the top layer still moved at the start
    # and, as in the paper, the lowest layer had settled more than the top one
    assert result.layers["relu1"].mean_correlation()[0] > result.layers["relu3"].mean_correlation()[0]


def test_identical_checkpoints_give_no_change(run):
    """The same weights in two layouts (bare and safetensors): overlap and correlation exactly 1
    for every unit, dead ones included."""
    folder = run["folder"]
    same = [write(run["states"][1], folder, "twin-a", "bare"), write(run["states"][1], folder, "twin-b", "safetensors")]
    res = evolve(StripeNet, same, [run["photos"]], LAYERS, units=[0], top=6, preprocessing=PREP, device="cpu", workers=0)
    for ev in res.layers.values():
        assert (ev.overlap == 1.0).all() and (ev.correlation == 1.0).all()


def test_records_are_json_lines(result):
    lines = [json.loads(line) for line in result.to_json().splitlines()]
    steps = EPOCHS - 1
    assert len(lines) == len(LAYERS) * steps * (1 + 3)
    layer_rows = [r for r in lines if r["unit"] is None]
    assert {r["layer"] for r in layer_rows} == set(LAYERS) and all(r["units"] > 0 for r in layer_rows)
    first = lines[0]
    assert (first["from"], first["to"]) == ("epoch1", "epoch2")
    ev = result.layers[first["layer"]]
    assert first["overlap"] == pytest.approx(float(ev.mean_overlap()[0]))
    unit_rows = [r for r in lines if r["unit"] is not None]
    assert set(unit_rows[0]) == {"layer", "unit", "from", "to", "overlap", "correlation"}
    assert len(result.records(all_units=True)) == sum(steps * (1 + ev.channels) for ev in result.layers.values())


def test_each_cell_is_the_scans_strongest_example(result):
    ev = result.layers["relu2"]
    for row, unit in enumerate(ev.units):
        for scan, cell in zip(result.scans, ev.cells[row]):
            best = scan.examples("relu2", unit)[0]
            assert (cell.photo, cell.y, cell.x, cell.value) == (best.path, best.y, best.x, best.value)
            t, l, b, r = cell.box
            assert cell.patch.shape == cell.projection.shape == (b - t, r - l, 3)


def test_the_grid_shows_pictures_that_change(result):
    ev = result.layers["relu3"]
    grid = np.asarray(result.grid("relu3", size=32).convert("L"), dtype=np.float64)
    assert grid.std() > 20  # pictures on a white page, not a blank one
    # the same unit's projection differs between the first and the last checkpoint
    first, last = ev.cells[0][0].projection, ev.cells[0][-1].projection
    assert first.shape != last.shape or np.abs(first.astype(int) - last.astype(int)).mean() > 2
    # and so do the drawn columns of the grid (units as rows, checkpoints as columns)
    width = grid.shape[1]
    cols = len(result.checkpoints)
    col_w = (width - 58 - 8) / cols
    left = grid[:, 58 : int(58 + col_w)]
    right = grid[:, int(58 + (cols - 1) * col_w) : int(58 + cols * col_w)]
    w = min(left.shape[1], right.shape[1])
    assert np.abs(left[:, :w] - right[:, :w]).mean() > 2


def test_save_writes_grids_plot_and_records(result, tmp_path):
    paths = result.save(tmp_path / "out", size=32)
    out = tmp_path / "out"
    top = sorted(p.name for p in paths if p.parent == out)
    assert top == sorted([f"evolve-{n}.png" for n in LAYERS] + ["evolve-changes.png", "evolve.jsonl", "evolve.json"])
    for p in paths:
        if p.suffix == ".png" and p.parent == out:
            with Image.open(p) as img:
                assert img.width > 100 and img.height > 100
    # the gallery's cells: every drawn unit's patch and projection at every checkpoint
    manifest = json.loads((out / "evolve.json").read_text())
    assert manifest["checkpoints"] == result.checkpoints
    for name, ev in result.layers.items():
        rows = manifest["layers"][name]["units"]
        assert [r["unit"] for r in rows] == list(ev.units)
        for row, cells in zip(rows, ev.cells):
            assert len(row["cells"]) == len(result.checkpoints)
            for entry, cell in zip(row["cells"], cells):
                with Image.open(out / entry["projection"]) as img:
                    assert np.array_equal(np.asarray(img), cell.projection)
                with Image.open(out / entry["patch"]) as img:
                    assert np.array_equal(np.asarray(img), cell.patch)
    assert result.figure(size=24).height > result.grid("relu1", size=24).height


def test_a_save_stopped_half_way_over_an_older_run_reads_as_incomplete(result, tmp_path, monkeypatch):
    import convscope.evolve as ev

    out = tmp_path / "out"
    result.save(out, size=32)
    assert (out / "evolve.jsonl").is_file() and (out / "evolve.json").is_file()

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "save_cells", stop)  # stopped while the cells are being written
    with pytest.raises(KeyboardInterrupt):
        result.save(out, size=32)
    # the old records are gone, so the gallery does not show them over a mix of pictures
    assert not (out / "evolve.jsonl").exists() and not (out / "evolve.json").exists()


def test_each_layer_is_drawn_by_the_atlas_rule_of_methods(result, tmp_path):
    """relu1 comes before any max-pool, so its deconvnet is the same for every image: guided
    backprop stands in, with the reason, as in the atlas; relu2 and relu3 follow a max-pool and
    keep the deconvnet the run asked for. The saved manifest says which was drawn."""
    assert result.method == "deconvnet"
    drawn = {name: (ev.method, ev.method_note) for name, ev in result.layers.items()}
    assert drawn["relu1"][0] == "guided" and "guided backprop is shown instead" in drawn["relu1"][1]
    assert drawn["relu2"] == ("deconvnet", None) and drawn["relu3"] == ("deconvnet", None)
    result.save(tmp_path, size=32)
    manifest = json.loads((tmp_path / "evolve.json").read_text())
    assert {n: (manifest["layers"][n]["method"], manifest["layers"][n]["method_note"]) for n in LAYERS} == drawn


def test_a_saved_run_reads_back_as_it_was_saved(result, tmp_path):
    """EvolveRun.open, the reader beside Evolution.save: the checkpoints, each layer's mean
    change numbers per step and every unit's; a folder that is not a run is one line."""
    from convscope.evolve import EvolveRun, RunUnreadable

    out = tmp_path / "out"
    result.save(out, size=32)
    run = EvolveRun.open(out)
    assert run.checkpoints == result.checkpoints and run.note is None
    assert list(run.layers) == list(result.layers) and run.manifest["top"] == result.top
    for name, ev in result.layers.items():
        assert run.layers[name]["means"] == pytest.approx(result.changes(name), nan_ok=True)
        assert run.layers[name]["channels"] == ev.channels
        unit = ev.units[0]
        assert [s["overlap"] for s in run.layers[name]["units"][unit]] == pytest.approx(ev.overlap[:, unit].tolist())
    stamp = EvolveRun.stamp(out)
    (out / "evolve.json").unlink()
    assert EvolveRun.stamp(out) != stamp
    assert EvolveRun.open(out).manifest is None and "no evolve.json" in EvolveRun.open(out).note
    (out / "evolve.jsonl").write_text("{not json\n")
    with pytest.raises(RunUnreadable, match="has a malformed evolve.jsonl \\(line 1"):
        EvolveRun.open(out)
    with pytest.raises(RunUnreadable, match="is not a folder; write one with `convscope evolve"):
        EvolveRun.open(tmp_path / "nowhere")


def test_the_users_module_is_left_alone(run):
    net = StripeNet().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = evolve(net, run["paths"][-2:], [run["photos"]], ["relu1", "relu3"], units={"relu1": [1, 5]}, count=2,
                 top=4, preprocessing=PREP, device="cpu", workers=0)
    assert net.training and hook_count(net) == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert res.checkpoints == ["epoch5", "epoch6"]
    assert res.layers["relu1"].units == [1, 5]  # named; relu3 left out: its 2 strongest at the last checkpoint
    best = res.scans[-1].state.top("relu3")[0][:, 0]
    assert res.layers["relu3"].units == sorted(torch.argsort(best, descending=True)[:2].tolist())


def test_bad_arguments_are_sentences(run):
    with pytest.raises(ValueError, match="two or more"):
        evolve(StripeNet, run["paths"][:1], [run["photos"]], LAYERS, preprocessing=PREP, device="cpu")
    with pytest.raises(ValueError, match="more photos than top"):
        evolve(StripeNet, run["paths"][:2], [run["photos"]], LAYERS, top=60, preprocessing=PREP, device="cpu")
    broken = run["folder"] / "broken.pt"
    torch.save(_broken(run["states"][0], "missing"), broken)
    with pytest.raises(CheckpointError, match=r"broken.pt' does not fit StripeNet: missing key 'conv2.bias'"):
        evolve(StripeNet, [run["paths"][0], broken], [run["photos"]], LAYERS, preprocessing=PREP, device="cpu")
    with pytest.raises(TypeError, match="pass count=3"):
        evolve(StripeNet, run["paths"][:2], [run["photos"]], LAYERS, units=3, preprocessing=PREP, device="cpu", workers=0)
    with pytest.raises(ValueError, match="unit 99 is out of range"):
        evolve(StripeNet, run["paths"][:2], [run["photos"]], ["relu1"], units=[99], preprocessing=PREP,
               device="cpu", workers=0)
