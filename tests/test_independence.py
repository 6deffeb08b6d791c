"""The deconvnet-independence detector: structural verdicts checked against two random inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from convscope.backproject.independence import Dependence, deconvnet_depends_on_image, deconvnet_difference
from convscope.errors import UnknownLayerError
from convscope.hooks import hook_count

from .tiny import TinyNet, pooled, strided

pytestmark = pytest.mark.filterwarnings("ignore::convscope.backproject.ActivationRuleWarning")


def _net(recipe, seed=0):
    torch.manual_seed(seed)
    return TinyNet(*recipe()).eval()


class _Gated(nn.Module):
    """conv, ReLU, then a squeeze-excitation gate: x * sigmoid(conv(mean(x)))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.reduce = nn.Conv2d(8, 8, 1)
        self.gate = nn.Sigmoid()
        self.out = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.relu(self.conv(x))
        x = x * self.gate(self.reduce(x.mean((2, 3), keepdim=True)))
        return self.out(x)


class _Functional(nn.Module):
    """Functional calls the module hooks cannot see: an in-place ReLU (the deconvnet keeps its
    mask there) or a plain one (the rule handles it), and optionally a GroupNorm."""

    def __init__(self, inplace: bool, norm: bool = False):
        super().__init__()
        self.inplace, self.norm = inplace, norm
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        x = F.group_norm(x, 2) if self.norm else x
        return self.b(F.relu(x, inplace=self.inplace))


def test_detector_and_projections_agree_with_and_without_max_pooling():
    pooled_net, strided_net = _net(pooled), _net(strided)
    with_pool = deconvnet_depends_on_image(pooled_net, "features.7", input_size=(32, 32))
    without = deconvnet_depends_on_image(strided_net, "features.6", input_size=(32, 32))
    assert isinstance(with_pool, Dependence) and with_pool and not without
    assert [s.describe() for s in with_pool.switches] == [
        "max-pool switch (MaxPool2d) at 'features.2'", "max-pool switch (MaxPool2d) at 'features.5'"]
    assert without.switches == () and "no max-pool" in without.reason and "'features.6'" in without.reason
    assert "'features.2'" in with_pool.reason
    assert with_pool.to_dict()["switches"][0] == {"name": "features.2", "what": "MaxPool2d", "kind": "max-pool switch"}
    # the empirical check: two random inputs, the same unit and position
    for unit in range(4):
        d_pool = deconvnet_difference(pooled_net, "features.7", unit, input_size=(32, 32))
        d_none = deconvnet_difference(strided_net, "features.6", unit, input_size=(32, 32))
        assert d_pool.scale > 0 and d_pool.relative > 0.05, (unit, d_pool)
        assert d_none.scale > 0 and d_none.difference == 0.0, (unit, d_none)
        g_none = deconvnet_difference(strided_net, "features.6", unit, input_size=(32, 32), method="guided")
        assert g_none.scale > 0 and g_none.relative > 0.05  # guided backprop does see the image
    # before the first pool, the pooled net's deconvnet does not depend on the image either
    assert not deconvnet_depends_on_image(pooled_net, "features.1", input_size=(32, 32))
    assert deconvnet_difference(pooled_net, "features.1", 2, input_size=(32, 32)).difference == 0.0
    # the layer's own switches count: the pool itself
    assert deconvnet_depends_on_image(pooled_net, "features.2", input_size=(32, 32)).switches[0].name == "features.2"


@pytest.mark.parametrize("model, layer, depends, first", [
    (_Gated, "out", True, "gate (Sigmoid) at 'gate'"),
    (lambda: _Functional(inplace=True), "b", True,
     "in-place rectifier, where the deconvnet keeps the forward mask (relu()) in the model's forward"),
    (lambda: _Functional(inplace=False), "b", False, None),
    (lambda: _Functional(inplace=False, norm=True), "b", True,
     "normalization by the image's own statistics (group_norm()) in the model's forward"),
])
def test_gates_functional_calls_and_norms(model, layer, depends, first):
    torch.manual_seed(1)
    net = model().eval()
    dep = deconvnet_depends_on_image(net, layer, input_size=(16, 16))
    assert bool(dep) is depends
    if first:
        assert dep.switches[0].describe() == first
    if isinstance(net, _Gated):
        assert [s.describe() for s in dep.switches] == [
            "gate (Sigmoid) at 'gate'", "product of two image-dependent values (mul()) in the model's forward"]
    diff = max(deconvnet_difference(net, layer, u, input_size=(16, 16)).relative for u in range(4))
    assert (diff > 1e-3) is depends, diff


