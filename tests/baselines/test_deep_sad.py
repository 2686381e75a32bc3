"""Deep SAD specifics: objective, centre, networks, labels, resizing, pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomem.baselines import DeepSAD
from anomem.baselines.deep_sad import (
    LOSS_EPS,
    LeNetDecoder,
    LeNetEncoder,
    deep_sad_loss,
    init_center,
)
from anomem.errors import ConfigError, DataError


def fast(**kw) -> DeepSAD:
    return DeepSAD(**{"epochs": 3, "batch_size": 16, "device": "cpu", "random_state": 0, **kw})


def test_loss_closed_form() -> None:
    dist = torch.tensor([1.0, 4.0, 0.5])
    anomaly = torch.tensor([False, True, True])
    got = deep_sad_loss(dist, anomaly, eta=2.0)
    expected = torch.tensor([1.0, 2.0 / (4.0 + LOSS_EPS), 2.0 / (0.5 + LOSS_EPS)])
    torch.testing.assert_close(got, expected)


def test_center_eps_fix() -> None:
    data = torch.tensor([[0.05, -0.05, 0.0, 0.5, -0.3], [0.05, -0.05, 0.0, 0.7, -0.5]])
    c = init_center(nn.Identity(), data, batch_size=1)
    torch.testing.assert_close(c, torch.tensor([0.1, -0.1, 0.1, 0.6, -0.4]))


def test_networks_have_no_bias_and_no_affine_batchnorm() -> None:
    for c_in, size, convs, rep in [(1, 28, 2, 32), (3, 32, 3, 128)]:
        est = fast(epochs=0).fit(np.zeros((4, c_in, size, size), dtype=np.uint8) + 100)
        net = est.net_
        assert isinstance(net, LeNetEncoder) and net.rep_dim == rep and est.c_.shape == (rep,)
        assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == convs
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                assert m.bias is None
            if isinstance(m, nn.BatchNorm2d):
                assert not m.affine
        assert (est.c_.abs() >= 0.1).all()
    assert fast(epochs=0, rep_dim=7).fit(np.zeros((4, 28, 28), dtype=np.uint8) + 9).c_.shape == (7,)


def test_decoder_mirrors_encoder() -> None:
    for c_in, size, channels in [(1, 28, (8, 4)), (3, 32, (32, 64, 128))]:
        dec = LeNetDecoder(c_in, channels, 16, size)
        out = dec(torch.randn(5, 16))
        assert out.shape == (5, c_in, size, size)
        assert out.min() >= 0 and out.max() <= 1


def test_loss_decreases(make_blobs) -> None:
    est = fast(epochs=8).fit(make_blobs(64))
    hist = est.loss_history_
    assert len(hist) == 8 and all(np.isfinite(hist))
    assert hist[-1] < 0.5 * hist[0], hist


def test_center_is_mean_initial_output_with_eps_fix(make_blobs) -> None:
    x = make_blobs(32)
    est = fast(epochs=0).fit(x)  # no training: net_ is the initial network
    with torch.no_grad():
        mean = est.net_(torch.from_numpy(x).float() / 255).mean(0)
    expected = torch.where(mean.abs() < 0.1, torch.where(mean < 0, -0.1, 0.1), mean)
    torch.testing.assert_close(est.c_, expected)


def test_labelled_anomalies_raise_their_type_scores(make_blobs, make_stripes) -> None:
    normals, labelled = make_blobs(64, seed=30), make_stripes(8, seed=31)
    test_normal, test_stripes = make_blobs(32, seed=32), make_stripes(32, seed=33)
    x = np.concatenate([normals, labelled])
    y = np.r_[np.ones(64), np.zeros(8)]

    def ratio(est: DeepSAD) -> float:
        return float(
            np.median(est.anomaly_score(test_stripes)) / np.median(est.anomaly_score(test_normal))
        )

    one_class = fast(epochs=10).fit(normals)
    semi = fast(epochs=10).fit(x, y)
    assert semi.n_labelled_anomalies_ == 8 and one_class.n_labelled_anomalies_ == 0
    r_one, r_semi = ratio(one_class), ratio(semi)
    assert r_semi > 2 * r_one, (r_one, r_semi)


def test_other_sizes_are_resized_with_a_warning(make_blobs, make_stripes) -> None:
    x = make_blobs(24, size=16)
    with pytest.warns(UserWarning, match="resizing 16x16 images to 28x28"):
        est = fast().fit(x)
    assert est.net_input_size_ == 28 and est.input_shape_ == (1, 16, 16)
    s = est.anomaly_score(
        np.concatenate([make_blobs(4, seed=5, size=16), make_stripes(4, size=16)])
    )
    assert s.shape == (8,) and np.isfinite(s).all()
    with pytest.raises(DataError, match=r"fitted on \(1, 16, 16\)"):
        est.anomaly_score(make_blobs(2, size=28))
    with pytest.warns(UserWarning, match="to 32x32"):
        fast(epochs=1).fit(make_blobs(4, size=20, channels=3))


def test_autoencoder_pretraining(make_blobs) -> None:
    x = make_blobs(48)
    pre = fast(epochs=1, pretrain_epochs=4).fit(x)
    hist = pre.pretrain_loss_history_
    assert len(hist) == 4 and hist[-1] < hist[0], hist
    plain = fast(epochs=1).fit(x)
    assert plain.pretrain_loss_history_ == []
    assert not torch.equal(pre.net_.fc.weight, plain.net_.fc.weight)
    again = fast(epochs=1, pretrain_epochs=4).fit(x)
    np.testing.assert_array_equal(again.anomaly_score(x), pre.anomaly_score(x))


def test_lr_milestones_change_training(make_blobs) -> None:
    x = make_blobs(32)
    a = fast(epochs=3).fit(x).loss_history_
    b = fast(epochs=3, lr_milestones=(1,)).fit(x).loss_history_
    assert a[0] == b[0] and a[1:] != b[1:]


def test_fit_leaves_global_rng_alone(make_blobs) -> None:
    x = make_blobs(16)
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    fast(epochs=1).fit(x)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_random_state_none_follows_numpy_seed(make_blobs) -> None:
    x = make_blobs(16)
    np.random.seed(5)
    a = fast(epochs=1, random_state=None).fit(x).anomaly_score(x)
    np.random.seed(5)
    b = fast(epochs=1, random_state=None).fit(x).anomaly_score(x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"eta": 0}, "eta must be > 0"),
        ({"epochs": -1}, "epochs must be >= 0"),
        ({"epochs": 2.5}, "epochs must be an int"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weight_decay": -1e-3}, "weight_decay must be >= 0"),
        ({"rep_dim": 0}, "rep_dim must be >= 1"),
        ({"lr_milestones": (5, 3)}, "increasing positive ints"),
        ({"lr_milestones": "ab"}, "lr_milestones"),
        ({"pretrain_epochs": -2}, "pretrain_epochs must be >= 0"),
        ({"device": "toaster"}, "invalid device 'toaster'"),
        ({"random_state": 1.5}, "random_state must be None or an int"),
    ],
)
def test_bad_parameters_raise_config_error(kw, match: str, make_blobs) -> None:
    with pytest.raises(ConfigError, match=match):
        fast(**kw).fit(make_blobs(4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_request_without_cuda_is_a_config_error(make_blobs) -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        fast(device="cuda").fit(make_blobs(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(make_blobs, make_stripes) -> None:
    x = make_blobs(64)
    est = fast(device="cuda", epochs=5).fit(x)
    assert est.c_.device.type == "cuda"
    s = est.anomaly_score(np.concatenate([make_blobs(8, seed=3), make_stripes(8)]))
    assert s.shape == (16,) and np.isfinite(s).all() and s[8:].mean() > s[:8].mean()
    cpu = fast(device="cpu", epochs=5).fit(x).anomaly_score(x)
    np.testing.assert_allclose(est.anomaly_score(x), cpu, rtol=1e-2, atol=1e-4)
