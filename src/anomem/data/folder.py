"""User anomaly folders: the fixed layout, renamed folders (anomalib, MVTec AD), flat folders.

The default layout::

    ROOT/train/normal/...                 required, at least one image
    ROOT/train/anomaly/[<type>/]...       optional labelled anomalies
    ROOT/test/normal/...
    ROOT/test/anomaly/[<type>/]...
    ROOT/test/masks/[<type>/]<stem>.*     optional, one per test anomaly

:class:`FolderLayout` renames its parts, as anomalib's ``Folder`` data module does:
``normal_dir`` and ``abnormal_dir`` are the folder names inside each split (``good``
and ``defect``, say); ``abnormal_dir`` may list several folders, one anomaly type each,
or be ``"*"``: every folder of the split except the normal one is an anomaly type (MVTec
AD's ``test/<defect type>/``). ``mask_dir`` is where the masks are, relative to ROOT
(default ``test/masks``; MVTec AD keeps them in ``ground_truth``).

A ROOT without ``train/`` is read as a flat folder: the normal and abnormal folders sit
directly in ROOT (``normal_dir="."``: ROOT itself holds the normal images, a plain folder
of good images). A seeded share ``normal_split_ratio`` of the normals (default 0.2, as in
anomalib) goes to the test split with every abnormal image; the other normals are the
training split. The same files always give the same split. ``normal_test_dir`` names a
folder of normal test images instead, as in anomalib (then all of ``normal_dir`` trains).

Anomaly types: with one abnormal folder, images directly in it have the folder's name as
type and images in ``<abnormal>/<type>/`` (any depth) have type ``<type>``; with several
(or ``"*"``) each folder's name is its type. A mask matches the anomaly with the same
path below the abnormal folder (below the split folder when there are several) and the
same stem (``<stem>_mask`` is accepted too, as in MVTec AD); any image extension. Hidden
files and folders (name starting with ".") are ignored; any other non-image file is an
error. Decoding is in :mod:`anomem.data.image_io`, plain lists of images in
:mod:`anomem.data.scan`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import NamedTuple

import torch

from anomem.data.image_io import (
    FOLDER_CLASSES,
    IMAGE_EXTENSIONS,
    ImageInfo,
    _check_channels,
    _read_mask,
    count_conversions,
    image_hw,
    probe_image,
    read_image,
)
from anomem.data.scan import FileScan, images_only, list_names, load_images, scan_image_files
from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = [
    "FOLDER_CLASSES",
    "IMAGE_EXTENSIONS",
    "FileScan",
    "FolderLayout",
    "ImageInfo",
    "folder_splits",
    "image_hw",
    "load_folder",
    "load_images",
    "probe_image",
    "read_image",
    "scan_image_files",
]

SPLIT_SEED = 0  # the flat layout's normal train/test split


def _check_name(what: str, name: object, allow: tuple[str, ...] = (), nested: bool = False) -> None:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{what} must be a non-empty folder name, got {name!r}")
    if name in allow:
        return
    parts = PurePath(name).parts
    if PurePath(name).is_absolute() or ".." in parts or "." in parts or "*" in name:
        raise DataError(f"{what} must be a folder name relative to the dataset folder, got {name!r}")
    if len(parts) > 1 and not nested:
        raise DataError(f"{what} must be one folder name (no '/'), got {name!r}")


@dataclass(frozen=True)
class FolderLayout:
    """Folder names of a user anomaly dataset (module docstring); defaults = the fixed layout.

    Args:
        normal_dir: the normal images' folder in each split ("." in a flat layout: ROOT).
        abnormal_dir: the anomalies' folder, several folders (one type each), or "*".
        mask_dir: the masks' folder relative to ROOT; None = ``test/masks``, or ``masks``
            in a flat layout.
        normal_split_ratio: flat layout: the share of normals held out for the test split.
        normal_test_dir: flat layout: a folder of normal test images instead (then every
            image of ``normal_dir`` trains).
    """

    normal_dir: str = "normal"
    abnormal_dir: str | tuple[str, ...] = "anomaly"
    mask_dir: str | None = None
    normal_split_ratio: float = 0.2
    normal_test_dir: str | None = None

    def __post_init__(self) -> None:
        abnormal = (self.abnormal_dir,) if isinstance(self.abnormal_dir, str) else tuple(self.abnormal_dir)
        _check_name("normal_dir", self.normal_dir, allow=(".",))
        if not abnormal:
            raise DataError("abnormal_dir needs at least one folder name (or '*')")
        for name in abnormal:
            _check_name("abnormal_dir", name, allow=("*",) if len(abnormal) == 1 else ())
        if len(set(abnormal)) < len(abnormal):
            raise DataError(f"abnormal_dir names a folder twice: {', '.join(abnormal)}")
        if self.normal_dir in abnormal:
            raise DataError(f"{self.normal_dir!r} is both the normal and an abnormal folder")
        if abnormal == ("*",) and self.normal_dir == ".":
            raise DataError("abnormal_dir='*' needs a named normal folder, not '.'")
        if self.mask_dir is not None:
            _check_name("mask_dir", self.mask_dir, nested=True)
        if self.normal_test_dir is not None:
            _check_name("normal_test_dir", self.normal_test_dir)
            if self.normal_test_dir in (self.normal_dir, *abnormal):
                raise DataError(f"normal_test_dir {self.normal_test_dir!r} is also the normal or an abnormal folder")
        ratio = self.normal_split_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            raise DataError(f"normal_split_ratio must be a number in [0, 1), got {ratio!r}")
        object.__setattr__(self, "abnormal_dir", abnormal[0] if len(abnormal) == 1 else abnormal)

    @property
    def abnormal_dirs(self) -> tuple[str, ...]:
        return (self.abnormal_dir,) if isinstance(self.abnormal_dir, str) else self.abnormal_dir

    def masks_path(self, root: Path, flat: bool) -> Path:
        return root / (self.mask_dir or ("masks" if flat else "test/masks"))


class _Entry(NamedTuple):
    path: Path
    anomaly: bool
    kind: str  # "" for normals, else the anomaly type
    key: str  # path below the abnormal folder (or the split folder), no extension: mask matching


def _stack(paths: Sequence[Path], size: tuple[int, int], channels: int) -> torch.Tensor:
    """Decode ``paths`` into one tensor (N, C, H, W)."""
    out = torch.empty((len(paths), channels, *size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size, channels)
    return out


def _folder_entries(folder: Path, layout: FolderLayout, masks_dir: Path | None, flat: bool = False) -> list[_Entry]:
    """Normals then anomalies of one split folder (or a flat ROOT), validated."""
    present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    skip = {masks_dir.name} if masks_dir is not None and masks_dir.parent == folder else set()
    if flat and layout.normal_test_dir is not None:
        skip.add(layout.normal_test_dir)
    wildcard = layout.abnormal_dirs == ("*",)
    if wildcard:
        abnormal = [n for n in present if n != layout.normal_dir and n not in skip and (folder / n).is_dir()]
    else:
        abnormal = [n for n in layout.abnormal_dirs if (folder / n).is_dir()]
    if layout.normal_dir != ".":
        named = set() if wildcard else set(layout.abnormal_dirs)
        expected = {layout.normal_dir, *abnormal, *named, *skip}
        unexpected = [n for n in present if n not in expected]
        if unexpected:
            wanted = ", ".join(sorted({layout.normal_dir, *named, *skip}))
            rest = " and one folder per anomaly type" if wildcard else ""
            raise DataError(f"{folder}: unexpected entries {', '.join(unexpected)}; expected {wanted}/ folders{rest}")
    entries: list[_Entry] = []
    if layout.normal_dir == ".":
        outside = {*abnormal, *skip}
        entries += [_Entry(p, False, "", "") for p in images_only(folder)
                    if p.relative_to(folder).parts[0] not in outside]
    elif (folder / layout.normal_dir).is_dir():
        entries += [_Entry(p, False, "", "") for p in images_only(folder / layout.normal_dir)]
    single = not wildcard and len(layout.abnormal_dirs) == 1
    for name in abnormal:
        base = folder / name
        for p in images_only(base):
            if single:
                rel = p.relative_to(base)
                kind = name if len(rel.parts) == 1 else rel.parts[0]
            else:
                rel, kind = p.relative_to(folder), name
            entries.append(_Entry(p, True, kind, rel.with_suffix("").as_posix()))
    return entries


def _match_masks(masks_dir: Path, anomalies: list[_Entry]) -> dict[Path, Path]:
    """Map each anomaly image to its mask file; every mask and every anomaly must match."""
    by_key: dict[str, _Entry] = {}
    for entry in anomalies:
        if entry.key in by_key:
            raise DataError(
                f"anomalies {by_key[entry.key].path} and {entry.path} share the stem "
                f"{entry.key!r}, so a mask cannot tell them apart"
            )
        by_key[entry.key] = entry
    masks: dict[Path, Path] = {}
    for mask in images_only(masks_dir):
        key = mask.relative_to(masks_dir).with_suffix("").as_posix()
        candidates = [key] + ([key.removesuffix("_mask")] if key.endswith("_mask") else [])
        match = next((by_key[k] for k in candidates if k in by_key), None)
        if match is None:
            raise DataError(
                f"mask {mask} has no matching anomaly image (none has the path "
                f"{candidates[-1]!r} below its abnormal folder)"
            )
        if match.path in masks:
            raise DataError(f"anomaly {match.path} has two masks: {masks[match.path]} and {mask}")
        masks[match.path] = mask
    missing = [e.path for e in anomalies if e.path not in masks]
    if missing:
        raise DataError(
            f"{masks_dir} exists but these anomalies have no mask: {list_names(missing)}"
        )
    return masks


class _Splits(NamedTuple):
    train: list[_Entry]
    test: list[_Entry] | None  # None: the folder has no test split
    masks_dir: Path | None  # the test split's masks, when the folder has them
    flat: bool


def _flat_split(normals: list[_Entry], ratio: float, root: Path) -> tuple[list[_Entry], list[_Entry]]:
    """(train, test) normals of a flat folder: a seeded share ``ratio`` is held out for testing."""
    n = len(normals)
    n_test = math.floor(ratio * n + 0.5)
    if n - n_test < 1:
        raise DataError(f"{root}: {n} normal image(s) leave none for training at normal_split_ratio={ratio}")
    held = set(torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))[:n_test].tolist())
    return [e for i, e in enumerate(normals) if i not in held], [e for i, e in enumerate(normals) if i in held]


def _read_layout(root: Path, layout: FolderLayout) -> _Splits:
    """Both splits of ``root``, listed and validated (nothing is decoded)."""
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist")
    flat = not (root / "train").is_dir()
    normal = layout.normal_dir
    masks_dir = layout.masks_path(root, flat)
    if layout.mask_dir is not None and not masks_dir.is_dir():
        raise DataError(f"{root}: mask_dir {layout.mask_dir!r} is not a folder")
    if not flat:
        if layout.normal_test_dir is not None:
            raise DataError(f"{root}: normal_test_dir is for flat folders; with train/ the test normals are "
                            f"in test/{normal}")
        if normal != "." and not (root / "train" / normal).is_dir():
            raise DataError(f"{root}: missing folder train/{normal} (the normal training images)")
        train = _folder_entries(root / "train", layout, None)
        test_dir = root / "test"
        test = _folder_entries(test_dir, layout, masks_dir) if test_dir.is_dir() else None
    else:
        if normal != "." and not (root / normal).is_dir():
            raise DataError(
                f"{root}: missing folder train/{normal} (the normal training images), and no {normal}/ "
                f"for a flat layout (a folder of normal images only: normal_dir '.', --normal-dir .)"
            )
        if layout.normal_test_dir is not None and not (root / layout.normal_test_dir).is_dir():
            raise DataError(f"{root}: normal_test_dir {layout.normal_test_dir!r} is not a folder")
        entries = _folder_entries(root, layout, masks_dir, flat=True)
        normals = [e for e in entries if not e.anomaly]
        if not normals:
            raise DataError(f"{root / normal}: no normal images")
        if layout.normal_test_dir is None:
            train, test_normals = _flat_split(normals, layout.normal_split_ratio, root)
        else:
            train = normals
            test_normals = [_Entry(p, False, "", "") for p in images_only(root / layout.normal_test_dir)]
        test = test_normals + [e for e in entries if e.anomaly]
        test = test or None
    if not any(not e.anomaly for e in train):
        raise DataError(f"{root / 'train' / normal}: no normal training images")
    return _Splits(train, test, masks_dir if test is not None and masks_dir.is_dir() else None, flat)


def folder_splits(root: str | Path, layout: FolderLayout | None = None) -> tuple[str, ...]:
    """The splits ``root`` has under ``layout``: ("train",) or ("train", "test")."""
    splits = _read_layout(Path(root), layout or FolderLayout())
    return ("train",) if splits.test is None else ("train", "test")


def _common_size(infos: Sequence[ImageInfo]) -> tuple[int, int]:
    """The (H, W) most of the training normals have (ties: the first in file order).

    One odd image (a 1x1 thumbnail among 16x16 images) must not resize the whole set.
    """
    counts: dict[tuple[int, int], int] = {}
    for info in infos:
        counts[info.size] = counts.get(info.size, 0) + 1
    return max(counts, key=lambda hw: counts[hw])  # dicts keep insertion order: ties go to the first


def load_folder(
    root: str | Path,
    split: str = "train",
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    layout: FolderLayout | None = None,
) -> ImageSet:
    """Load ``split`` ("train" or "test") of a user anomaly folder (layouts: module docstring).

    Defaults are taken from the whole folder so both splits agree: ``image_size=None``
    uses the size most training normals have (ties: the first); ``channels=None`` is 3 if
    any image of either split is colour, else 1. ``layout`` None is the fixed layout.

    Returns:
        targets 0 normal / 1 anomaly, ``anomaly`` (bool), ``anomaly_types`` ("" for
        normals), ``paths``; for the test split with masks, ``masks`` (all zero for
        normals); ``meta["layout"]`` "split" or "flat".

    Raises:
        DataError: missing normal training folder or split, no normal images, unexpected
            or non-image files, unreadable images, unmatched or mis-sized masks.

    Shape:
        images (N, C, H, W) uint8; targets (N,) int64; masks (N, 1, H, W) uint8.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise DataError(f"folder datasets have splits 'train' and 'test', got split={split!r}")
    _check_channels(channels)
    layout = layout if layout is not None else FolderLayout()
    if not isinstance(layout, FolderLayout):
        raise DataError(f"layout must be a FolderLayout, got {type(layout).__name__}")
    splits = _read_layout(root, layout)
    entries = splits.train if split == "train" else splits.test
    if entries is None:
        raise DataError(
            f"{root}: missing folder test/" if not splits.flat else
            f"{root}: the flat layout leaves no test images (no abnormal folder, normal_split_ratio=0)"
        )
    if not entries:
        raise DataError(f"{root / split}: no images in {layout.normal_dir}/ or {', '.join(layout.abnormal_dirs)}/")

    infos = {e.path: probe_image(e.path) for e in entries}
    size = image_hw(image_size) if image_size is not None else _common_size(
        [infos[e.path] if e.path in infos else probe_image(e.path) for e in splits.train if not e.anomaly]
    )
    if channels is None:
        other = (splits.test or []) if split == "train" else splits.train
        colour = any(i.colour for i in infos.values()) or any(probe_image(e.path).colour for e in other)
        channels = 3 if colour else 1

    masks = None
    if split == "test" and splits.masks_dir is not None:
        mask_of = _match_masks(splits.masks_dir, [e for e in entries if e.anomaly])
        masks = torch.zeros((len(entries), 1, *size), dtype=torch.uint8)
        for i, entry in enumerate(entries):
            if entry.anomaly:
                masks[i] = _read_mask(mask_of[entry.path], size, infos[entry.path].size, entry.path)

    meta = {"dataset": "folder", "split": split, "root": str(root), "layout": "flat" if splits.flat else "split",
            "conversions": count_conversions([infos[e.path] for e in entries], size, channels)}
    if splits.flat:
        meta["normal_split_ratio"] = layout.normal_split_ratio
    return ImageSet(
        images=_stack([e.path for e in entries], size, channels),
        targets=torch.tensor([int(e.anomaly) for e in entries], dtype=torch.int64),
        class_names=FOLDER_CLASSES,
        anomaly=torch.tensor([e.anomaly for e in entries], dtype=torch.bool),
        anomaly_types=tuple(e.kind for e in entries),
        masks=masks,
        paths=tuple(str(e.path) for e in entries),
        meta=meta,
    )
