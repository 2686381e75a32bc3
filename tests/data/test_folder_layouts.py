"""Folder layouts beyond the fixed one: renamed folders, MVTec AD, anomalib's flat Folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem.data.folder import FolderLayout, folder_splits, load_folder
from anomem.data.registry import load_dataset
from anomem.errors import DataError

from fakes import solid, write_image

MASK = np.zeros((12, 16), np.uint8)
MASK[:6] = 255


@pytest.fixture
def mvtec(tmp_path):
    """MVTec AD's layout: train/good, test/good, test/<type>/, ground_truth/<type>/<stem>_mask.png."""
    root = tmp_path / "bottle"
    for i in range(4):
        write_image(root / f"train/good/{i:03}.png", solid(10 + i))
    write_image(root / "test/good/000.png", solid(20))
    for kind, v in (("broken_large", 200), ("contamination", 220)):
        for i in range(2):
            write_image(root / f"test/{kind}/{i:03}.png", solid(v + i))
            write_image(root / f"ground_truth/{kind}/{i:03}_mask.png", MASK if kind == "contamination" else MASK[::-1].copy())
    (root / "license.txt").write_text("not scanned: only the split folders are")
    return root


MVTEC = FolderLayout(normal_dir="good", abnormal_dir="*", mask_dir="ground_truth")


def test_mvtec_layout(mvtec):
    train = load_folder(mvtec, "train", layout=MVTEC)
    assert train.targets.tolist() == [0, 0, 0, 0] and train.meta["layout"] == "split"
    test = load_folder(mvtec, "test", layout=MVTEC)
    assert test.targets.tolist() == [0, 1, 1, 1, 1]
    assert test.anomaly_types == ("", "broken_large", "broken_large", "contamination", "contamination")
    assert int(test.masks[0].sum()) == 0
    assert torch.equal(test.masks[1, 0], torch.from_numpy(MASK[::-1].copy()))
    assert torch.equal(test.masks[3, 0], torch.from_numpy(MASK))
    assert [int(v) for v in test.images[:, 0, 0, 0]] == [20, 200, 201, 220, 221]
    # Without the layout the same folder is refused by name, not loaded wrongly.
    with pytest.raises(DataError, match="missing folder train/normal"):
        load_folder(mvtec, "train")


def test_wildcard_refuses_loose_files_and_unmatched_masks(mvtec):
    write_image(mvtec / "test/stray.png", solid(1))
    with pytest.raises(DataError, match=r"unexpected entries stray.png; expected good/ folders and one folder per anomaly type"):
        load_folder(mvtec, "test", layout=MVTEC)
    (mvtec / "test/stray.png").unlink()
    write_image(mvtec / "ground_truth/crack/000_mask.png", MASK)
    with pytest.raises(DataError, match=r"mask .*crack/000_mask.png has no matching anomaly"):
        load_folder(mvtec, "test", layout=MVTEC)


def test_renamed_and_several_abnormal_folders(tmp_path):
    root = tmp_path / "ds"
    for i in range(3):
        write_image(root / f"train/ok/{i}.png", solid(10 + i))
    write_image(root / "train/ng/a.png", solid(200))
    write_image(root / "train/ng/scratch/b.png", solid(201))
    write_image(root / "test/ok/t.png", solid(20))
    write_image(root / "test/ng/c.png", solid(220))
    one = FolderLayout(normal_dir="ok", abnormal_dir="ng")
    assert load_folder(root, "train", layout=one).anomaly_types == ("", "", "", "ng", "scratch")
    write_image(root / "test/dent/d.png", solid(210))
    for split in ("train", "test"):  # both splits are checked, so they cannot disagree
        with pytest.raises(DataError, match="unexpected entries dent; expected masks, ng, ok/ folders"):
            load_folder(root, split, layout=one)
    both = FolderLayout(normal_dir="ok", abnormal_dir=("ng", "dent"))
    test = load_folder(root, "test", layout=both)
    assert test.anomaly_types == ("", "ng", "dent") and test.targets.tolist() == [0, 1, 1]
    assert both.abnormal_dirs == ("ng", "dent") and one.abnormal_dirs == ("ng",)


@pytest.fixture
def flat(tmp_path):
    """anomalib's Folder: ROOT/good, ROOT/defect, ROOT/masks, no train/test folders."""
    root = tmp_path / "flat"
    for i in range(10):
        write_image(root / f"good/{i:02}.png", solid(i))
    for i in range(3):
        write_image(root / f"defect/{i}.png", solid(200 + i))
        write_image(root / f"masks/{i}.png", MASK)  # named as the anomalies, as anomalib has them
    return root


def test_flat_layout_splits_normals_with_a_fixed_seed(flat):
    layout = FolderLayout(normal_dir="good", abnormal_dir="defect")
    train = load_folder(flat, "train", layout=layout)
    test = load_folder(flat, "test", layout=layout)
    assert train.meta["layout"] == "flat" and test.meta["normal_split_ratio"] == 0.2
    assert train.images.shape[0] == 8 and not bool(train.anomaly.any())
    assert test.targets.tolist() == [0, 0, 1, 1, 1] and test.masks is not None
    assert int(test.masks[:2].sum()) == 0 and torch.equal(test.masks[2, 0], torch.from_numpy(MASK))
    normals = {int(v) for v in train.images[:, 0, 0, 0]} | {int(v) for v in test.images[:2, 0, 0, 0]}
    assert normals == set(range(10))  # a partition of the normals
    again = load_folder(flat, "test", layout=layout)
    assert torch.equal(again.images, test.images)  # the same files give the same split
    half = load_folder(flat, "test", layout=FolderLayout("good", "defect", normal_split_ratio=0.5))
    assert int((half.targets == 0).sum()) == 5
    assert folder_splits(flat, layout) == ("train", "test")


