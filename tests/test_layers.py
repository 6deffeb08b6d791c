import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import convscope
from convscope.errors import UnknownLayerError
from convscope.hooks import hook_count
from convscope.layers import FixedInputSizeWarning, LayerCatalogue

# Receptive fields and strides computed by hand from the architectures' kernel/stride tables.
ALEXNET = {
    "features.0": (11, 4), "features.1": (11, 4), "features.2": (19, 8), "features.3": (51, 8),
    "features.5": (67, 16), "features.6": (99, 16), "features.8": (131, 16), "features.10": (163, 16),
    "features.11": (163, 16), "features": (195, 32),
}
VGG16 = {
    "features.0": (3, 1), "features.2": (5, 1), "features.4": (6, 2), "features.5": (10, 2),
    "features.9": (16, 4), "features.16": (44, 8), "features.23": (100, 16), "features.28": (196, 16),
    "features": (212, 32),
}
RESNET18 = {
    "conv1": (7, 2), "relu": (7, 2), "maxpool": (11, 4), "layer1.0": (27, 4), "layer1": (43, 4),
    "layer2.0.downsample": (43, 8), "layer2": (99, 8), "layer3": (211, 16), "layer4": (435, 32),
}


@pytest.fixture(scope="module")
def tv_models():
    return {
        name: convscope.load_model(f"torchvision:{name}", pretrained=False, device="cpu")
        for name in ("alexnet", "vgg16", "resnet18")
    }


@pytest.mark.parametrize("arch,expected", [("alexnet", ALEXNET), ("vgg16", VGG16), ("resnet18", RESNET18)])
def test_receptive_fields_match_hand_computed(tv_models, arch, expected):
    cat = tv_models[arch].layers
    for name, (rf, stride) in expected.items():
        info = cat.get(name)
        assert info.receptive_field == (rf, rf), name
        assert info.stride == (stride, stride), name


def test_shapes_and_reused_modules(tv_models):
    cat = tv_models["resnet18"].layers
    assert cat.get("layer3").shape == (256, 14, 14)
    assert cat.get("conv1").shape == (64, 112, 112)
    # BasicBlock calls its one ReLU twice: left out, with a note saying why
    assert "layer1.0.relu" not in cat
    assert any("layer1.0.relu" in n and "2 times" in n for n in cat.notes)
    assert cat.default == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert tv_models["alexnet"].layers.default == ["features.1", "features.4", "features.11", "features"]


@pytest.mark.parametrize("arch,size", [("alexnet", 128), ("resnet18", 96), ("vgg16", 64)])
def test_gradient_support_lies_inside_reported_field(tv_models, arch, size):
    """With the real (random) weights, the input-gradient support of a centre and a corner unit
    of every listed layer lies inside the unit's reported box (one batched backward pass)."""
    from convscope.hooks import capture, run
    from convscope.layers import _support_box

    model = tv_models[arch].module
    cat = LayerCatalogue.probe(model, (size, size), cache=False)
    infos = list(cat)
    torch.manual_seed(0)
    units = []
    for info in infos:
        _, h, w = info.shape
        units += [(info, (h - 1) // 2, (w - 1) // 2), (info, h - 1, w - 1)]
    x = torch.randn(1, 3, size, size).repeat(len(units), 1, 1, 1).requires_grad_(True)
    with capture(model, [i.name for i in infos]) as outs:
        run(model, x, outs)
        total = sum(outs[info.name][k, :, y, xx].sum() for k, (info, y, xx) in enumerate(units))
        (grad,) = torch.autograd.grad(total, x)
    checked = 0
    for k, (info, y, xx) in enumerate(units):
        support = _support_box(grad[k])
        if support is None:  # a dead unit (random weights): nothing to check
            continue
        top, left, bottom, right = info.box(y, xx, (size, size))
        assert top <= support[0] and left <= support[1], (info.name, y, xx)
        assert support[2] <= bottom and support[3] <= right, (info.name, y, xx)
        checked += 1
    assert checked >= len(infos)
    assert hook_count(model) == 0


def test_default_model_catalogue(default_model):
    cat = default_model.layers
    assert cat.default == ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks", "bn2"]
    bn2 = cat.get("bn2")
    assert bn2.shape == (1280, 7, 7) and bn2.stride == (32, 32)
    assert cat.get("conv_stem").receptive_field == (3, 3)
    # TensorFlow "same" padding of a stride-2 conv pads bottom/right only: unit (0, 0) starts at 0
    assert cat.get("conv_stem").offset == (0, 0)


def test_unknown_layer_lists_close_matches(tv_models):
    cat = tv_models["resnet18"].layers
    with pytest.raises(UnknownLayerError) as err:
        cat.get("layer3.1.conv")
    msg = str(err.value)
    assert "layer3.1.conv1" in msg and "run `convscope layers`" in msg.lower()
    with pytest.raises(UnknownLayerError):
        cat.select("layer1,nope")


def test_catalogue_leaves_model_unchanged(tv_models):
    model = tv_models["alexnet"].module
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    LayerCatalogue.probe(model, (224, 224), cache=False).select("all")
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k])
    assert hook_count(model) == 0
    assert all(isinstance(m, nn.MaxPool2d) for m in (model.features[2], model.features[5]))


