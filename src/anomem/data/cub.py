"""CUB-200-2011 birds (Wah et al. 2011) in its distributed layout.

::

    CUB_200_2011/
        images.txt               "<image id> <relative path>"
        image_class_labels.txt   "<image id> <class id 1..200>"
        train_test_split.txt     "<image id> <1 = train | 0 = test>"
        classes.txt              "<class id> <class name>"
        images/<relative path>   e.g. images/001.Black_footed_Albatross/x.jpg

Images vary in size; they are resized (without keeping the aspect ratio) to a fixed
``image_size`` and converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from anomem.data.folder import image_hw, read_image
from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = ["CUB_DIR", "CUB_FILES", "load_cub200", "locate_cub200"]

CUB_DIR = "CUB_200_2011"
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_SPLIT_FLAG = {"train": 1, "test": 0}


def locate_cub200(base: str | Path, split: str = "train") -> Path | None:
    """The directory (``base/CUB_200_2011`` or ``base``) holding the CUB text files.

    Both splits live in the same files; ``split`` is only validated.
    """
    if split not in _SPLIT_FLAG:
        raise DataError(f"CUB-200-2011 has splits 'train' and 'test', got split={split!r}")
    base = Path(base)
    for directory in (base / CUB_DIR, base):
        if all((directory / name).is_file() for name in CUB_FILES):
            return directory
    return None


def _read_table(path: Path) -> dict[int, str]:
    """``{id: rest of line}`` of a "<int id> <value>" text file, validated."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    table: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in table:
            raise DataError(f"{path}:{number}: duplicate id {key}")
        table[key] = parts[1].strip()
    if not table:
        raise DataError(f"{path}: file is empty")
    return table


def _int_column(table: dict[int, str], path: Path, allowed: set[int]) -> dict[int, int]:
    out = {}
    for key, value in table.items():
        if not value.isdigit() or int(value) not in allowed:
            raise DataError(
                f"{path}: id {key} has value {value!r}, expected one of {sorted(allowed)[:5]}..."
            )
        out[key] = int(value)
    return out


def load_cub200(root: str | Path, split: str, image_size: int | Sequence[int] = 64) -> ImageSet:
    """Load the official train or test split of CUB-200-2011, resized to ``image_size``.

    Class ``k`` is the bird species with id ``k + 1`` in ``classes.txt``.

    Raises:
        DataError: missing or inconsistent text files, missing or unreadable images.

    Shape:
        images (N, 3, H, W) uint8 (N = 5994 train, 5794 test); targets (N,) int64 in 0..199.
    """
    if split not in _SPLIT_FLAG:
        raise DataError(f"CUB-200-2011 has splits 'train' and 'test', got split={split!r}")
    size = image_hw(image_size)
    directory = locate_cub200(root, split)
    if directory is None:
        raise DataError(
            f"{root}: no CUB-200-2011 files: expected {', '.join(CUB_FILES)} in {root}/{CUB_DIR}"
        )
    images = _read_table(directory / "images.txt")
    classes = _read_table(directory / "classes.txt")
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise DataError(
            f"{directory / 'classes.txt'}: class ids must be 1..{len(classes)} without gaps"
        )
    labels = _int_column(
        _read_table(directory / "image_class_labels.txt"),
        directory / "image_class_labels.txt",
        set(classes),
    )
    flags = _int_column(
        _read_table(directory / "train_test_split.txt"), directory / "train_test_split.txt", {0, 1}
    )
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", flags)):
        if table.keys() != images.keys():
            diff = sorted(images.keys() ^ table.keys())[:5]
            raise DataError(f"{directory / name}: image ids differ from images.txt (e.g. {diff})")

    ids = [i for i in sorted(images) if flags[i] == _SPLIT_FLAG[split]]
    if not ids:
        raise DataError(f"{directory}: no images in split {split!r}")
    out = torch.empty((len(ids), 3, *size), dtype=torch.uint8)
    paths = []
    for row, image_id in enumerate(ids):
        path = directory / "images" / images[image_id]
        if not path.is_file():
            raise DataError(f"CUB image {path} (id {image_id} in images.txt) does not exist")
        out[row] = read_image(path, size, channels=3)
        paths.append(str(path))
    return ImageSet(
        images=out,
        targets=torch.tensor([labels[i] - 1 for i in ids], dtype=torch.int64),
        class_names=tuple(classes[k] for k in sorted(classes)),
        paths=tuple(paths),
        meta={"dataset": "cub200", "split": split, "root": str(directory)},
    )
