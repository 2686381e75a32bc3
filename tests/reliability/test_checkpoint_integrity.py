"""Issue 19, rule 7: a content hash over every tensor and field, checked at load.

``save_checkpoint`` stores ``content_sha256`` (dtype, shape and bytes of every tensor,
every other field, in a fixed order); ``AnoMem.load`` and ``train --resume`` check it
after the fields are validated, so a flipped bit is a clear error, never a silent change
of scores. Files from before the hash still load. Loading stays weights-only.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from cli_checks import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomem import AnoMem
from anomem.cli import main
from anomem.errors import CheckpointError
from anomem.io.checkpoint import HASH_KEY, content_hash, load_checkpoint, save_checkpoint

from synthetic import stripes


@pytest.fixture(scope="module")
def reference(trained_run):
    images = stripes(6, True, seed=9)
    return (trained_run / "model.ckpt").read_bytes(), images, AnoMem.load(trained_run / "model.ckpt").anomaly_score(images)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bit_flips_are_refused_or_change_nothing(reference, tmp_path_factory, data):
    """150 single-bit flips anywhere in model.ckpt: a CheckpointError naming the file, or
    (a flip in bytes nothing reads, such as zip padding) scores bit-identical to the original."""
    blob, images, scores = reference
    blob = bytearray(blob)
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path_factory.mktemp("flip") / "model.ckpt"
    path.write_bytes(bytes(blob))
    try:
        det = AnoMem.load(path)
    except CheckpointError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert np.array_equal(det.anomaly_score(images), scores), f"bit flip at byte {pos} changed the scores"


def test_a_changed_weight_is_refused_by_load_and_every_command(trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run / "model.ckpt", weights_only=True)
    assert isinstance(ckpt[HASH_KEY], str) and len(ckpt[HASH_KEY]) == 64
    name = next(k for k, v in ckpt["net"].items() if v.is_floating_point() and v.numel() > 10)
    ckpt["net"][name] = ckpt["net"][name].clone()
    ckpt["net"][name].view(-1)[3] += 1e-3  # a valid-looking value: only the hash can tell
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match the sha256"):
        AnoMem.load(bad)
    for cmd in (["score", str(bad), str(tmp_path)], ["threshold", str(bad), "--fpr", "0.1", "--out", str(tmp_path / "t.ckpt")],
                ["export", str(bad), "--format", "torchscript", "--out", str(tmp_path / "e.pt")]):
        assert main(cmd) == 2, cmd
        one_line_error(capsys, "is damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_files_without_a_hash_still_load(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "model.ckpt", weights_only=True)
    del ckpt[HASH_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    images = stripes(4, False, seed=3)
    assert np.array_equal(AnoMem.load(old).anomaly_score(images), AnoMem.load(trained_run / "model.ckpt").anomaly_score(images))
    assert HASH_KEY not in load_checkpoint(trained_run / "model.ckpt")  # the hash describes the file, not the model


def test_content_hash_covers_every_field_dtype_and_shape():
    base = {"a": torch.arange(6, dtype=torch.float32), "b": {"x": 1, "y": [1.5, None, "t"]}, "c": "text", "d": True}
    h = content_hash(base)
    assert content_hash({k: base[k] for k in reversed(list(base))}) == h  # key order does not matter
    changes = [
        {"a": torch.arange(6, dtype=torch.float64)},                       # dtype
        {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},         # shape
        {"a": torch.arange(6, dtype=torch.float32).flip(0)},               # bytes
        {"b": {"x": 2, "y": [1.5, None, "t"]}}, {"b": {"x": 1, "y": [1.5, 0, "t"]}},
        {"c": "texT"}, {"d": 1}, {"e": None},
    ]
    for change in changes:
        assert content_hash({**base, **change}) != h, change


def test_resume_refuses_a_flipped_bit_in_last_ckpt(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "model.ckpt").unlink()
    (run / "metrics.json").unlink()
    state = torch.load(run / "last.ckpt", weights_only=True)
    momentum = next(iter(state["trainer"]["optimizer"]["state"].values()))["momentum_buffer"]
    momentum.view(-1)[0] += 1.0
    torch.save(state, run / "last.ckpt")
    before = (run / "last.ckpt").read_bytes()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    one_line_error(capsys, "cannot resume", "is damaged")
    assert (run / "last.ckpt").read_bytes() == before and not (run / "model.ckpt").exists()


def test_saved_checkpoints_carry_a_matching_hash(tmp_path):
    save_checkpoint({"w": torch.ones(3), "n": 2}, tmp_path / "c.ckpt")
    raw = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert raw[HASH_KEY] == content_hash(raw)
    assert load_checkpoint(tmp_path / "c.ckpt")["n"] == 2
