"""Exported files carry what a deployment needs: input geometry and range, the pixel
normalisation done inside the graph, the threshold with its provenance, the version."""

import json
import warnings

import numpy as np
import pytest
import torch

import anomem
from anomem import AnoMem
from anomem.errors import DataError
from anomem.io.export import METADATA_FILE, export_scorer, read_metadata
from anomem.thresholds import Threshold, ThresholdWarning

from synthetic import stripes

FAST = {"progress": False, "epochs": 1, "train__batch_size": 32, "heads__steps": 5, "prototype_cache": 0}


@pytest.fixture(scope="module")
def det():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ThresholdWarning)  # 15 held-out normals: the warning is tested elsewhere
        return AnoMem("tiny", calibration_fraction=0.25, **FAST).fit(stripes(60, False, seed=0))


def _check_meta(meta, det):
    assert meta["anomem_version"] == anomem.__version__
    assert (meta["input_channels"], meta["input_height"], meta["input_width"]) == ("1", "16", "16")
    assert json.loads(meta["input_shape"]) == ["batch", 1, 16, 16]
    assert meta["input_dtype"] == "float32" and meta["input_range"] == "[0, 1]" and meta["input_layout"] == "NCHW"
    assert "inside the graph" in meta["pixel_normalization"]
    np.testing.assert_allclose(json.loads(meta["pixel_mean"]), det.net_.pixel_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(json.loads(meta["pixel_std"]), det.net_.pixel_std.numpy(), rtol=1e-6)
    assert meta["score_mode"] == "one-class" and "higher = more anomalous" in meta["score"]
    assert float(meta["threshold"]) == det.threshold_.value
    assert Threshold.from_json(meta["threshold_provenance"]) == det.threshold_
    assert "15 held-out normals" in meta["threshold_description"]


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_onnx_metadata_props(det, tmp_path):
    import onnx
    import onnxruntime as ort

    path = export_scorer(det, tmp_path / "m.onnx", "onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    _check_meta(meta, det)
    assert read_metadata(path) == meta
    # what the metadata says is what works: uint8 pixels / 255, no standardisation
    x = np.concatenate([stripes(3, False, seed=4), stripes(3, True, seed=5)])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, _ = sess.run(None, {meta["input_name"]: x.astype(np.float32) / 255})
    np.testing.assert_allclose(score, det.anomaly_score(x), rtol=1e-4, atol=1e-4)
    assert np.array_equal(score > float(meta["threshold"]), det.predict(x).astype(bool))


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_torchscript_extra_files(det, tmp_path):
    path = export_scorer(det, tmp_path / "m.pt", "torchscript")
    meta = read_metadata(path)
    _check_meta(meta, det)
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():  # torch's own notice that torch.jit is deprecated, on the reading side
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra[METADATA_FILE]) == meta


def test_no_threshold_and_bad_files(det, tmp_path):
    bare = AnoMem.load(_save(det, tmp_path))
    bare.threshold_ = None
    meta = read_metadata(export_scorer(bare, tmp_path / "b.onnx", "onnx"))
    assert meta["threshold"] == meta["threshold_provenance"] == ""
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="neither a TorchScript archive nor an ONNX model"):
        read_metadata(tmp_path / "junk.onnx")
    with pytest.raises(DataError, match="does not exist"):
        read_metadata(tmp_path / "missing.pt")


def _save(det, tmp_path):
    det.save(tmp_path / "m.ckpt")
    return tmp_path / "m.ckpt"