def test_cli_layers_json():
    out = subprocess.run(
        [sys.executable, "-m", "convscope", "layers", "--model", "torchvision:alexnet", "--no-pretrained", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]  # JSON lines: one record per layer
    by = {r["name"]: r for r in rows}
    assert by["features.0"] == {
        "name": "features.0", "type": "Conv2d", "shape": [64, 55, 55], "stride": 4, "receptive_field": 11,
        "offset": [-2, -2], "default": False,
    }
    assert by["features.11"]["default"] is True
    bad = subprocess.run(
        [sys.executable, "-m", "convscope", "layers", "--model", "torchvision:nope", "--no-pretrained"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


class _FixedSize(nn.Module):
    """Two stride-2 convs and a Linear over the flattened map: it runs at 32 x 32 only."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))).flatten(1))


def test_fixed_input_size_model_warns_why_and_estimates_strides():
    import warnings

    model = _FixedSize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cat = LayerCatalogue.probe(model, (32, 32), cache=False)
    fixed = [w for w in caught if issubclass(w.category, FixedInputSizeWarning)]
    assert len(fixed) == 1  # one warning, saying why
    assert "does not run at 96x96 (RuntimeError: mat1 and mat2 shapes cannot be multiplied" in str(fixed[0].message)
    assert "estimated from their map sizes at 32x32" in str(fixed[0].message)
    assert cat.get("conv1").stride == (2, 2) and cat.get("relu2").stride == (4, 4)
    assert cat.get("conv1").receptive_field == (3, 3) and cat.get("conv2").receptive_field == (7, 7)
    assert hook_count(model) == 0


def test_a_bug_at_a_larger_input_is_not_taken_for_a_fixed_size():
    class Buggy(_FixedSize):
        def forward(self, x):
            if x.shape[-1] != 32:
                return {"logits": 1}["scores"]  # a bug, not a size the model refuses
            return super().forward(x)

    with pytest.raises(KeyError, match="scores"):
        LayerCatalogue.probe(Buggy(), (32, 32), cache=False)


# --------------------------------------------------------------------------- saturating activations


@pytest.fixture(scope="module")
def lite0():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # random BatchNorm statistics, so that bn(x) is no near-identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 3)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 2)
    return model


@pytest.mark.parametrize("layer", ["bn1", "blocks.5.0.bn1", "bn2"])
def test_relu6_layers_saturate_and_their_pre_activation_is_bn_of_the_input(lite0, layer):
    from convscope.saturation import Saturation, activation_maps, saturating_activation

    sat = saturating_activation(lite0, layer)
    assert sat == Saturation(layer, f"{layer}.act", "ReLU6", 0.0, 6.0)
    assert hook_count(lite0) == 0
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2
    bn = dict(lite0.named_modules())[layer]
    seen = []
    handle = bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        post, pre = activation_maps(lite0, sat, x)
    finally:
        handle.remove()
    assert hook_count(lite0) == 0
    by_hand = (seen[0] - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    by_hand = by_hand * bn.weight[:, None, None] + bn.bias[:, None, None]
    assert pre.shape == post.shape and torch.allclose(pre, by_hand, atol=1e-4, rtol=1e-4)
    assert torch.equal(post, pre.clamp(0, 6))  # pre was cloned before the in-place ReLU6 ran
    tied = post == 6.0
    assert tied.sum() > 10 and (pre[tied] > 6.0).all()  # the ties a ranking by post cannot order
    # the brute-force ranking the scan must reproduce: per (image, unit) the largest pre-activation
    # and where it is; there the post-activation is also the largest (ReLU6 is monotone)
    n, c = pre.shape[:2]
    for i in range(n):
        for u in range(0, c, max(1, c // 7)):
            flat = int(pre[i, u].argmax())
            y, xx = divmod(flat, pre.shape[3])
            assert float(pre[i, u, y, xx]) == float(pre[i, u].max())
            assert float(post[i, u, y, xx]) == float(post[i, u].max())


def test_non_saturating_layers_return_none_and_torchvision_relu6_is_found():
    from convscope.saturation import Saturation, saturating_activation

    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert saturating_activation(resnet, "relu") is None  # a plain ReLU
    assert saturating_activation(resnet, "layer1") is None  # ends in a sum then a ReLU
    mnv2 = torchvision.models.mobilenet_v2(weights=None).eval()
    assert saturating_activation(mnv2, "features.18") == Saturation("features.18", "features.18.2", "ReLU6", 0.0, 6.0)
    assert saturating_activation(mnv2, "features.18.2") == Saturation("features.18.2", "features.18.2", "ReLU6", 0.0, 6.0)
    assert saturating_activation(mnv2, "features.14") is None  # ends in its projection BatchNorm
    gate = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid())
    assert saturating_activation(gate, "1") == Saturation("1", "1", "Sigmoid", 0.0, 1.0)
    with pytest.raises(UnknownLayerError, match="features.18"):
        saturating_activation(mnv2, "features.188")
    assert hook_count(mnv2) == 0
