"""Generic class-per-folder image datasets (torchvision ``ImageFolder`` style).

::

    ROOT/<class name>/**/<image>     one folder per class, sorted by name = class index

A folder with images directly inside and no class sub-folders (the resized LSUN and
TinyImageNet out-of-distribution sets are distributed like this) is one class named
after the folder. Hidden files and folders are ignored; other non-image files are an
error unless ``skip_invalid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from anomem.data.folder import image_hw, read_image, scan_image_files
from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = ["load_image_folder"]

_CHANNELS = {"L": 1, "RGB": 3}


def load_image_folder(
    root: str | Path,
    image_size: int | Sequence[int] = 32,
    mode: str = "RGB",
    skip_invalid: bool = False,
) -> ImageSet:
    """Load a class-per-folder dataset, every image resized to ``image_size``.

    Args:
        root: the folder holding one sub-folder per class (or images directly).
        image_size: output (H, W) or square side.
        mode: "L" (1 channel) or "RGB" (3 channels); every image is converted to it.
        skip_invalid: skip files that are not images instead of raising.

    Raises:
        DataError: bad arguments, a missing or empty folder, images both directly in
            ``root`` and in class folders, non-image or unreadable files.

    Shape:
        images (N, C, H, W) uint8, C = 1 for "L" and 3 for "RGB"; targets (N,) int64.
    """
    if mode not in _CHANNELS:
        raise DataError(f"mode must be 'L' or 'RGB', got {mode!r}")
    size = image_hw(image_size)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if class_dirs and loose:
        raise DataError(
            f"{root}: has both class folders ({', '.join(p.name for p in class_dirs[:3])}) and "
            f"loose files ({', '.join(p.name for p in loose[:3])}); use one or the other"
        )
    if not class_dirs:
        class_dirs, names = [root], (root.name,)
    else:
        names = tuple(p.name for p in class_dirs)

    files: list[Path] = []
    targets: list[int] = []
    for index, directory in enumerate(class_dirs):
        scan = scan_image_files(directory)
        if scan.others and not skip_invalid:
            shown = ", ".join(str(p) for p in scan.others[:5])
            raise DataError(
                f"non-image files in {directory}: {shown} (pass skip_invalid=True to skip them)"
            )
        if not scan.images:
            raise DataError(f"{directory}: class folder holds no images")
        files += scan.images
        targets += [index] * len(scan.images)

    channels = _CHANNELS[mode]
    out = torch.empty((len(files), channels, *size), dtype=torch.uint8)
    for i, path in enumerate(files):
        out[i] = read_image(path, size, channels)
    return ImageSet(
        images=out,
        targets=torch.tensor(targets, dtype=torch.int64),
        class_names=names,
        paths=tuple(str(p) for p in files),
        meta={"dataset": "imagefolder", "root": str(root)},
    )
