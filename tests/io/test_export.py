"""Exported scorers (TorchScript, ONNX via onnxruntime) agree with the Python model."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import anomem
from anomem import AnoMem, load_config
from anomem.cli import main
from anomem.io.export import export_scorer, exportable_model

from synthetic import stripes

CFG = load_config("tiny", None, ["train.epochs=2", "train.batch_size=64", "heads.steps=30"])
RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def det():
    return AnoMem(CFG, progress=False).fit(stripes(96, False, seed=0))


def _inputs():
    """Random images and generated ones, a batch size unlike the traced one (2)."""
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(3, 1, 16, 16, generator=g)
    real = torch.cat([stripes(2, False, seed=5), stripes(2, True, seed=6)]).float() / 255
    return torch.cat([rand, real])  # (7, 1, 16, 16) float in [0, 1]


def _check(det, score, fused, x):
    ref = det.anomaly_maps(x)
    np.testing.assert_allclose(np.asarray(score), ref.scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(fused), ref.fused, rtol=RTOL, atol=ATOL)


def test_module_matches_python_model(det):
    x = _inputs()
    with torch.no_grad():
        score, fused = exportable_model(det)(x)
    assert score.shape == (7,) and fused.shape == (7, 16, 16)
    _check(det, score, fused, x)
    with torch.no_grad():  # no smoothing
        score, fused = exportable_model(det, sigma=0)(x)
    np.testing.assert_allclose(fused.numpy(), det.anomaly_maps(x, sigma=0).fused, rtol=RTOL, atol=ATOL)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("supervised", [False, True])
def test_torchscript_and_onnx_parity(det, tmp_path, supervised):
    if supervised:
        det = AnoMem.load(_save(det, tmp_path)).refit_scorer(stripes(8, True, seed=9))
        assert det.is_supervised
    x = _inputs()
    ts_path = export_scorer(det, tmp_path / "m.pt", "torchscript")
    with torch.no_grad():
        score, fused = torch.jit.load(str(ts_path))(x)
    _check(det, score, fused, x)

    import onnxruntime as ort

    onnx_path = export_scorer(det, tmp_path / "m.onnx", "onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["score", "fused_map"]
    score, fused = sess.run(None, {"image": x.numpy()})
    _check(det, score, fused, x)


def _save(det, tmp_path):
    path = tmp_path / "m.ckpt"
    det.save(path)
    return path


def test_export_command_and_errors(det, tmp_path, capsys):
    ckpt = _save(det, tmp_path)
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "s.onnx")]) == 0
    assert "fused_map" in capsys.readouterr().out and (tmp_path / "s.onnx").stat().st_size > 0
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "no" / "s.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_onnx_imported_only_inside_export_code():
    """onnx/onnxruntime are an optional extra: no module imports them at load time."""
    for path in Path(anomem.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("onnx", "onnxruntime") for n in names), path


def test_onnx_parity_with_the_local_pixel_map_in_score_and_heat_map(tmp_path):
    """The pixel bank's local signal (top-k gather, min over neighbours, blur) exports too."""
    cfg = load_config("tiny", None, ["train.epochs=1", "train.batch_size=64", "heads.steps=5",
                                     "weights.pixel_local=0.2", "weights.map_pixel=0.5", "pixels.local_k=4"])
    d = AnoMem(cfg, progress=False).fit(stripes(64, False, seed=1))
    assert d.scorer_.pixels.ready
    x = _inputs()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(export_scorer(d, tmp_path / "m.onnx", "onnx")), providers=["CPUExecutionProvider"])
    score, fused = sess.run(None, {"image": x.numpy()})
    _check(d, score, fused, x)
    plain = d.anomaly_maps(x)
    assert not np.allclose(d.anomaly_maps(x, weights={"map_pixel": 0.0}).fused, plain.fused)  # the local map enters it