def test_model_is_left_unchanged_and_errors_are_one_line():
    net = _net(pooled)
    net.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in net.parameters()]
    before = net(torch.ones(1, 3, 16, 16))
    deconvnet_depends_on_image(net, "features.7", input_size=(16, 16))
    assert [p.requires_grad for p in net.parameters()] == flags and hook_count(net) == 0
    assert torch.equal(net(torch.ones(1, 3, 16, 16)), before)
    with pytest.raises(UnknownLayerError, match="features.7"):
        deconvnet_depends_on_image(net, "features.77", input_size=(16, 16))
    assert hook_count(net) == 0 and [p.requires_grad for p in net.parameters()] == flags
    with pytest.raises(ValueError, match="out of range"):
        deconvnet_difference(net, "features.7", unit=99, input_size=(16, 16))
    with pytest.raises(TypeError, match="LoadedModel or an nn.Module"):
        deconvnet_depends_on_image("vgg", "features.7")


def _tv(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _timm(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


# The four checks, and EfficientNet-B0, whose squeeze-excitation gates multiply the
# signal by a forward value (Lite0 has none).
@pytest.mark.parametrize("make, layer, depends, switch", [
    (lambda: _tv("vgg11"), "features.15", True, "max-pool switch (MaxPool2d) at 'features.2'"),
    (lambda: _tv("resnet18"), "layer3", True, "max-pool switch (MaxPool2d) at 'maxpool'"),
    (lambda: _tv("mobilenet_v2"), "features.14", False, None),
    (lambda: _timm("tf_efficientnet_lite0"), "blocks.4", False, None),
    (lambda: _timm("efficientnet_b0"), "blocks.4", True, "gate (Sigmoid) at 'blocks.0.0.se.gate'"),
])
def test_real_architectures(make, layer, depends, switch):
    model = make()
    dep = deconvnet_depends_on_image(model, layer, input_size=(64, 64))
    assert bool(dep) is depends, dep.reason
    if switch:
        assert dep.switches[0].describe() == switch
    deconv = deconvnet_difference(model, layer, unit=1, input_size=(64, 64))
    guided = deconvnet_difference(model, layer, unit=1, input_size=(64, 64), method="guided")
    assert deconv.scale > 0 and guided.scale > 0
    assert guided.relative > 1e-3  # guided backprop differs on all of them
    if depends:
        assert deconv.relative > 1e-3, deconv
    else:
        assert deconv.difference == 0.0, deconv  # identical to the last bit


def test_several_layers_share_one_pass_and_agree_with_one_at_a_time():
    from convscope.backproject.independence import deconvnet_dependence

    net = _net(pooled)
    layers = ["features.7", "features.1", "features.3", "features.2"]
    deps = deconvnet_dependence(net, layers, input_size=(16, 16))
    assert list(deps) == layers
    for name in layers:
        assert deps[name] == deconvnet_depends_on_image(net, name, input_size=(16, 16))
    assert [bool(deps[n]) for n in layers] == [True, False, True, True]
    assert [s.name for s in deps["features.3"].switches] == ["features.2"]
    assert hook_count(net) == 0


def test_layer_methods_is_the_one_rule_of_which_methods_a_layer_gets():
    """Guided backprop stands in for the deconvnet (once, with the reason) where the deconvnet
    cannot depend on the image; elsewhere, and with deconvnet="always", the methods are as asked."""
    from convscope.backproject import layer_methods, methods_for

    chosen = layer_methods(_net(strided), ["features.6"], ("deconvnet", "guided"), input_size=(32, 32))["features.6"]
    assert chosen.methods == ("guided",) and not chosen.dependence.depends
    assert chosen.note == chosen.dependence.reason and "guided backprop is shown instead" in chosen.note
    pooled_methods = layer_methods(_net(pooled), ["features.7"], ("deconvnet",), input_size=(32, 32))["features.7"]
    assert pooled_methods.methods == ("deconvnet",) and pooled_methods.note is None
    flat = Dependence("bn2", False, ())
    assert methods_for(flat, ("deconvnet",)).methods == ("guided",)
    assert methods_for(flat, ("deconvnet", "gradient")).methods == ("guided", "gradient")
    assert methods_for(flat, ("deconvnet", "guided"), "always").methods == ("deconvnet", "guided")
    assert methods_for(flat, ("guided",)).note is None
    with pytest.raises(ValueError, match="`deconvnet` must be 'auto' or 'always', got 'never'"):
        methods_for(flat, ("deconvnet",), "never")
