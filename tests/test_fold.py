"""BatchNorm folding: a hand-checked fold, random-initialized real architectures, the fallback,
and the invariants (the user's model unchanged, hooked layers and input gradients equal)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convscope.errors import UnknownLayerError
from convscope.fold import fold_batchnorm
from convscope.hooks import forward_layers, hook_count


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running stats and affine parameters (some scales negative), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                if m.weight is not None:
                    sign = torch.where(torch.rand(n, generator=g) < 0.2, -1.0, 1.0)
                    m.weight.copy_(sign * (torch.rand(n, generator=g) + 0.5))
                    m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def snapshot(model: nn.Module) -> tuple[dict, dict, list[bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    return state, grads, [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, before) -> None:
    state, grads, training = snapshot(model)
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert grads == before[1] and training == before[2]
    assert hook_count(model) == 0


def assert_same_function(original, private, names, x, tol=1e-5):
    want = forward_layers(original, x, names) if names else {}
    got = forward_layers(private, x, names) if names else {}
    for name in names:
        assert rel_err(got[name], want[name]) <= tol, name
    with torch.no_grad():
        assert rel_err(private(x), original(x)) <= tol


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    return x.grad


@pytest.fixture(scope="module")
def resnet18():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return randomize_norms(resnet18(weights=None), seed=1)


@pytest.fixture(scope="module")
def lite0():
    import timm

    torch.manual_seed(0)
    return randomize_norms(timm.create_model("tf_efficientnet_lite0", pretrained=False), seed=2)


class SubclassBN(nn.BatchNorm2d):
    """A BatchNorm2d subclass without act/drop: folded by turning it into an exact identity."""


# --------------------------------------------------------------------------- 1. hand-checked fold


def test_fold_matches_hand_formula_and_replaces_by_name():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
        nn.Conv2d(4, 6, 1), SubclassBN(6, eps=1e-3),
    )
    randomize_norms(net, seed=3)
    before = snapshot(net)
    private, folded = fold_batchnorm(net, torch.randn(2, 3, 12, 12))
    assert folded == ["1", "4", "7"]
    assert_unchanged(net, before)
    assert isinstance(private[1], nn.Identity) and isinstance(private[4], nn.Identity)
    assert type(private[7]) is SubclassBN
    assert all(not p.requires_grad for p in private.parameters())

    # The first conv's new weight and bias, computed here independently.
    bn = net[1]
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    w = net[0].weight.double() * scale[:, None, None, None]
    b = bn.bias.double() - bn.running_mean.double() * scale
    assert torch.allclose(private[0].weight.double(), w, rtol=1e-6, atol=1e-7)
    assert torch.allclose(private[0].bias.double(), b, rtol=1e-6, atol=1e-7)

    x = torch.randn(3, 3, 16, 16)
    assert_same_function(net, private, ["1", "4", "7"], x)


# --------------------------------------------------------------------------- 2. real architectures


def test_resnet18_all_folded_and_gradients_equal(resnet18):
    before = snapshot(resnet18)
    private, folded = fold_batchnorm(resnet18, torch.randn(1, 3, 64, 64), ["layer2.1.bn2", "layer3"])
    assert len(folded) == 20
    assert "layer2.0.downsample.1" in folded
    assert isinstance(private.layer2[0].downsample[1], nn.Identity)
    assert_unchanged(resnet18, before)
    x = torch.randn(2, 3, 64, 64)
    assert_same_function(resnet18, private, ["layer1.0.bn1", "layer2.1.bn2", "layer3"], x)
    assert rel_err(input_gradient(private, x), input_gradient(resnet18, x)) < 1e-4
    assert_unchanged(resnet18, before)


def test_hooked_conv_is_not_folded(resnet18):
    layers = ["layer1.0.conv1", "layer2.0.downsample.0"]
    private, folded = fold_batchnorm(resnet18, torch.randn(1, 3, 64, 64), layers)
    assert len(folded) == 18
    assert "layer1.0.bn1" not in folded and "layer2.0.downsample.1" not in folded
    assert isinstance(private.layer1[0].bn1, nn.BatchNorm2d)
    assert_same_function(resnet18, private, layers, torch.randn(2, 3, 64, 64))


def test_efficientnet_lite0_all_folded_act_still_a_module(lite0):
    from timm.layers import BatchNormAct2d, Conv2dSame

    norms = [n for n, m in lite0.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 49
    before = snapshot(lite0)
    private, folded = fold_batchnorm(lite0, torch.randn(1, 3, 64, 64), ["bn2", "blocks.1.0.bn1"])
    assert sorted(folded) == sorted(norms)
    assert_unchanged(lite0, before)
    assert isinstance(private.conv_stem, Conv2dSame) and "bn1" in folded  # a padding-same conv
    assert type(private.bn2) is BatchNormAct2d

    x = torch.randn(2, 3, 64, 64)
    assert_same_function(lite0, private, ["blocks.1.0.bn1", "blocks.1.0.bn2"], x, tol=1e-4)
    fired = []
    handle = private.bn2.act.register_forward_hook(lambda m, i, o: fired.append(type(m).__name__))
    try:
        folded_out = forward_layers(private, x[:1], ["bn2"])["bn2"]
    finally:
        handle.remove()
    assert fired == ["ReLU6"]
    # Sixteen blocks with random weights amplify float32 rounding: the unfolded model itself is
    # about 6e-5 from float64 at bn2. The folded copy must be as close to float64 as it is.
    want = forward_layers(lite0, x[:1], ["bn2"])["bn2"]
    exact = forward_layers(copy.deepcopy(lite0).double(), x[:1].double(), ["bn2"])["bn2"]
    assert rel_err(folded_out, want) < 2e-4
    assert rel_err(folded_out, exact) < 2 * rel_err(want, exact) + 1e-6
    assert rel_err(input_gradient(private, x), input_gradient(lite0, x)) < 1e-4
    with torch.no_grad():  # the patched forwards survive a further copy
        assert torch.equal(copy.deepcopy(private)(x), private(x))


# --------------------------------------------------------------------------- 3. what is not folded


class SkipAroundBN(nn.Module):
    """The conv output goes into the BN and also around it: pairing is fooled, checking is not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.conv(x)
        return self.bn(a) + a


