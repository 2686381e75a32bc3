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
    assert torch.equal(cal.inputs.pixel_patches, cal2.inputs.pixel_patches) and cal2.inputs.feature_patches is not None


@pytest.mark.parametrize("where, key", [
    ("scorer", "weights.map"),
    ("scorer", "contrast.z.std"),
    ("scorer", "patches.feature.score_z.mean"),
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
        "patches.pixel.map_z.std": lambda s: s.__setitem__("patches.pixel.map_z.std", torch.tensor(0.0)),
        "heads.trained": lambda s: s.__setitem__("heads.trained", torch.tensor([True, False])),
    }
    for key, edit in cases.items():
        ckpt = load_checkpoint(path)
        edit(ckpt["scorer"])
        save_checkpoint(ckpt, tmp_path / "x.ckpt")
        with pytest.raises(CheckpointError, match=key.replace(".", "\\.")):
            AnoMem.load(tmp_path / "x.ckpt")