def test_flat_folder_of_normals_only(tmp_path):
    root = tmp_path / "good_images"
    for i in range(5):
        write_image(root / f"{i}.png", solid(i))
    write_image(root / "sub/5.png", solid(5))
    everything = FolderLayout(normal_dir=".", normal_split_ratio=0)
    assert load_folder(root, "train", layout=everything).images.shape[0] == 6
    assert folder_splits(root, everything) == ("train",)
    with pytest.raises(DataError, match="flat layout leaves no test images"):
        load_folder(root, "test", layout=everything)
    with pytest.raises(DataError, match=r"no normal/ for a flat layout .*--normal-dir \."):
        load_folder(root, "train")
    # "." keeps an abnormal folder out of the normals.
    write_image(root / "anomaly/x.png", solid(250))
    test = load_folder(root, "test", layout=FolderLayout(normal_dir="."))
    assert test.anomaly_types[-1] == "anomaly" and int(test.images[-1, 0, 0, 0]) == 250
    assert load_folder(root, "train", layout=FolderLayout(normal_dir=".")).images.shape[0] == 5
    with pytest.raises(DataError, match=r"1 normal image\(s\) leave none for training"):
        tiny = tmp_path / "one"
        write_image(tiny / "a.png", solid(1))
        load_folder(tiny, "train", layout=FolderLayout(normal_dir=".", normal_split_ratio=0.9))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normal_dir": "../up"}, "normal_dir must be a folder name relative"),
        ({"normal_dir": "/abs"}, "normal_dir must be a folder name relative"),
        ({"normal_dir": "a/b"}, "normal_dir must be one folder name"),
        ({"normal_dir": ""}, "normal_dir must be a non-empty folder name"),
        ({"abnormal_dir": ()}, "abnormal_dir needs at least one folder"),
        ({"abnormal_dir": ("*", "x")}, "abnormal_dir must be a folder name relative"),
        ({"abnormal_dir": ("x", "x")}, "names a folder twice"),
        ({"normal_dir": "x", "abnormal_dir": "x"}, "both the normal and an abnormal folder"),
        ({"normal_dir": ".", "abnormal_dir": "*"}, "needs a named normal folder"),
        ({"mask_dir": "../masks"}, "mask_dir must be a folder name relative"),
        ({"normal_split_ratio": 1.0}, r"normal_split_ratio must be a number in \[0, 1\)"),
        ({"normal_split_ratio": True}, "normal_split_ratio must be a number"),
    ],
)
def test_bad_layouts_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        FolderLayout(**kwargs)


def test_missing_mask_dir_and_registry_options(mvtec):
    with pytest.raises(DataError, match="mask_dir 'gt' is not a folder"):
        load_folder(mvtec, "test", layout=FolderLayout("good", "*", mask_dir="gt"))
    via_name = load_dataset(f"folder:{mvtec}", "test", normal_dir="good", abnormal_dir="*", mask_dir="ground_truth")
    assert torch.equal(via_name.masks, load_folder(mvtec, "test", layout=MVTEC).masks)
    assert load_dataset(f"folder:{mvtec}", "train", layout=MVTEC).images.shape[0] == 4
    with pytest.raises(DataError, match="either as layout= or as normal_dir"):
        load_dataset(f"folder:{mvtec}", "train", layout=MVTEC, normal_dir="good")
    with pytest.raises(DataError, match="layout must be a FolderLayout"):
        load_folder(mvtec, "train", layout={"normal_dir": "good"})


def test_flat_layout_with_a_normal_test_folder(flat):
    for i in range(3):
        write_image(flat / f"good_test/{i}.png", solid(100 + i))
    layout = FolderLayout("good", "defect", normal_test_dir="good_test")
    assert load_folder(flat, "train", layout=layout).images.shape[0] == 10  # every normal trains
    test = load_folder(flat, "test", layout=layout)
    assert [int(v) for v in test.images[:3, 0, 0, 0]] == [100, 101, 102] and test.targets.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(DataError, match="unexpected entries good_test"):
        load_folder(flat, "train", layout=FolderLayout("good", "defect"))
    with pytest.raises(DataError, match="normal_test_dir 'nope' is not a folder"):
        load_folder(flat, "train", layout=FolderLayout("good", "defect", normal_test_dir="nope"))
    with pytest.raises(DataError, match="is also the normal or an abnormal folder"):
        FolderLayout("good", "defect", normal_test_dir="good")


def test_normal_test_dir_is_refused_with_train_folder(mvtec):
    with pytest.raises(DataError, match="normal_test_dir is for flat folders"):
        load_folder(mvtec, "train", layout=FolderLayout("good", "*", normal_test_dir="x"))