def test_fold_that_changes_outputs_falls_back():
    net = randomize_norms(SkipAroundBN(), seed=4)
    before = snapshot(net)
    private, folded = fold_batchnorm(net, torch.randn(1, 3, 10, 10))
    assert folded == []
    assert type(private.bn) is nn.BatchNorm2d
    assert all(torch.equal(a, b) for a, b in zip(private.state_dict().values(), net.state_dict().values()))
    assert all(not p.requires_grad for p in private.parameters())
    assert_unchanged(net, before)
    assert_same_function(net, private, ["bn"], torch.randn(2, 3, 10, 10), tol=0)


class SharedModules(nn.Module):
    """One conv run twice, and one BN run twice: neither output is one tensor to fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(self.conv(x)))
        return self.bn2(self.bn2(self.conv2(x)))


def test_reused_training_and_statless_norms_are_not_folded():
    net = randomize_norms(SharedModules(), seed=5)
    private, folded = fold_batchnorm(net, torch.randn(1, 4, 8, 8))
    assert folded == []

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
    )
    randomize_norms(net, seed=6)
    net[1].train()  # a training-mode BN normalizes by batch statistics and updates its running stats
    before = snapshot(net)
    private, folded = fold_batchnorm(net, torch.randn(2, 3, 12, 12))
    assert folded == ["5"]
    assert_unchanged(net, before)
    assert private[1].training and not private[5].training
    assert torch.equal(private[1].running_mean, net[1].running_mean)
    net.eval()  # compare without the batch statistics' dependence on the running stats' update
    private.eval()
    assert_same_function(net, private, ["3"], torch.randn(2, 3, 12, 12))


def test_module_with_a_user_hook_is_not_folded():
    net = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    seen = []
    handle = net[0].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        _private, folded = fold_batchnorm(net, torch.randn(1, 3, 10, 10))
        assert folded == ["3"]  # the hook would see a changed conv output
        assert hook_count(net) == 1
    finally:
        handle.remove()


def test_unknown_layer_raises_and_leaves_no_hooks(resnet18):
    before = snapshot(resnet18)
    with pytest.raises(UnknownLayerError, match="layer1.0.conv1"):
        fold_batchnorm(resnet18, torch.randn(1, 3, 32, 32), ["layer1.0.conv9"])
    assert_unchanged(resnet18, before)


def test_an_uncopyable_module_raises_its_own_error_and_is_left_as_it_was():
    """copy.deepcopy's failures (here a lock, TypeError) become one UncopyableModuleError."""
    import threading

    from convscope.errors import ConvscopeError
    from convscope.fold import UncopyableModuleError

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    net.lock = threading.Lock()
    before = snapshot(net)
    with pytest.raises(UncopyableModuleError, match=r"Sequential cannot be copied \(cannot pickle") as err:
        fold_batchnorm(net, torch.randn(1, 3, 8, 8))
    assert isinstance(err.value, ConvscopeError) and isinstance(err.value.__cause__, TypeError)
    assert_unchanged(net, before)
