"""Projections to pixels: exact hand-computed cases, captum cross-checks, invariants, the CLI."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from convscope.backproject import (
    METHODS,
    ActivationRuleWarning,
    ProjectionError,
    forward_pass,
    modified_backward,
    project,
    project_full,
    project_methods,
)
from convscope.errors import UnknownLayerError
from convscope.hooks import forward_layers, hook_count
from convscope.models import load_model

# Substitute-rule warnings are asserted where they matter (record_rule_warnings) and noise elsewhere.
pytestmark = pytest.mark.filterwarnings("ignore::convscope.backproject.ActivationRuleWarning")

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def record_rule_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [str(w.message) for w in caught if issubclass(w.category, ActivationRuleWarning)]


# --------------------------------------------------------------------------- 1. hand-weighted net


def _hand_weights():
    """Hand-chosen integer weights: conv 3->2 (3x3), ReLU, max-pool 2, conv 2->2 (2x2)."""
    w1 = np.array(
        [[[[1, 0, -1], [2, 0, -2], [1, 0, -1]], [[0, 1, 0], [1, -4, 1], [0, 1, 0]], [[-1, -1, -1], [0, 0, 0], [1, 1, 1]]],
         [[[0, 0, 1], [0, -1, 0], [1, 0, 0]], [[1, 1, 1], [1, 1, 1], [1, 1, 1]], [[2, -1, 0], [-1, 2, -1], [0, -1, 2]]]],
        dtype=np.float64,
    ) / 4
    b1 = np.array([0.5, -1.0])
    w2 = np.array([[[[1, -2], [3, 1]], [[-1, 2], [1, -3]]], [[[2, 1], [-1, 1]], [[1, 1], [-2, 2]]]], dtype=np.float64)
    b2 = np.array([0.0, 0.25])
    return w1, b1, w2, b2


def _hand_net(inplace: bool) -> nn.Module:
    w1, b1, w2, b2 = _hand_weights()
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(inplace=inplace), nn.MaxPool2d(2), nn.Conv2d(2, 2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w1))
        net[0].bias.copy_(torch.from_numpy(b1))
        net[3].weight.copy_(torch.from_numpy(w2))
        net[3].bias.copy_(torch.from_numpy(b2))
    return net.eval()


def _hand_input() -> torch.Tensor:
    # Distinct values, so max-pool windows have no ties except between rectified zeros.
    g = np.random.default_rng(7)
    return torch.from_numpy(g.integers(-3, 4, size=(2, 3, 8, 8)) + g.permutation(2 * 3 * 64).reshape(2, 3, 8, 8) / 512)


def _loop_projection(x: np.ndarray, unit: int, pos, method: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The projection by plain loops, written from the papers' definitions (float64)."""
    w1, b1, w2, b2 = _hand_weights()

    def conv(inp, w, b):
        o, _, k, _ = w.shape
        h, wd = inp.shape[1] - k + 1, inp.shape[2] - k + 1
        out = np.zeros((o, h, wd))
        for c in range(o):
            for i in range(h):
                for j in range(wd):
                    out[c, i, j] = (inp[:, i : i + k, j : j + k] * w[c]).sum() + b[c]
        return out

    def conv_back(g, w, in_shape):  # transposed filters
        k = w.shape[2]
        gx = np.zeros(in_shape)
        for c in range(g.shape[0]):
            for i in range(g.shape[1]):
                for j in range(g.shape[2]):
                    gx[:, i : i + k, j : j + k] += g[c, i, j] * w[c]
        return gx

    a = conv(x, w1, b1)  # (2, 6, 6)
    r = np.maximum(a, 0)
    pooled = np.zeros((2, 3, 3))
    switch = {}
    for c in range(2):
        for i in range(3):
            for j in range(3):
                win = r[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                k = int(np.argmax(win))  # first maximum in row-major order, as PyTorch's CPU kernel
                switch[c, i, j] = (2 * i + k // 2, 2 * j + k % 2)
                pooled[c, i, j] = win.max()
    out = conv(pooled, w2, b2)  # (2, 2, 2)
    if pos is None:
        k = int(np.argmax(out[unit]))
        pos = (k // 2, k % 2)
    g_out = np.zeros_like(out)
    g_out[unit, pos[0], pos[1]] = 1.0
    g_pool = conv_back(g_out, w2, pooled.shape)
    g_r = np.zeros_like(r)
    for (c, i, j), (y, xx) in switch.items():
        g_r[c, y, xx] += g_pool[c, i, j]
    if method == "deconvnet":
        g_a = np.maximum(g_r, 0)
    elif method == "guided":
        g_a = np.maximum(g_r, 0) * (a > 0)
    else:
        g_a = g_r * (a > 0)
    return conv_back(g_a, w1, x.shape), pos


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_hand_net_equals_plain_loop(method, inplace):
    net = _hand_net(inplace).double()
    x = _hand_input()
    units, positions = [1, 0], [(0, 1), (1, 1)]
    ours = project(net, x, "3", units, positions, method=method)
    for n in range(2):
        expected, _ = _loop_projection(x[n].numpy(), units[n], positions[n], method)
        np.testing.assert_allclose(ours[n].numpy(), expected, rtol=1e-12, atol=1e-12)
    # positions=None: each example's strongest position of its unit
    res = project_full(net, x, "3", units, None, method=method)
    for n in range(2):
        expected, pos = _loop_projection(x[n].numpy(), units[n], None, method)
        assert res.positions[n] == pos
        np.testing.assert_allclose(res.pixels[n].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_hand_net_methods_differ():
    """The check above is not vacuous: the three rules give three different answers here."""
    net, x = _hand_net(True).double(), _hand_input()
    out = {m: project(net, x, "3", [1, 0], [(0, 1), (1, 1)], method=m) for m in METHODS}
    assert not torch.allclose(out["deconvnet"], out["guided"])
    assert not torch.allclose(out["guided"], out["gradient"])
    assert not torch.allclose(out["deconvnet"], out["gradient"])


# --------------------------------------------------------------------------- 2. captum, real nets


def _captum_copy(module: nn.Module) -> nn.Module:
    """captum overrides ReLUs with full backward hooks, which fail on in-place ReLUs: it gets a
    copy with ``inplace=False``; convscope runs on the original (in-place) model."""
    ref = copy.deepcopy(module)
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return ref


@pytest.fixture(scope="module", params=[
    ("torchvision:alexnet", "features.10", 64),
    ("torchvision:vgg11", "features.13", 32),
    ("torchvision:resnet18", "layer2", 32),
], ids=["alexnet", "vgg11", "resnet18"])
def real_net(request):
    spec, layer, size = request.param
    model = load_model(spec, pretrained=False, device="cpu")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, layer, x


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_equals_captum(real_net, method):
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    model, layer, x = real_net
    before = model.module(x)
    unit = 5
    fmap = forward_layers(model.module, x[:1], [layer])[layer][0, unit]
    pos = divmod(int(fmap.argmax()), fmap.shape[1])
    ours = project(model, x, layer, [unit, unit], [pos, pos], method=method)
    ref_model = _captum_copy(model.module)
    cls = NeuronDeconvolution if method == "deconvnet" else NeuronGuidedBackprop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cls(ref_model, dict(ref_model.named_modules())[layer]).attribute(x.clone(), neuron_selector=(unit, *pos))
    assert float(ref.abs().max()) > 0
    assert rel_err(ours, ref) <= 1e-5
    # not vacuous: the rule changed the answer
    assert rel_err(project(model, x, layer, [unit, unit], [pos, pos], method="gradient"), ref) > 1e-2
    assert hook_count(model.module) == 0
    assert torch.equal(model.module(x), before)


def test_batched_equals_one_at_a_time():
    model, layer = load_model("torchvision:resnet18", pretrained=False, device="cpu"), "layer2"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x3 = torch.cat([x, x[:1].flip(-1)])
    units, positions = [3, 17, 3], [(1, 2), (0, 0), (2, 1)]
    for method in ("deconvnet", "guided"):
        batched = project(model, x3, layer, torch.tensor(units), positions, method=method)
        for n in range(3):
            single = project(model, x3[n : n + 1], layer, [units[n]], [positions[n]], method=method)
            assert rel_err(batched[n], single[0]) <= 1e-5
    # argmax positions too
    res = project_full(model, x3, layer, units, None)
    for n in range(3):
        single = project_full(model, x3[n : n + 1], layer, [units[n]], None)
        assert single.positions[0] == res.positions[n]
        assert rel_err(res.pixels[n], single.pixels[0]) <= 1e-5


class _ClampedReLU(nn.ReLU):
    """ReLU6 as an nn.ReLU subclass, so that captum's ReLU hooks take it (test reference only)."""

    def forward(self, x):
        return F.relu6(x)


def test_default_model_relu6_equals_captum(default_model):
    """EfficientNet-Lite0's ReLU6 modules sit inside timm's BatchNormAct2d and are in place."""
    from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop

    module = default_model.module
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layer, unit = "blocks.2", 7
    before = module(x)
    ref_model = copy.deepcopy(module)
    for parent in list(ref_model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, child_name, _ClampedReLU())
    res, warned = record_rule_warnings(project_full, default_model, x, layer, [unit, unit])
    pos = res.positions[0]
    for method, cls in (("deconvnet", NeuronDeconvolution), ("guided", NeuronGuidedBackprop)):
        ours, warned = record_rule_warnings(project, default_model, x, layer, [unit, unit], [pos, pos], method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = cls(ref_model, dict(ref_model.named_modules())[layer]).attribute(x.clone(), neuron_selector=(unit, *pos))
        assert rel_err(ours, ref) <= 1e-5
        # one warning per ReLU6 layer that ran before the cut, naming the rule
        assert len(warned) == len(set(warned)) == 10
        assert all("ReLU6" in w and f"{method} rule" in w for w in warned)
    assert hook_count(module) == 0
    assert torch.equal(module(x), before)


# --------------------------------------------------------------------------- 3. rules, small nets


class _TwoStage(nn.Module):
    """conv-act-conv-act-conv; ``shared`` uses one activation module twice (as ResNet's BasicBlock)."""

    def __init__(self, act, shared=False, functional=None):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 3, 3)
        for c in (self.c1, self.c2, self.c3):
            with torch.no_grad():
                c.weight.copy_(torch.randn(c.weight.shape, generator=g))
                c.bias.copy_(torch.randn(c.bias.shape, generator=g))
        self.functional = functional
        if functional is None:
            self.a1 = act()
            self.a2 = self.a1 if shared else act()

    def forward(self, x):
        if self.functional == "relu":
            return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))
        if self.functional == "relu_":
            return self.c3(self.c2(self.c1(x).relu_()).relu_())
        return self.c3(self.a2(self.c2(self.a1(self.c1(x)))))


X_SMALL = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
UNITS, POS = [0, 2], [(3, 4), (5, 1)]


@pytest.mark.parametrize("method", list(METHODS))
def test_shared_relu_module_gets_the_rule_at_each_call(method):
    ref = project(_TwoStage(nn.ReLU).eval(), X_SMALL, "c3", UNITS, POS, method)
    for inplace in (False, True):
        net = _TwoStage(lambda: nn.ReLU(inplace=inplace), shared=True).eval()
        assert net.a1 is net.a2
        res = project_full(net, X_SMALL, "c3", UNITS, POS, method)
        torch.testing.assert_close(res.pixels, ref, rtol=1e-6, atol=1e-7)
        assert hook_count(net) == 0


def test_deconvnet_ignores_the_activation_forward():
    """Without max-pools a deconvnet projection does not depend on the forward pass at all, so
    SiLU, GELU, LeakyReLU, ReLU6 nets (same convs) must give the ReLU net's answer."""
    ref = project(_TwoStage(nn.ReLU).eval(), X_SMALL, "c3", UNITS, POS, "deconvnet")
    assert float(ref.abs().max()) > 0
    for act, name in ((nn.SiLU, "SiLU"), (nn.GELU, "GELU"), (nn.LeakyReLU, "LeakyReLU"), (nn.ReLU6, "ReLU6"), (nn.Hardswish, "Hardswish")):
        net = _TwoStage(act).eval()
        out, warned = record_rule_warnings(project, net, X_SMALL, "c3", UNITS, POS, "deconvnet")
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
        assert len(warned) == 2, warned  # one per layer
        assert {w.split(" ")[0] for w in warned} == {"a1", "a2"}
        assert all(name in w and "deconvnet rule" in w and "rectified" in w for w in warned)
    # a shared non-ReLU module: still one warning for it
    _, warned = record_rule_warnings(project, _TwoStage(nn.SiLU, shared=True).eval(), X_SMALL, "c3", UNITS, POS, "deconvnet")
    assert len(warned) == 1
    # plain gradient: no substitute rule, no warning
    _, warned = record_rule_warnings(project, _TwoStage(nn.SiLU).eval(), X_SMALL, "c3", UNITS, POS, "gradient")
    assert warned == []


def _guided_by_hand(net, x, unit, pos, gate):
    """relu(signal) * gate(pre-activation) at both activations; autograd only through the convs
    (whose input gradient is the transposed filters, whatever their input)."""
    x = x.clone().requires_grad_(True)
    a1 = net.c1(x)
    r1 = net.a1(a1.detach())
    a2 = net.c2(r1)
    z2 = net.a2(a2.detach()).requires_grad_(True)
    (s2,) = torch.autograd.grad(net.c3(z2)[0, unit, pos[0], pos[1]], z2)  # signal at act2's output
    g_a2 = s2.clamp(min=0) * gate(a2.detach())
    z1 = r1.detach().requires_grad_(True)
    (s1,) = torch.autograd.grad(net.c2(z1), z1, grad_outputs=g_a2)  # signal at act1's output
    g_a1 = s1.clamp(min=0) * gate(a1.detach())
    (gx,) = torch.autograd.grad(a1, x, grad_outputs=g_a1)
    return gx[0]


def test_guided_relu6_uses_its_pass_through_mask():
    net = _TwoStage(nn.ReLU6).eval()
    with torch.no_grad():  # make some units saturate at 6
        net.c1.weight.mul_(3)
    x = X_SMALL[:1]
    a1 = net.c1(x)
    assert bool((a1 > 6).any()) and bool((a1 < 0).any())
    ours = project(net, x, "c3", [1], [(4, 4)], "guided")
    expected = _guided_by_hand(net, x, 1, (4, 4), lambda a: ((a > 0) & (a < 6)).to(a.dtype))
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-7)


def test_gates_keep_their_gradient():
    net = _TwoStage(nn.Sigmoid).eval()
    ours, warned = record_rule_warnings(project, net, X_SMALL, "c3", UNITS, POS, "deconvnet")
    torch.testing.assert_close(ours, project(net, X_SMALL, "c3", UNITS, POS, "gradient"))
    assert len(warned) == 2 and all("ordinary gradient" in w for w in warned)


def test_functional_relu_gets_the_rule():
    """F.relu in a forward method has no module to hook; the functional calls are caught too."""
    for method in ("deconvnet", "guided"):
        ref = project(_TwoStage(nn.ReLU).eval(), X_SMALL, "c3", UNITS, POS, method)
        res, warned = record_rule_warnings(project_full, _TwoStage(None, functional="relu").eval(), X_SMALL, "c3", UNITS, POS, method)
        torch.testing.assert_close(res.pixels, ref, rtol=1e-6, atol=1e-7)
        assert len(warned) == 1 and "functional relu()" in warned[0] and f"{method} rule" in warned[0]
        assert res.notes == warned
    # in place: guided exact; deconvnet cannot skip the mask and says so
    net = _TwoStage(None, functional="relu_").eval()
    ref = project(_TwoStage(nn.ReLU).eval(), X_SMALL, "c3", UNITS, POS, "guided")
    torch.testing.assert_close(project(net, X_SMALL, "c3", UNITS, POS, "guided"), ref, rtol=1e-6, atol=1e-7)
    out, warned = record_rule_warnings(project, net, X_SMALL, "c3", UNITS, POS, "deconvnet")
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    assert len(warned) == 1 and "in place" in warned[0] and "guided rule" in warned[0]


# --------------------------------------------------------------------------- 4. invariants


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


class _BoomModule(nn.Module):
    def forward(self, x):
        return _Boom.apply(x)


def _inplace_net():
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), _BoomModule(), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)
    ).eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_model_unchanged_after_success_and_errors(method):
    net = _inplace_net()
    x = torch.randn(2, 3, 16, 16)
    x_copy = x.clone()
    before = net(x)
    state = copy.deepcopy(net.state_dict())

    out = project(net, x, "2", [1, 3], method=method)  # a success, through an in-place ReLU
    assert out.shape == x.shape and float(out.abs().max()) > 0
    with pytest.raises(UnknownLayerError, match="unknown layer"):
        project(net, x, "7", [0, 0], method=method)
    with pytest.raises(ProjectionError, match=r"0\.\.3"):
        project(net, x, "2", [0, 4], method=method)
    with pytest.raises(ProjectionError, match=r"y in 0\.\.6"):
        project(net, x, "2", [0, 0], [(0, 0), (7, 0)], method=method)
    with pytest.raises(RuntimeError, match="boom in backward"):
        project(net, x, "5", [0, 1], method=method)  # through the module that raises, at 3
    with pytest.raises(RuntimeError, match="boom in backward"):  # and the raw context manager
        with modified_backward(net, method):
            net(x.clone().requires_grad_(True)).sum().backward()
    for p in net.parameters():
        p.grad = None  # the line above used .backward(); project() itself never sets .grad

    torch.testing.assert_close(project(net, x, "2", [1, 3], method=method), out, rtol=0, atol=0)
    assert hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(x, x_copy) and not x.requires_grad
    after = net(x)
    assert torch.equal(before, after)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])


