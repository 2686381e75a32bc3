"""Bad input everywhere it enters: a clear DataError/ConfigError (exit 2), never a traceback.

Covers image folders (corrupt, empty, truncated, non-image, oversized, dangling links,
mixed sizes and channels), arrays (NaN/inf, empty, bad labels, bad shapes/dtypes), the
anomaly ratio γ, dataset names, and unwritable output locations.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem, DataError, load_config
from anomem.bench.protocols import one_vs_all
from anomem.cli import main
from anomem.data import ImageSet
from anomem.data.folder import load_folder, load_images
from anomem.data.registry import load_dataset

from synthetic import stripes


def _png_bytes(size=(16, 16), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A 1-pixel PNG whose header claims side x side pixels."""
    d = bytearray(_png_bytes((1, 1)))
    d[16:24] = struct.pack(">II", side, side)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])))
    return bytes(d)


BAD_FILES = {
    "corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "cannot read image"),
    "zero.png": (b"", r"empty \(0 bytes\)"),
    "truncated.png": (None, "cannot read image"),  # filled in below: half of a real PNG
    "notes.txt": (b"not an image", "non-image files"),
    "bomb.png": (_bomb_png(12_000), "decompression bomb"),
    "text-named.jpg": (b"hello, I am text", "cannot read image"),
}


def _truncated() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_in_training_folder(tmp_path, name, capsys, folder_maker, tiny_train):
    data, message = BAD_FILES[name]
    root = folder_maker(tmp_path / "ds", n_train=4, with_test=False)
    (root / "train" / "normal" / name).write_bytes(_truncated() if data is None else data)
    with pytest.raises(DataError, match=message) as info:
        load_folder(root, "train")
    assert name in str(info.value)
    assert main(["train", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "run"), *tiny_train]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anomem: error:") and name in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_dangling_symlink_and_empty_folders(tmp_path, folder_maker):
    root = folder_maker(tmp_path / "ds", n_train=2, with_test=False)
    (root / "train" / "normal" / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(DataError, match="gone.png"):
        load_folder(root, "train")
    empty = tmp_path / "empty"
    (empty / "train" / "normal").mkdir(parents=True)
    with pytest.raises(DataError, match="no normal training images"):
        load_folder(empty, "train")
    with pytest.raises(DataError, match="no images found"):
        load_images(empty / "train" / "normal")
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "nowhere")


def test_score_skips_invalid_files_only_when_asked(trained_run, tmp_path, capsys, png_writer):
    d = tmp_path / "mixed"
    png_writer(d, stripes(3, True, seed=9))
    (d / "zero.png").write_bytes(b"")
    (d / "readme.md").write_text("hi")
    assert main(["score", str(trained_run / "model.ckpt"), str(d)]) == 2
    assert "readme.md" in capsys.readouterr().err
    out = tmp_path / "s.csv"
    assert main(["score", str(trained_run / "model.ckpt"), str(d), "--skip-invalid", "--out", str(out)]) == 0
    assert len(out.read_text().strip().splitlines()) == 1 + 3  # header + the 3 good images


def test_mixed_sizes_and_channels_are_resized_and_converted(tmp_path, trained_run, png_writer):
    root = tmp_path / "ds"
    normal = root / "train" / "normal"
    png_writer(normal, stripes(3, False, seed=0))  # 16x16 grey
    Image.new("RGB", (24, 20), (200, 10, 10)).save(normal / "z-rgb.png")
    Image.new("LA", (8, 8)).save(normal / "z-la.png")
    Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(normal / "z-16bit.png")
    ds = load_folder(root, "train")
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8  # colour wins, first size wins
    # a grey detector scores colour files and other sizes: converted and resized explicitly
    out = tmp_path / "s.json"
    assert main(["score", str(trained_run / "model.ckpt"), str(normal), "--out", str(out)]) == 0


GOOD = stripes(8, False)


