"""Detector files of the current format: every entry saved, checked and read back, none
guessed from which keys a file holds (anomem.io.persistence, anomem.io.validate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomem import AnoMem, CheckpointError
from anomem.io.checkpoint import load_checkpoint, save_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROBE = np.load(FIXTURES / "v1-probe.npy")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "m.ckpt"
    det = AnoMem.load(FIXTURES / "v1-semi.ckpt")
    det.save(path)
    return det, path


def test_round_trip_keeps_every_state_and_score(saved):
    det, path = saved
    back = AnoMem.load(path)
    a, b = det.scorer_.state_dict(), back.scorer_.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back.weights_ == det.weights_ and back.threshold_ == det.threshold_
    np.testing.assert_array_equal(back.anomaly_score(PROBE), det.anomaly_score(PROBE))
    cal, cal2 = det.calibration_bank_, back.calibration_bank_
    assert torch.equal(cal.inputs["pixel_patches"], cal2.inputs["pixel_patches"]) and "feature_patches" in cal2.inputs


@pytest.mark.parametrize("where, key", [
    ("scorer", "weights.values"),
    ("scorer", "contrast.z.std"),
    ("scorer", "feature_patches.score_z.mean"),
    ("calibration_bank", "pixel_global"),
    (None, "pseudo_bank"),
    (None, "normal_score_bank"),
])
def test_a_missing_entry_is_refused_by_name_not_filled_in(saved, tmp_path, where, key):
    _, path = saved
    ckpt = load_checkpoint(path)
    (ckpt if where is None else ckpt[where]).pop(key)
    save_checkpoint(ckpt, tmp_path / "x.ckpt")  # a valid hash: only the entry is missing
    with pytest.raises(CheckpointError, match=key.replace(".", "\\.")):
        AnoMem.load(tmp_path / "x.ckpt")


def test_each_signal_checks_its_own_entries(saved, tmp_path):
    _, path = saved
    cases = {
        "pixels.grid": lambda s: s.__setitem__("pixels.grid", torch.tensor([1, 4, 4])),
        "contrast.anomalies": lambda s: s.__setitem__("contrast.anomalies", torch.zeros(2, 7)),
        "pixel_patches.map_z.std": lambda s: s.__setitem__("pixel_patches.map_z.std", torch.tensor(0.0)),
        "weights.values": lambda s: s.__setitem__("weights.values", -s["weights.values"]),
        "heads.trained": lambda s: s.__setitem__("heads.trained", torch.tensor([True, False])),
    }
    for key, edit in cases.items():
        ckpt = load_checkpoint(path)
        edit(ckpt["scorer"])
        save_checkpoint(ckpt, tmp_path / "x.ckpt")
        with pytest.raises(CheckpointError, match=key.replace(".", "\\.")):
            AnoMem.load(tmp_path / "x.ckpt")


def _same(a, b, where: str) -> None:
    """a and b hold the same values, recursively (modules by their state, tensors exactly)."""
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), where
        for k in sa:
            assert torch.equal(sa[k].cpu(), sb[k].cpu()), f"{where}[{k!r}]"
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), where
        _same(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_fitted_and_a_loaded_detector_are_the_same_object(tmp_path):
    """Every public attribute after fit equals the one after save and load, the fit's
    record of the fusion included, and so does every public property."""
    from sklearn.datasets import load_digits

    from anomem.config import load_config

    d = load_digits()
    x = np.kron((d.images / 16.0 * 255).astype(np.uint8)[:, None], np.ones((1, 1, 2, 2), dtype=np.uint8))
    cfg = load_config("tiny", overrides=["backbone.width=4", "memory.sizes=[8,4]", "train.epochs=2",
                                         "train.min_steps=4", "train.batch_size=32", "heads.steps=20",
                                         "scorer.normal_bank=24", "bank.size=24", "patches.feature_bank=32",
                                         "patches.pixel_bank=32", "train.channels_last=false"])
    det = AnoMem(cfg, progress=False).fit(x[d.target == 0][:120], anomalies=x[d.target == 1][:8])
    det.save(tmp_path / "m.ckpt")
    back = AnoMem.load(tmp_path / "m.ckpt")
    public = sorted(k for k in vars(det) if k.endswith("_") and not k.startswith("_"))
    assert public == sorted(k for k in vars(back) if k.endswith("_") and not k.startswith("_"))
    assert det.fusion_ is not None and det.prototype_cache_ is not None  # the records a file used to drop
    for name in public:
        _same(getattr(det, name), getattr(back, name), name)
    for name in ("weights_", "settings_", "anomaly_bank_", "pseudo_bank_", "input_shape_", "is_supervised",
                 "map_sigma_pixels"):
        _same(getattr(det, name), getattr(back, name), name)
    assert det.get_params() == back.get_params()