def test_project_leaves_no_param_grads():
    net = _TwoStage(lambda: nn.ReLU(inplace=True)).eval()
    x = X_SMALL.clone().requires_grad_(True)  # a caller's tensor that requires grad is fine too
    out = project(net, x, "c3", UNITS, POS)
    torch.testing.assert_close(out, project(net, X_SMALL, "c3", UNITS, POS), rtol=0, atol=0)
    assert x.grad is None and not out.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_bad_arguments():
    net = _TwoStage(nn.ReLU).eval()
    with pytest.raises(ValueError, match="unknown projection method"):
        project(net, X_SMALL, "c3", UNITS, method="lrp")
    with pytest.raises(ValueError, match="2 examples"):
        project(net, X_SMALL, "c3", [0, 1, 2])
    with pytest.raises(ValueError, match="one .y, x. per example"):
        project(net, X_SMALL, "c3", UNITS, [(0, 0)])
    with pytest.raises(ValueError, match="shape"):
        project(net, X_SMALL[0], "c3", UNITS)
    assert hook_count(net) == 0


# --------------------------------------------------------------------------- 5. the CLI


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory):
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def test_cli_project_default_model(chelsea, tmp_path, default_model):
    from click.testing import CliRunner
    from PIL import Image

    from convscope.cli import main

    png, npy = tmp_path / "proj.png", tmp_path / "proj.npy"
    layer, unit = "blocks.2", 5
    r = CliRunner().invoke(main, ["project", str(chelsea), "--layer", layer, "--unit", str(unit), "--out", str(png), "--npy", str(npy), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "peaked at" in r.output and str(png) in r.output and str(npy) in r.output
    arr = np.load(npy)
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    assert np.asarray(Image.open(png)).shape == (224, 224, 3)
    # the same as the library on the same input, and zero outside the unit's receptive field
    from convscope.data import load_image

    x = default_model.preprocessing.transform()(load_image(chelsea)).unsqueeze(0)
    # EfficientNet-Lite0 has no max-pool: the deconvnet cannot depend on the image, so guided
    # backprop stands in for it with the atlas's reason (backproject.layer_methods)
    assert "guided backprop is shown instead" in r.output and "guided projection written" in r.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActivationRuleWarning)
        res = project_full(default_model, x, layer, [unit], method="guided")
    y, xx = res.positions[0]
    assert f"y={y} x={xx}" in r.output
    np.testing.assert_allclose(arr, res.pixels[0].numpy(), rtol=1e-5, atol=1e-7)
    top, left, bottom, right = default_model.layers.get(layer).box(y, xx, (224, 224))
    # drawn as the atlas draws it (display.to_picture), the receptive field outlined
    from convscope.display import to_picture

    drawn, picture = np.asarray(Image.open(png)), to_picture(arr)[0]
    outline = np.zeros((224, 224), bool)
    outline[top:bottom, left:right] = True
    outline[top + 1:bottom - 1, left + 1:right - 1] = False
    assert (drawn[~outline] == picture[~outline]).all() and (drawn[outline] == (255, 210, 0)).all()
    inside = np.zeros((224, 224), bool)
    inside[top:bottom, left:right] = True
    assert np.abs(arr).sum(0)[inside].max() > 0
    assert np.abs(arr).sum(0)[~inside].max() == 0


def test_cli_one_line_errors(chelsea, tmp_path, default_model, monkeypatch):
    from click.testing import CliRunner

    import convscope.models
    from convscope.cli import main

    monkeypatch.setattr(convscope.models, "load_model", lambda *a, **k: default_model)  # no reload
    out = tmp_path / "x"
    base = ["project", str(chelsea), "--out", str(out)]  # the CLI's grammar: --layers, --units, --out a folder
    for args, expected in (
        (["--layers", "blocks.99", "--units", "0"], "unknown layer 'blocks.99'"),
        (["--layers", "blocks.2", "--units", "40"], "0..39"),
        (["--layers", "blocks.2", "--units", "1", "--y", "28", "--x", "0"], "y in 0..27"),
        (["--layers", "blocks.2", "--units", "1", "--y", "0", "--x", "-1"], "x in 0..27"),
    ):
        r = CliRunner().invoke(main, base + args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.output
    assert not out.exists()
    r = CliRunner().invoke(main, base + ["--layers", "blocks.2", "--units", "1", "--y", "3", "--x", "4", "--method", "guided"])
    assert r.exit_code == 0 and "taken at y=3 x=4" in r.output, r.output
    assert (out / f"{chelsea.stem}-blocks.2-1-guided.png").exists()


# --------------------------------------------------------------------------- 5. one forward, several methods


ALL = ("deconvnet", "guided", "gradient")


def _each_alone(net, x, layer, units, pos):
    return {m: project_full(net, x, layer, units, pos, method=m) for m in ALL}


def test_methods_share_one_forward_on_real_nets(real_net):
    """project_methods records the forward once and switches the rule between backward passes:
    each method's answer equals that method run alone (in-place ReLUs, max-pool switches, the
    ResNet's shared ReLU module)."""
    model, layer, x = real_net
    together = project_methods(model, x, layer, [5, 9], None, ALL)
    for m, alone in _each_alone(model, x, layer, [5, 9], None).items():
        assert together[m].method == m and together[m].positions == alone.positions
        torch.testing.assert_close(together[m].pixels, alone.pixels, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(together[m].activations, alone.activations)
    assert rel_err(together["deconvnet"].pixels, together["guided"].pixels) > 1e-2  # really switched
    assert hook_count(model.module) == 0


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU6, lambda: nn.LeakyReLU(0.1, inplace=True)], ids=["silu", "relu6", "leaky-inplace"])
def test_methods_share_one_forward_on_substitute_rules(act):
    """Smooth and leaky rectifiers (their derivative is taken at the forward pass), clamps, and
    the in-place functional fallback, all switched per backward pass."""
    net = _TwoStage(act).eval()
    with torch.no_grad():
        net.c1.weight.mul_(3)  # some ReLU6 units saturate
    together, warned = record_rule_warnings(project_methods, net, X_SMALL, "c3", UNITS, POS, ALL)
    for m, alone in _each_alone(net, X_SMALL, "c3", UNITS, POS).items():
        # (a smooth unit's derivative times the signal rounds apart from its fused backward kernel)
        torch.testing.assert_close(together[m].pixels, alone.pixels, rtol=1e-5, atol=1e-6)
        assert together[m].notes == alone.notes
    assert len(warned) == 4  # two layers, for deconvnet and for guided; none for the plain gradient
    functional = _TwoStage(None, functional="relu_").eval()
    together = project_methods(functional, X_SMALL, "c3", UNITS, POS, ALL)
    for m, alone in _each_alone(functional, X_SMALL, "c3", UNITS, POS).items():
        torch.testing.assert_close(together[m].pixels, alone.pixels, rtol=1e-6, atol=1e-7)


def test_forward_pass_seeds_on_two_layers_and_rounds():
    """One forward pass serves seeds on two layers (one per example) and several rounds of
    backward passes; each equals the projection computed alone."""
    torch.manual_seed(2)
    net = _inplace_net()[:3].append(nn.Conv2d(4, 4, 3)).append(nn.ReLU()).append(nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    with forward_pass(net, x, ["2", "5"], ("deconvnet", "guided")) as fp:
        a, b = fp.outputs["2"], fp.outputs["5"]
        sa, sb = torch.zeros_like(a), torch.zeros_like(b)
        sa[0, 1, 3, 2] = 1  # example 0: layer 2, unit 1
        sb[1, 0, 1, 4] = 1  # example 1: layer 5, unit 0
        first = {m: fp.backward({"2": sa, "5": sb}, m) for m in ("guided", "deconvnet")}
        sb2 = torch.zeros_like(b)
        sb2[0, 1, 2, 2] = 1
        second = fp.backward({"5": sb2}, "deconvnet", retain=False)
        with pytest.raises(ValueError, match="opened for deconvnet, guided"):
            fp.rules.use("gradient")
    assert hook_count(net) == 0
    for m in ("deconvnet", "guided"):
        torch.testing.assert_close(first[m][0], project(net, x[:1], "2", [1], [(3, 2)], m)[0])
        torch.testing.assert_close(first[m][1], project(net, x[1:], "5", [0], [(1, 4)], m)[0])
    torch.testing.assert_close(second[0], project(net, x[:1], "5", [1], [(2, 2)], "deconvnet")[0])
    assert float(second[1].abs().max()) == 0


def test_the_projected_units_own_activation_passes_its_seed():
    """A layer that ends in an activation (timm's BatchNormAct2d, a ReLU6 module): under guided
    backprop the projected unit's own mask is not applied to its seed, so a unit saturated at 6
    projects as its pre-activation does instead of to nothing; below saturation nothing changes."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.ReLU6()).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.copy_(torch.randn(conv.weight.shape) * 2)
    x = X_SMALL[:1]
    pre = net[:3](x)[0]
    sat = [(c, (y, xx)) for c in range(4) for y in range(8) for xx in range(8) if pre[c, y, xx] > 6.5]
    mid = [(c, (y, xx)) for c in range(4) for y in range(8) for xx in range(8) if 0.5 < pre[c, y, xx] < 5.5]
    assert sat and mid
    for c, p in (sat[0], mid[0]):
        got = project(net, x, "3", [c], [p], "guided")
        as_pre = project(net, x, "2", [c], [p], "guided")  # the same unit before its ReLU6
        torch.testing.assert_close(got, as_pre, rtol=1e-6, atol=1e-8)
        assert float(got.abs().max()) > 0
        # deconvnet: unchanged, the signal was never masked there
        torch.testing.assert_close(project(net, x, "3", [c], [p], "deconvnet"), project(net, x, "2", [c], [p], "deconvnet"))
    # the plain gradient stays the true gradient: zero for the saturated unit
    assert float(project(net, x, "3", [sat[0][0]], [sat[0][1]], "gradient").abs().max()) == 0
    # seeds on two layers in one pass (example 0 on layer 1, example 1 on layer 3): the deeper
    # seed still goes through the shallower layer's masks; each equals its projection alone
    xx2 = torch.cat([x, x])
    (c1, (y1, x1)), (c3, (y3, x3)) = (0, (4, 4)), mid[0]
    with forward_pass(net, xx2, ["1", "3"], ("guided",)) as fp:
        s1, s3 = torch.zeros_like(fp.outputs["1"]), torch.zeros_like(fp.outputs["3"])
        s1[0, c1, y1, x1] = 1
        s3[1, c3, y3, x3] = 1
        both = fp.backward({"1": s1, "3": s3}, "guided")
    torch.testing.assert_close(both[0], project(net, x, "1", [c1], [(y1, x1)], "guided")[0])
    torch.testing.assert_close(both[1], project(net, x, "3", [c3], [(y3, x3)], "guided")[0])


# --------------------------------------------------------------------------- one model, two threads


def test_entry_points_wait_for_the_model_lock_and_never_see_another_threads_hooks(tmp_path):
    """Another thread holds the model's lock with a hook on the model (as hooks.capture does):
    the projections, the private copies and classify's forward passes wait for it, so none of
    them runs through that hook or copies it; once it is released, each finishes."""
    import threading

    from PIL import Image

    from convscope.backproject import projection_module
    from convscope.classify import classify
    from convscope.fold import private_copy
    from convscope.hooks import model_lock

    from .test_atlas import SIZE, tiny_model

    model = tiny_model()
    module = model.module
    x = torch.randn(1, 3, SIZE, SIZE)
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    seen_by_hook: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def other_thread():
        with model_lock(module):
            handle = module.features[0].register_forward_hook(
                lambda *_: seen_by_hook.append(threading.current_thread().name))
            holding.set()
            release.wait(60)
            handle.remove()

    def backward():
        with modified_backward(module, "guided") as _notes:
            out = module(x.clone().requires_grad_())
            out[0, 1].backward()

    def projected():
        with forward_pass(module, x, ["features.4"], ("deconvnet",)) as fp:
            seed = torch.zeros_like(fp.outputs["features.4"])
            seed[0, 2, 1, 1] = 1
            fp.backward({"features.4": seed}, "deconvnet", retain=False)

    def copied():
        assert hook_count(private_copy(module)) == 0

    def private():
        copy_, _fmt = projection_module(module, x, ["features.4"])
        assert hook_count(copy_) == 0

    def classified():
        assert classify(model, [str(photo)], top=1, workers=0)[0].ok

    holder = threading.Thread(target=other_thread)
    holder.start()
    assert holding.wait(30)
    workers, finished = [], {}
    for fn in (backward, projected, copied, private, classified):
        def run(fn=fn):
            fn()
            finished[fn.__name__] = True

        t = threading.Thread(target=run, name=fn.__name__)
        t.start()
        workers.append(t)
    try:
        holder.join(1.0)  # time for a worker that does not wait to run through the hook
        assert finished == {} and seen_by_hook == []
    finally:
        release.set()
        holder.join(30)
        for t in workers:
            t.join(60)
    assert set(finished) == {"backward", "projected", "copied", "private", "classified"}
    assert seen_by_hook == [] and hook_count(module) == 0