@pytest.mark.parametrize(
    "X,message",
    [
        (torch.full((4, 1, 16, 16), float("nan")), "NaN or infinite"),
        (torch.full((4, 1, 16, 16), float("inf")), "NaN or infinite"),
        (np.zeros((0, 1, 16, 16), np.uint8), "no images"),
        (np.zeros((4, 16, 16, 3), np.uint8), "channels-last"),
        (np.zeros((4, 4, 16, 16), np.uint8), "1 or 3 channels"),
        (np.zeros((16, 16), np.uint8), "expected shape"),
        (np.full((4, 1, 16, 16), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((4, 1, 16, 16), bool), "unsupported dtype"),
        (np.array([None] * 4, dtype=object), "object arrays"),
        ("images/", "expected an array"),
    ],
)
def test_bad_arrays_refused_by_fit_and_score(trained_run, X, message):
    with pytest.raises(DataError, match=message):
        AnoMem("tiny", progress=False).fit(X)
    with pytest.raises(DataError, match=message):
        AnoMem.load(trained_run / "model.ckpt").anomaly_score(X)


@pytest.mark.parametrize("y", [[1, 1, 2, 1, 1, 1, 1, 1], [1, 1, -1, 1, 1, 1, 1, 1], [1, 0.5, 1, 1, 1, 1, 1, 1],
                               [1, float("nan"), 1, 1, 1, 1, 1, 1], [1, 1, 1], [[1] * 8]])
def test_labels_outside_0_1_are_refused(y):
    with pytest.raises(DataError, match="values must be 0|NaN|expected shape"):
        AnoMem("tiny", progress=False).fit(GOOD, y=y)


def test_too_few_normals_and_empty_image_sets():
    with pytest.raises(DataError, match="at least 2 normal"):
        AnoMem("tiny", progress=False).fit(GOOD, y=[0] * 7 + [1])
    with pytest.raises(DataError):
        ImageSet(images=torch.zeros(2, 1, 4, 4), targets=torch.zeros(2, dtype=torch.long), class_names=("a",))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_gamma_outside_0_1_is_refused(ratio, capsys):
    digits = load_dataset("digits", "train")
    with pytest.raises(DataError, match="γ must lie in"):
        one_vs_all(digits, digits, 0, ratio)
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "digits", "--normal-class", "0", "--ratio", str(ratio), "--out", "unused"])
    assert info.value.code == 2 and "--ratio must lie in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["no-such-dataset", "CIFAR-11", "folder:", "", "../../etc/passwd"])
def test_unknown_dataset_names(name, tmp_path, capsys):
    with pytest.raises(DataError):
        load_dataset(name, "train")
    assert main(["train", "--data", name or "''", "--normal-class", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anomem: error:") and "Traceback" not in err


def test_unwritable_output_locations(folder_dataset, trained_run, tiny_train, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", "--data", str(folder_dataset), "--out", str(blocker / "run"), *tiny_train]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err
    out = tmp_path / "missing-dir" / "scores.csv"
    assert main(["score", str(trained_run / "model.ckpt"), str(folder_dataset / "test"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # permission denied (simulated: the tests may run as root, who may write anywhere)
    real_mkdir = Path.mkdir

    def denied(self, *a, **k):
        if self.name == "denied":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["train", "--data", str(folder_dataset), "--out", str(tmp_path / "denied"), *tiny_train]) == 2
    assert "Permission denied" in capsys.readouterr().err


def test_bad_config_values_exit_2(folder_dataset, tmp_path, capsys):
    for item in ["train.lr=-1", "train.lr=.inf", "memory.sizes=[1]", "augment.crop_scale=[0.5]", "nope.x=1"]:
        assert main(["train", "--data", str(folder_dataset), "--out", str(tmp_path / "r"), "--set", item]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("anomem: error:") and len(err.splitlines()) == 1, (item, err)
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_bytes(b"\xff\xfe not utf-8 \x00")
    assert main(["train", "--data", str(folder_dataset), "--out", str(tmp_path / "r"), "--config", str(cfg_file)]) == 2
    assert load_config("tiny").train.lr > 0
