"""Backbone taps: shapes, channels, unknown names, torchvision plug-in."""

import pytest
import torch
from torchvision.models import resnet18

from anomem.errors import ConfigError
from anomem.model.backbone import TappedResNet


@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_small_stem_tap_shapes(arch, expansion):
    net = TappedResNet.build(arch, ("layer3", "layer4"), in_channels=1, width=8, stem="small")
    out = net(torch.randn(2, 1, 28, 28))
    assert [tuple(o.shape) for o in out] == [(2, 32 * expansion, 7, 7), (2, 64 * expansion, 4, 4)]
    assert net.tap_channels == (32 * expansion, 64 * expansion)


def test_layers_after_the_deepest_tap_are_not_built():
    net = TappedResNet.build("resnet18", ("layer2",), width=8)
    assert "layer3" not in net.layers and "layer4" not in net.layers
    assert net(torch.randn(1, 3, 32, 32))[0].shape == (1, 16, 16, 16)


def test_imagenet_stem_downsamples_by_four():
    net = TappedResNet.build("resnet18", ("layer1",), width=8, stem="imagenet")
    assert net(torch.randn(1, 3, 64, 64))[0].shape == (1, 8, 16, 16)


def test_unknown_tap_is_an_error():
    with pytest.raises(ConfigError, match="unknown tap 'layer9'"):
        TappedResNet.build("resnet18", ("layer9",))


def test_torchvision_resnet_plugs_in_by_module_and_name():
    tv = resnet18(weights=None)
    net = TappedResNet.from_torchvision(tv, ("layer3", "layer4"))
    out = net(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == [256, 512] and net.tap_channels == (256, 512)
    # the wrapped network computes exactly torchvision's stages
    tv.eval()
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
    torch.testing.assert_close(net(x)[1], ref)
    small = TappedResNet.build("torchvision:resnet18", ("layer4",), in_channels=1, stem="small")
    assert small(torch.randn(1, 1, 32, 32))[0].shape == (1, 512, 4, 4)
    with pytest.raises(ConfigError, match="no ResNet called"):
        TappedResNet.from_torchvision("vgg16", ("layer4",))
