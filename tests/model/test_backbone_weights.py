"""backbone.weights: a local torchvision ResNet state dict (never downloaded) loaded by
name and shape, with counts, the RGB-to-grey rule and a clear error when nothing fits."""

import warnings

import pytest
import torch
from torchvision.models import resnet18

from anomem import AnoMem
from anomem.errors import ConfigError
from anomem.model.backbone import TappedResNet, load_resnet_weights

from synthetic import stripes

TAPS = ("layer3", "layer4")


@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(0)
    return resnet18(weights=None).state_dict()


@pytest.fixture
def weights_file(tv_state, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(tv_state, path)
    return path


@pytest.mark.parametrize("arch", ["resnet18", "torchvision:resnet18"])
def test_full_match_loads_everything_but_fc(arch, tv_state, weights_file):
    net = TappedResNet.build(arch, TAPS, in_channels=3, width=64, stem="imagenet")
    report = load_resnet_weights(net, weights_file)
    own = net.state_dict()
    weights = [k for k in own if not k.endswith("num_batches_tracked")]
    assert report.loaded == len(weights) == 100 and report.missing == () and report.mismatched == ()
    assert set(report.unused) == {"fc.weight", "fc.bias"} and not report.summed_rgb
    assert torch.equal(own["stem.0.weight"], tv_state["conv1.weight"])
    assert torch.equal(own["layers.layer4.1.bn2.running_var"], tv_state["layer4.1.bn2.running_var"])
    assert "loaded 100 tensors" in report.describe()


def test_small_stem_and_grey_input(tv_state, weights_file):
    net = TappedResNet.build("resnet18", TAPS, in_channels=1, width=64, stem="small")
    report = load_resnet_weights(net, weights_file)
    assert [m.split()[0] for m in report.mismatched] == ["conv1.weight"]  # 7x7 file vs 3x3 small stem
    assert "(64, 1, 7, 7) vs stem.0.weight (64, 1, 3, 3)" in report.mismatched[0]
    assert report.missing == ("stem.0.weight",) and report.loaded == 99
    assert torch.equal(net.state_dict()["layers.layer2.0.downsample.0.weight"], tv_state["layer2.0.downsample.0.weight"])
    grey = TappedResNet.build("resnet18", TAPS, in_channels=1, width=64, stem="imagenet")
    rep = load_resnet_weights(grey, weights_file)
    assert rep.summed_rgb and rep.mismatched == ()
    torch.testing.assert_close(grey.state_dict()["stem.0.weight"], tv_state["conv1.weight"].sum(1, keepdim=True))


def test_wrapped_and_prefixed_files(tv_state, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv_state.items()}, "epoch": 3}, path)
    net = TappedResNet.build("resnet18", ("layer2",), in_channels=3, width=64, stem="imagenet")
    report = load_resnet_weights(net, path)
    assert report.loaded == len([k for k in net.state_dict() if not k.endswith("num_batches_tracked")])
    assert any(u.startswith("module.layer3.") for u in report.unused)  # stages after the deepest tap


def test_errors(weights_file, tmp_path):
    narrow = TappedResNet.build("resnet18", TAPS, in_channels=3, width=16, stem="imagenet")
    with pytest.raises(ConfigError, match=r"no tensor of .* matches this backbone.*same depth and width"):
        load_resnet_weights(narrow, weights_file)
    with pytest.raises(ConfigError, match=r"does not exist \(weights are never downloaded\)"):
        load_resnet_weights(narrow, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read"):
        load_resnet_weights(narrow, tmp_path / "junk.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="does not hold a state dict"):
        load_resnet_weights(narrow, tmp_path / "list.pth")


def test_fit_starts_from_the_file_and_the_detector_does_not_need_it(tv_state, weights_file, tmp_path):
    det = AnoMem("tiny", progress=False, width=64, weights=str(weights_file), epochs=1, train__batch_size=16,
                 train__lr=1e-3, heads__steps=5, prototype_cache=0, calibration_fraction=0.0)
    with pytest.warns(UserWarning, match=r"backbone.weights: loaded 99 tensors; 1 of another shape"):
        det.fit(stripes(32, False, seed=0))
    assert det.backbone_weights_.loaded == 99
    trained = det.net_.backbone.layers.layer3[0].conv1.weight.detach().flatten()
    start = tv_state["layer3.0.conv1.weight"].flatten()
    assert torch.corrcoef(torch.stack([trained, start]))[0, 1] > 0.99  # one short epoch from the file
    det.save(tmp_path / "m.ckpt")
    weights_file.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = AnoMem.load(tmp_path / "m.ckpt")
    x = stripes(4, True, seed=1)
    torch.testing.assert_close(torch.from_numpy(loaded.anomaly_score(x)), torch.from_numpy(det.anomaly_score(x)))
    assert AnoMem("tiny", progress=False, epochs=1)._resolve_config().backbone.weights == ""  # default: from scratch
