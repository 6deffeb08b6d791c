"""Static "same" padding: exactly timm's Conv2dSame, forward and input gradient, any input size."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from convscope.hooks import hook_count
from convscope.samepad import StaticSameConv2d, static_same_padding


@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (3, 1), (4, 3)])
@pytest.mark.parametrize("size", [(16, 16), (17, 15), (9, 12)])
def test_one_depthwise_conv_equals_conv2d_same(kernel, stride, size):
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    ref = Conv2dSame(6, 6, kernel, stride=stride, groups=6, bias=True)
    net = nn.Sequential(copy.deepcopy(ref))
    assert static_same_padding(net) == ["0"] and type(net[0]) is StaticSameConv2d
    x = torch.randn(2, 6, *size, requires_grad=True)
    a = ref(x)
    b = net(x)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    seed = torch.randn_like(a)
    (ga,) = torch.autograd.grad(a, x, seed)
    (gb,) = torch.autograd.grad(b, x, seed)
    torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-6)


def test_tf_efficientnet_lite0_depthwise_only_and_checked():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    private = copy.deepcopy(model)
    names = static_same_padding(private, torch.randn(1, 3, 64, 64))
    # the four strided depthwise convs; the dense stem keeps F.pad (extra multiply-adds cost more)
    assert names == ["blocks.1.0.conv_dw", "blocks.2.0.conv_dw", "blocks.3.0.conv_dw", "blocks.5.0.conv_dw"]
    assert type(private.conv_stem).__name__ == "Conv2dSame"
    for size in (64, 61):
        x = torch.randn(2, 3, size, size, requires_grad=True)
        a, b = model(x), private(x)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        (ga,) = torch.autograd.grad(a.sum(), x)
        (gb,) = torch.autograd.grad(b.sum(), x)
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    assert all(type(m).__name__ != "StaticSameConv2d" for m in model.modules())  # original untouched
    assert hook_count(model) == 0


def test_a_failed_check_puts_everything_back(monkeypatch):
    from timm.layers import Conv2dSame

    import convscope.samepad as samepad

    net = nn.Sequential(Conv2dSame(4, 4, 3, stride=2, groups=4))
    monkeypatch.setattr(samepad, "_same", lambda size, kernel, stride: (1, 1))  # a wrong padding
    assert static_same_padding(net, torch.randn(1, 4, 8, 8)) == []
    assert type(net[0]) is Conv2dSame
