"""User anomaly folders and plain image lists: types, masks, channels, sizes, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomem.data.folder import load_folder, load_images, read_image
from anomem.errors import DataError

from fakes import solid, write_fake_folder, write_image


@pytest.fixture
def grey_root(tmp_path):
    return write_fake_folder(tmp_path / "ds")


def test_train_split(grey_root):
    ds = load_folder(grey_root, "train")
    assert ds.images.shape == (5, 1, 12, 16) and ds.images.dtype == torch.uint8
    assert ds.targets.tolist() == [0, 0, 0, 1, 1]
    assert ds.anomaly.tolist() == [False, False, False, True, True]
    assert ds.anomaly_types == ("", "", "", "anomaly", "scratch")
    assert ds.class_names == ("normal", "anomaly")
    assert ds.masks is None
    assert [int(v) for v in ds.images[:, 0, 0, 0]] == [10, 11, 12, 200, 210]
    assert ds.paths[4].endswith("train/anomaly/scratch/s0.png")


def test_test_split_types_and_masks(grey_root):
    ds = load_folder(grey_root, "test")
    assert ds.targets.tolist() == [0, 0, 1, 1, 1]
    assert ds.anomaly_types == ("", "", "crack", "crack", "hole")
    assert ds.masks.shape == (5, 1, 12, 16) and ds.masks.dtype == torch.uint8
    assert int(ds.masks[:2].sum()) == 0
    top = torch.zeros(12, 16, dtype=torch.uint8)
    top[:6] = 255
    assert torch.equal(ds.masks[2, 0], top)
    assert torch.equal(ds.masks[3, 0], top)  # 0/1 BMP "<stem>_mask" -> 0/255
    assert torch.equal(ds.masks[4, 0], top.flip(0))


def test_resize_applies_to_images_and_masks(grey_root):
    ds = load_folder(grey_root, "test", image_size=(6, 8))
    assert ds.images.shape == (5, 1, 6, 8) and ds.masks.shape == (5, 1, 6, 8)
    assert set(ds.masks.unique().tolist()) == {0, 255}
    assert int(ds.masks[2, 0, :3].min()) == 255 and int(ds.masks[2, 0, 3:].max()) == 0
    assert load_folder(grey_root, "train", image_size=4).images.shape == (5, 1, 4, 4)


def test_channels(tmp_path, grey_root):
    assert load_folder(grey_root, "train", channels=3).images.shape[1] == 3
    colour = write_fake_folder(tmp_path / "colour", colour=True)
    ds = load_folder(colour, "train")
    assert ds.images.shape[1] == 3
    assert ds.images[0, :, 0, 0].tolist() == [10, 5, 245]
    assert load_folder(colour, "train", channels=1).images.shape[1] == 1
    # One colour test image makes both splits colour, so train and test agree.
    write_image(grey_root / "test/normal/t9.png", solid((1, 2, 3)))
    assert load_folder(grey_root, "train").images.shape[1] == 3
    with pytest.raises(DataError, match="channels must be 1, 3 or None"):
        load_folder(grey_root, "train", channels=2)


def test_default_size_is_first_train_normal(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "train/normal/a.png", solid(5, (10, 14)))
    write_image(root / "train/normal/b.png", solid(6, (30, 30)))
    write_image(root / "test/anomaly/x.png", solid(7, (20, 20)))
    assert load_folder(root, "test").images.shape == (1, 1, 10, 14)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), r"n1.png: file is empty"),
        (lambda p: p.write_bytes(b"\x89PNG garbage bytes" * 3), r"cannot read image .*n1.png"),
        (lambda p: p.write_bytes(p.read_bytes()[:-30]), r"cannot read image .*n1.png"),
    ],
    ids=["zero-byte", "corrupt", "truncated"],
)
def test_bad_images_name_the_file(grey_root, damage, message):
    damage(grey_root / "train/normal/n1.png")
    with pytest.raises(DataError, match=message):
        load_folder(grey_root, "train")


def test_truncated_jpeg(tmp_path):
    path = write_image(
        tmp_path / "x.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    )
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="x.jpg"):
        read_image(path)


def test_layout_errors(tmp_path, grey_root):
    with pytest.raises(DataError, match="missing folder train/normal"):
        load_folder(tmp_path, "train")
    for f in (grey_root / "train/normal").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no normal training images"):
        load_folder(grey_root, "test")
    write_image(grey_root / "train/normal/n0.png", solid(1))
    (grey_root / "train/normal/readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"non-image files in .*normal: .*readme.txt"):
        load_folder(grey_root, "train")
    (grey_root / "train/normal/readme.txt").unlink()
    (grey_root / "train/anomalies").mkdir()
    with pytest.raises(DataError, match="unexpected entries anomalies"):
        load_folder(grey_root, "train")
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_folder(grey_root, "val")


def test_mask_errors(grey_root):
    extra = write_image(grey_root / "test/masks/crack/c7.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(DataError, match=r"mask .*c7.png has no matching anomaly"):
        load_folder(grey_root, "test")
    extra.unlink()
    (grey_root / "test/masks/hole/h0.png").unlink()
    with pytest.raises(DataError, match=r"have no mask: .*h0.png"):
        load_folder(grey_root, "test")
    write_image(grey_root / "test/masks/hole/h0.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"mask .*h0.png is 5x5 but its image"):
        load_folder(grey_root, "test")
    write_image(grey_root / "test/masks/hole/h0.png", np.zeros((12, 16), np.uint8))
    write_image(grey_root / "test/masks/hole/h0_mask.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(DataError, match="has two masks"):
        load_folder(grey_root, "test")


def test_load_images_recursive_sorted_and_ordered(grey_root, tmp_path):
    ds = load_images(grey_root / "test")
    names = [p.split("/test/")[1] for p in ds.paths]
    assert names[:3] == ["anomaly/crack/c0.png", "anomaly/crack/c1.png", "anomaly/hole/h0.png"]
    assert len(ds) == 8  # 5 images + 3 masks
    assert ds.targets.tolist() == [0] * 8 and ds.class_names == ("unlabelled",)
    one = grey_root / "train/normal/n2.png"
    ds = load_images([one, grey_root / "train/anomaly"], image_size=4, channels=3)
    assert ds.images.shape == (3, 3, 4, 4)
    assert ds.paths[0] == str(one)


def test_load_images_invalid_files(tmp_path):
    write_image(tmp_path / "a.png", solid(3))
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.csv").write_text("1,2")
    (tmp_path / ".hidden").write_text("ignored")
    with pytest.raises(DataError, match=r"not image files: .*c.csv"):
        load_images(tmp_path)
    with pytest.raises(DataError, match="b.png: file is empty"):
        load_images([tmp_path / "a.png", tmp_path / "b.png"])
    ds = load_images(tmp_path, skip_invalid=True)
    assert len(ds) == 1
    assert sorted(p.rsplit("/", 1)[1] for p in ds.meta["skipped"]) == ["b.png", "c.csv"]
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "missing.png")


def test_sixteen_bit_and_palette_images(tmp_path):
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    deep.save(tmp_path / "deep.png")
    assert int(read_image(tmp_path / "deep.png", channels=1).min()) == 255
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "pal.png")
    ds = load_images([tmp_path / "deep.png", tmp_path / "pal.png"])
    assert ds.images.shape == (2, 3, 4, 4)  # the palette image is colour
    assert ds.images[1, :, 0, 0].tolist() == [255, 0, 0]
