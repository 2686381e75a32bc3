"""Image files on disk: decoding, user anomaly folders, and plain lists of images.

This module owns turning image files into uint8 tensors (any format Pillow reads, with
explicit channel conversion and resizing), which :mod:`anomem.data.cub` and
:mod:`anomem.data.imagefolder` reuse. It also loads the user folder layout::

    ROOT/train/normal/...                 required, at least one image
    ROOT/train/anomaly/[<type>/]...       optional labelled anomalies
    ROOT/test/normal/...
    ROOT/test/anomaly/[<type>/]...
    ROOT/test/masks/[<type>/]<stem>.*     optional, one per test anomaly

Images directly in ``anomaly/`` have type "anomaly"; images in ``anomaly/<type>/`` (at
any depth below it) have type ``<type>``. A mask matches the anomaly with the same
relative folder and file stem (``<stem>_mask`` is accepted too, as in MVTec AD); any
image extension. Hidden files and folders (name starting with ".") are ignored; any
other non-image file is an error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
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
from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = [
    "FOLDER_CLASSES",
    "IMAGE_EXTENSIONS",
    "FileScan",
    "ImageInfo",
    "image_hw",
    "load_folder",
    "load_images",
    "probe_image",
    "read_image",
    "scan_image_files",
]

_MAX_LISTED = 5


class FileScan(NamedTuple):
    """Files under a directory, sorted by relative path: images and everything else.

    ``skipped`` lists (folder, reason) for folders that were not scanned: unreadable
    ones, and ones already scanned through another path (a symlink loop, or a second
    link to the same folder).
    """

    images: list[Path]
    others: list[Path]
    skipped: list[tuple[Path, str]] = []


def _list_names(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def scan_image_files(directory: str | Path) -> FileScan:
    """All files below ``directory`` (recursively, sorted), split by image extension.

    Hidden files and folders are left out. Symlinked folders are followed; each folder
    is scanned once (by device and inode), so loops end and nothing is counted twice.
    Folders that cannot be read, or were already scanned, are listed in
    ``FileScan.skipped`` with the reason. Raises DataError if ``directory`` is not a
    directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    images, others, skipped = [], [], []
    seen: set[tuple[int, int]] = set()
    stack = [directory]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                skipped.append((folder, "already scanned through another path (a symlink loop or a second link)"))
                continue
            seen.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((folder, f"cannot read it: {e.strerror or e}"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(folder, entry.name)
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(path)
            else:
                (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
        stack.extend(reversed(subdirs))  # depth first, in name order

    def key_of(p: Path) -> str:
        return p.relative_to(directory).as_posix()

    return FileScan(sorted(images, key=key_of), sorted(others, key=key_of), skipped)


def _describe_skipped(skipped: Sequence[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:_MAX_LISTED])
    more = len(skipped) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _images_only(directory: Path) -> list[Path]:
    scan = scan_image_files(directory)
    if scan.others:
        raise DataError(f"non-image files in {directory}: {_list_names(scan.others)}")
    unreadable = [(p, why) for p, why in scan.skipped if why.startswith("cannot read")]
    if unreadable:  # a dataset that cannot be read completely is not used in part
        raise DataError(f"folders in {directory} that cannot be read: {_describe_skipped(unreadable)}")
    repeated = [(p, why) for p, why in scan.skipped if not why.startswith("cannot read")]
    if repeated:
        warnings.warn(f"{directory}: skipped {_describe_skipped(repeated)}", UserWarning, stacklevel=3)
    return scan.images


def _stack(paths: Sequence[Path], size: tuple[int, int], channels: int) -> torch.Tensor:
    """Decode ``paths`` into one tensor (N, C, H, W)."""
    out = torch.empty((len(paths), channels, *size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size, channels)
    return out


def load_images(
    paths_or_dirs: str | Path | Iterable[str | Path],
    image_size: int | Sequence[int] | None = None,
    channels: int | None = None,
    skip_invalid: bool = False,
) -> ImageSet:
    """Load image files and directories of images (scanned recursively, sorted) for scoring.

    Args:
        paths_or_dirs: files and/or directories, in the order they should appear.
        image_size: output (H, W) or square side; None = the first image's size.
        channels: 1, 3, or None = 3 if any image is colour, else 1.
        skip_invalid: skip non-image and unreadable files (listed in
            ``meta["skipped"]``) instead of raising.

    ``meta["conversions"]`` counts what was changed to fit ``image_size`` and
    ``channels`` (:func:`anomem.data.image_io.count_conversions`).

    Raises:
        DataError: a path does not exist, a file is not an image or cannot be decoded
            (unless ``skip_invalid``), or nothing is left to load.

    Shape:
        images (N, C, H, W) uint8; targets (N,) all 0 (unlabelled).
    """
    _check_channels(channels)
    items = [paths_or_dirs] if isinstance(paths_or_dirs, str | Path) else list(paths_or_dirs)
    files: list[Path] = []
    skipped: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for item in map(Path, items):
        if item.is_dir():
            scan = scan_image_files(item)
            files.extend(scan.images)
            skipped.extend(scan.others)
            unreadable.extend((p, why) for p, why in scan.skipped if why.startswith("cannot read"))
            skipped.extend(p for p, why in scan.skipped if why.startswith("cannot read"))
        elif item.is_file():
            (files if item.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(item)
        else:
            raise DataError(f"{item}: no such file or directory")
    if unreadable and not skip_invalid:
        raise DataError(
            f"folders that cannot be read: {_describe_skipped(unreadable)} "
            "(skip them with skip_invalid=True, or --skip-invalid on the command line)"
        )
    if skipped and not skip_invalid:
        raise DataError(
            f"not image files: {_list_names(skipped)} "
            "(skip them with skip_invalid=True, or --skip-invalid on the command line)"
        )

    infos: list[ImageInfo] = []
    for path in files:
        try:
            infos.append(probe_image(path))
        except DataError:
            if not skip_invalid:
                raise
            skipped.append(path)
    if not infos:
        raise DataError(f"no images found in {', '.join(map(str, items))}")
    size = infos[0].size if image_size is None else image_hw(image_size)
    ch = channels if channels is not None else (3 if any(i.colour for i in infos) else 1)

    tensors, loaded, used = [], [], []
    for info in infos:
        try:
            tensors.append(read_image(info.path, size, ch))
        except DataError:
            if not skip_invalid:
                raise
            skipped.append(info.path)
            continue
        loaded.append(str(info.path))
        used.append(info)
    if not tensors:
        raise DataError(f"none of the images could be read: {_list_names(skipped)}")
    return ImageSet(
        images=torch.stack(tensors),  # (N, C, H, W)
        targets=torch.zeros(len(tensors), dtype=torch.int64),
        class_names=("unlabelled",),
        paths=tuple(loaded),
        meta={"skipped": [str(p) for p in skipped], "conversions": count_conversions(used, size, ch)},
    )


class _Entry(NamedTuple):
    path: Path
    anomaly: bool
    kind: str  # "" for normals, else the anomaly type
    key: str  # relative path below anomaly/ without extension, for mask matching


def _split_entries(split_dir: Path, allow_masks: bool) -> list[_Entry]:
    """Normals then anomalies of one split folder, validated."""
    allowed = {"normal", "anomaly"} | ({"masks"} if allow_masks else set())
    unexpected = sorted(
        p.name for p in split_dir.iterdir() if not p.name.startswith(".") and p.name not in allowed
    )
    if unexpected:
        raise DataError(
            f"{split_dir}: unexpected entries {', '.join(unexpected)}; expected "
            f"{', '.join(sorted(allowed))}/ folders"
        )
    entries: list[_Entry] = []
    normal_dir = split_dir / "normal"
    if normal_dir.is_dir():
        entries += [_Entry(p, False, "", "") for p in _images_only(normal_dir)]
    anomaly_dir = split_dir / "anomaly"
    if anomaly_dir.is_dir():
        for p in _images_only(anomaly_dir):
            rel = p.relative_to(anomaly_dir)
            kind = "anomaly" if len(rel.parts) == 1 else rel.parts[0]
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
    for mask in _images_only(masks_dir):
        key = mask.relative_to(masks_dir).with_suffix("").as_posix()
        candidates = [key] + ([key.removesuffix("_mask")] if key.endswith("_mask") else [])
        match = next((by_key[k] for k in candidates if k in by_key), None)
        if match is None:
            raise DataError(
                f"mask {mask} has no matching anomaly image (expected "
                f"{masks_dir.parent / 'anomaly' / candidates[-1]}.<ext>)"
            )
        if match.path in masks:
            raise DataError(f"anomaly {match.path} has two masks: {masks[match.path]} and {mask}")
        masks[match.path] = mask
    missing = [e.path for e in anomalies if e.path not in masks]
    if missing:
        raise DataError(
            f"{masks_dir} exists but these anomalies have no mask: {_list_names(missing)}"
        )
    return masks


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
) -> ImageSet:
    """Load ``split`` ("train" or "test") of a user anomaly folder (layout: module docstring).

    Defaults are taken from the whole folder so both splits agree: ``image_size=None``
    uses the size most images of ``train/normal`` have (ties: the first); ``channels=None`` is 3 if any
    image under ``train/`` or ``test/`` is colour, else 1.

    Returns:
        targets 0 normal / 1 anomaly, ``anomaly`` (bool), ``anomaly_types`` ("" for
        normals), ``paths``; for the test split with ``test/masks``, ``masks`` (all zero
        for normals).

    Raises:
        DataError: missing ``train/normal`` or split folder, no normal images, unexpected
            or non-image files, unreadable images, unmatched or mis-sized masks.

    Shape:
        images (N, C, H, W) uint8; targets (N,) int64; masks (N, 1, H, W) uint8.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise DataError(f"folder datasets have splits 'train' and 'test', got split={split!r}")
    _check_channels(channels)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist")
    train_normal = root / "train" / "normal"
    if not train_normal.is_dir():
        raise DataError(f"{root}: missing folder train/normal (the normal training images)")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{root}: missing folder {split}/")

    entries = _split_entries(split_dir, allow_masks=split == "test")
    train_entries = entries if split == "train" else _split_entries(root / "train", False)
    if not any(not e.anomaly for e in train_entries):
        raise DataError(f"{train_normal}: no normal training images")
    if not entries:
        raise DataError(f"{split_dir}: no images in normal/ or anomaly/")

    infos = {e.path: probe_image(e.path) for e in entries}
    size = image_hw(image_size) if image_size is not None else _common_size(
        [infos[e.path] if e.path in infos else probe_image(e.path) for e in train_entries if not e.anomaly]
    )
    if channels is None:
        test_dir = root / "test"
        if split == "test":
            other_entries = train_entries
        else:
            other_entries = _split_entries(test_dir, True) if test_dir.is_dir() else []
        colour = any(i.colour for i in infos.values()) or any(
            probe_image(e.path).colour for e in other_entries
        )
        channels = 3 if colour else 1

    masks = None
    masks_dir = split_dir / "masks"
    if split == "test" and masks_dir.is_dir():
        anomalies = [e for e in entries if e.anomaly]
        mask_of = _match_masks(masks_dir, anomalies)
        masks = torch.zeros((len(entries), 1, *size), dtype=torch.uint8)
        for i, entry in enumerate(entries):
            if entry.anomaly:
                masks[i] = _read_mask(mask_of[entry.path], size, infos[entry.path].size, entry.path)

    return ImageSet(
        images=_stack([e.path for e in entries], size, channels),
        targets=torch.tensor([int(e.anomaly) for e in entries], dtype=torch.int64),
        class_names=FOLDER_CLASSES,
        anomaly=torch.tensor([e.anomaly for e in entries], dtype=torch.bool),
        anomaly_types=tuple(e.kind for e in entries),
        masks=masks,
        paths=tuple(str(e.path) for e in entries),
        meta={"dataset": "folder", "split": split, "root": str(root),
              "conversions": count_conversions([infos[e.path] for e in entries], size, channels)},
    )
