"""Finding image files on disk, and loading plain lists of them for scoring.

:func:`scan_image_files` walks a folder (hidden entries left out, symlinked folders
followed once); :func:`load_images` turns files and folders into one
:class:`~anomem.imageset.ImageSet` of unlabelled images, which is what ``anomem score``
reads. The labelled folder layouts are in :mod:`anomem.data.folder`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from anomem.data.image_io import (
    IMAGE_EXTENSIONS,
    ImageInfo,
    _check_channels,
    count_conversions,
    image_hw,
    probe_image,
    read_image,
)
from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = ["FileScan", "describe_skipped", "images_only", "list_names", "load_images", "scan_image_files"]

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


def list_names(paths: Sequence[Path]) -> str:
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


def describe_skipped(skipped: Sequence[tuple[Path, str]]) -> str:
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:_MAX_LISTED])
    more = len(skipped) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def images_only(directory: Path) -> list[Path]:
    """The images below ``directory``; any other file, or a folder that cannot be read, is an error."""
    scan = scan_image_files(directory)
    if scan.others:
        raise DataError(f"non-image files in {directory}: {list_names(scan.others)}")
    unreadable = [(p, why) for p, why in scan.skipped if why.startswith("cannot read")]
    if unreadable:  # a dataset that cannot be read completely is not used in part
        raise DataError(f"folders in {directory} that cannot be read: {describe_skipped(unreadable)}")
    repeated = [(p, why) for p, why in scan.skipped if not why.startswith("cannot read")]
    if repeated:
        warnings.warn(f"{directory}: skipped {describe_skipped(repeated)}", UserWarning, stacklevel=3)
    return scan.images


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
            f"folders that cannot be read: {describe_skipped(unreadable)} "
            "(skip them with skip_invalid=True, or --skip-invalid on the command line)"
        )
    if skipped and not skip_invalid:
        raise DataError(
            f"not image files: {list_names(skipped)} "
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
        raise DataError(f"none of the images could be read: {list_names(skipped)}")
    return ImageSet(
        images=torch.stack(tensors),  # (N, C, H, W)
        targets=torch.zeros(len(tensors), dtype=torch.int64),
        class_names=("unlabelled",),
        paths=tuple(loaded),
        meta={"skipped": [str(p) for p in skipped], "conversions": count_conversions(used, size, ch)},
    )
