"""Every field read from a checkpoint is validated before use (issue 10).

A checkpoint whose weights or scorer statistics are NaN used to score every image
"normal" (exit 0); banks of the wrong shape failed deep inside ``refit``; a zero
standard deviation gave inf scores. Each case below edits one field of a real
``model.ckpt`` and checks that ``AnoMem.load`` and the CLI refuse it with a one-line
``CheckpointError`` naming the field. A hypothesis fuzzer then mutates random fields
(values, dtypes, shapes, types) of the real checkpoint: every load gives a
``CheckpointError`` or a detector that scores finite numbers.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomem import AnoMem, CheckpointError
from anomem.cli import main
from anomem.io.validate import check_device, validate_training_checkpoint


def _rewrite(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def _first_weight(c):
    return next(k for k, v in c["net"].items() if v.is_floating_point())


def _set(path, value):
    def edit(c):
        d = c
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value(d[path[-1]]) if callable(value) else value
    return edit


NAN = float("nan")
CASES = {
    "NaN weight": (lambda c: c["net"][_first_weight(c)].view(-1).__setitem__(0, NAN), "net"),
    "inf weight": (lambda c: c["net"][_first_weight(c)].view(-1).__setitem__(0, math.inf), "net"),
    "NaN memory score mean": (_set(["scorer", "memory.score.mean"], lambda t: torch.full_like(t, NAN)),
                              "memory.score.mean"),
    "zero memory score std": (_set(["scorer", "memory.score.std"], lambda t: torch.zeros_like(t)), "memory.score.std"),
    "negative heads std": (_set(["scorer", "heads.z.std"], lambda t: -t), "heads.z.std"),
    "NaN head weight": (_set(["scorer", "heads.nets.0.mlp.0.weight"], lambda t: t * NAN), "heads.nets.0.mlp.0.weight"),
    "zero head input std": (_set(["scorer", "heads.nets.1.inputs.std"], lambda t: t * 0), "heads.nets.1.inputs.std"),
    "weights of another length": (_set(["scorer", "weights.values"], lambda t: t[:3]), "weights.values"),
    "3 score means for 2 scales": (_set(["scorer", "memory.score.mean"], torch.zeros(3)), "memory.score.mean"),
    "a negative weight": (_set(["scorer", "weights.values"], lambda t: t - 1), "weights.values"),
    "a weight of 1e20": (_set(["scorer", "weights.values"], lambda t: t + 1e20), "weights.values"),
    "feature bank rows not unit": (_set(["scorer", "bank.rows0"], lambda t: t * 2), "bank.rows0"),
    "missing pixel bank": (lambda c: c["scorer"].pop("pixels.bank"), "pixels.bank"),
    "NaN normal bank": (_set(["normal_bank", 0], lambda t: t * NAN), "normal_bank[0]"),
    "normal bank of the wrong width": (_set(["normal_bank", 0], lambda t: t[:, :5].clone()), "normal_bank[0]"),
    "normal bank 1-D": (_set(["normal_bank", 1], lambda t: t[0].clone()), "normal_bank[1]"),
    "one normal bank for two scales": (_set(["normal_bank"], lambda b: b[:1]), "normal_bank"),
    "normal banks of unequal length": (_set(["normal_bank", 1], lambda t: t[:3].clone()), "normal_bank"),
    "empty normal bank": (_set(["normal_bank"], lambda b: [t[:0].clone() for t in b]), "normal_bank holds no images"),
    "anomaly bank of the wrong width": (_set(["anomaly_bank", 1], torch.zeros(2, 7)), "anomaly_bank[1]"),
    "pseudo bank int": (_set(["pseudo_bank", 0], lambda t: t.long()), "pseudo_bank[0]"),
    "NaN normal score bank": (_set(["normal_score_bank"], lambda t: t * NAN), "normal_score_bank"),
    "calibration raw wrong width": (_set(["calibration_bank", "raw"], torch.zeros(3, 5)), "calibration_bank"),
    "calibration pooled NaN": (_set(["calibration_bank", "pooled", 0], lambda t: t * NAN), "calibration_bank"),
    "prototype patches float": (_set(["prototype_cache", "patches", 0], lambda t: t.float()), "prototype_cache"),
    "prototype source mismatched": (_set(["prototype_cache", "source", 0], torch.zeros(1, 3, dtype=torch.long)),
                                    "prototype_cache"),
    "image size 10^9": (_set(["image_size"], [10**9, 16]), "image_size"),
    "image size 0": (_set(["image_size"], [0, 16]), "image_size"),
    "image size bool": (_set(["image_size"], [True, 16]), "image_size"),
    "in_channels 2": (_set(["in_channels"], 2), "in_channels"),
    "threshold not a string": (_set(["threshold"], 3), "threshold"),
    "threshold value NaN": (_set(["threshold"], lambda t: json.dumps({**json.loads(t), "value": NAN})), "threshold"),
    "threshold unknown key": (_set(["threshold"], lambda t: json.dumps({**json.loads(t), "bogus": 1})), "threshold"),
    "history with a NaN loss": (_set(["history"], '[{"epoch": 1, "loss": NaN}]'), "history"),
    "meta not a mapping": (_set(["meta"], "[1]"), "meta"),
    "sparse weight": (lambda c: c["net"].__setitem__(_first_weight(c), c["net"][_first_weight(c)].to_sparse()), "net"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_field_is_refused_by_load_and_every_command(name, trained_run, folder_dataset, tmp_path, capsys):
    edit, needle = CASES[name]
    bad = _rewrite(trained_run / "model.ckpt", tmp_path / "bad.ckpt", edit)
    before = bad.read_bytes()
    for load in (AnoMem.load,):
        with pytest.raises(CheckpointError, match=r"bad\.ckpt") as err:
            load(bad)
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    images = str(folder_dataset / "test")
    for argv in (["score", str(bad), images], ["refit", str(bad), "--anomalies", images],
                 ["threshold", str(bad), "--value", "1"], ["export", str(bad), "--format", "torchscript",
                                                            "--out", str(tmp_path / "x.pt")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("anomem: error:") and needle in err and len(err.splitlines()) == 1, (argv, err)
    assert bad.read_bytes() == before and not (tmp_path / "x.pt").exists()


def test_nan_weights_used_to_score_everything_normal(trained_run, folder_dataset, tmp_path):
    """The reported case, end to end: `evaluate` refused the file but `score` said "normal", exit 0."""
    bad = _rewrite(trained_run / "model.ckpt", tmp_path / "nan.ckpt", CASES["NaN weight"][0])
    out = tmp_path / "s.csv"
    assert main(["score", str(bad), str(folder_dataset / "test" / "anomaly"), "--out", str(out)]) == 2
    assert not out.exists()


def test_refit_on_a_tampered_normal_bank_is_a_clear_error(trained_run, folder_dataset, tmp_path, capsys):
    run_ckpt = tmp_path / "m.ckpt"
    shutil.copy(trained_run / "model.ckpt", run_ckpt)
    bad = _rewrite(run_ckpt, tmp_path / "t.ckpt", _set(["normal_bank", 0], lambda t: torch.zeros(t.shape[0], 3)))
    assert main(["refit", str(bad), "--anomalies", str(folder_dataset / "test" / "anomaly")]) == 2
    err = capsys.readouterr().err
    assert "normal_bank[0] must have" in err and "Traceback" not in err


def test_training_checkpoint_fields_are_validated_on_resume(trained_run, tmp_path, capsys):
    cases = {
        "NaN weight": CASES["NaN weight"][0],
        "NaN momentum": lambda c: next(iter(c["trainer"]["optimizer"]["state"].values()))["momentum_buffer"].fill_(NAN),
        "epoch string": lambda c: c["trainer"].update(epoch="2"),
        "rng float": lambda c: c["trainer"].update(rng_cpu=torch.zeros(5056)),
        "image size negative": _set(["image_size"], [-16, 16]),
    }
    for name, edit in cases.items():
        run = tmp_path / name.replace(" ", "-")
        shutil.copytree(trained_run, run)
        (run / "model.ckpt").unlink()
        _rewrite(trained_run / "last.ckpt", run / "last.ckpt", edit)
        before = (run / "last.ckpt").read_bytes()
        with pytest.raises(CheckpointError, match="cannot resume"):
            validate_training_checkpoint(torch.load(run / "last.ckpt", weights_only=True), run / "last.ckpt")
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert "anomem: error: cannot resume" in err and len(err.splitlines()) == 1, (name, err)
        assert (run / "last.ckpt").read_bytes() == before and not (run / "model.ckpt").exists()


@pytest.mark.parametrize("device", ["meta", "cuda:x", "gpu", "cpu:0:1", "sparse"])
def test_bad_devices_are_refused(trained_run, folder_dataset, device, capsys):
    with pytest.raises(Exception, match="device must be"):
        check_device(device)
    assert main(["score", str(trained_run / "model.ckpt"), str(folder_dataset / "test"), "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomem: error: device must be") and len(err.splitlines()) == 1


# -- hypothesis: mutated fields of a real checkpoint -----------------------------------
def _paths(obj, prefix=()):
    """Every (path, leaf) of a checkpoint: tensors, numbers, strings, and the containers."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutation(draw, leaf):
    kinds = ["none", "string", "int", "float", "list", "dict"]
    if isinstance(leaf, torch.Tensor):
        kinds += ["nan", "inf", "zero", "negate", "huge", "shape", "dtype", "empty", "scalar"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "string":
        return draw(st.text(max_size=20))
    if kind == "int":
        return draw(st.integers(-(2**40), 2**40))
    if kind == "float":
        return draw(st.floats(allow_nan=True, allow_infinity=True))
    if kind == "list":
        return draw(st.lists(st.integers(-3, 3), max_size=3))
    if kind == "dict":
        return {}
    t = leaf.clone()
    if kind in ("nan", "inf", "huge") and t.is_floating_point() and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = {"nan": NAN, "inf": -math.inf, "huge": 3e38}[kind]
    elif kind == "zero":
        t = torch.zeros_like(t)
    elif kind == "negate" and t.dtype != torch.bool:
        t = -t
    elif kind == "shape":
        t = torch.zeros(tuple(draw(st.integers(0, 4)) for _ in range(draw(st.integers(0, 3)))), dtype=t.dtype)
    elif kind == "dtype":
        t = t.to(draw(st.sampled_from([torch.int64, torch.float64, torch.bool, torch.uint8, torch.float16])))
    elif kind == "empty":
        t = t.flatten()[:0]
    elif kind == "scalar":
        t = torch.tensor(1.5)
    return t


_BASE: dict = {}


def _base(trained_run: Path) -> dict:
    if "ckpt" not in _BASE:
        _BASE["ckpt"] = torch.load(trained_run / "model.ckpt", weights_only=True)
        skip = {("format",), ("format_version",), ()}
        _BASE["paths"] = [p for p, _ in _paths(_BASE["ckpt"]) if p not in skip]
    return _BASE


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_checkpoint_fields_load_cleanly_or_give_checkpoint_error(trained_run, tmp_path_factory, data):
    base = _base(trained_run)
    ckpt = copy.deepcopy(base["ckpt"])
    for _ in range(data.draw(st.integers(1, 3), label="fields mutated")):
        path = data.draw(st.sampled_from(base["paths"]), label="field")
        parent = ckpt
        try:
            for k in path[:-1]:
                parent = parent[k]
            leaf = parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced it
        if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = _mutation(data.draw, leaf)
    path = tmp_path_factory.mktemp("mutated") / "m.ckpt"
    torch.save(ckpt, path)
    try:
        det = AnoMem.load(path)
    except CheckpointError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        event("refused with CheckpointError")
        return
    event("loaded and scored")
    imgs = torch.stack([torch.full((1, 16, 16), v, dtype=torch.uint8) for v in (0, 90, 255)])
    scores = det.anomaly_score(imgs)
    assert scores.shape == (3,) and bool(torch.isfinite(torch.from_numpy(scores)).all())
