"""Dataset names: where each dataset's files are looked for and which loader reads them.

``load_dataset(name, split)`` searches, in order, for a directory holding the files::

    root                          (when given, the only place searched)
    $ANOMEM_DATA/<name>, $ANOMEM_DATA
    ./data/<name>
    system directories            (fashion-mnist: /usr/share/datasets/fashion-mnist,
                                   from the Debian package dataset-fashion-mnist)

and within each also the dataset's own folder name (``cifar-10-batches-py``,
``CUB_200_2011``, ...). MNIST and Fashion-MNIST can be downloaded (``download=True``);
the others must be put in place by hand. ``"folder:<path>"`` and ``"imagefolder:<path>"``
load user folders (:mod:`anomem.data.folder`, :mod:`anomem.data.imagefolder`).

Loader modules are imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anomem.errors import DataError
from anomem.imageset import ImageSet

__all__ = [
    "DATA_ENV_VAR",
    "available_datasets",
    "load_dataset",
    "search_dirs",
    "select_classes",
    "validate_class_index",
]

DATA_ENV_VAR = "ANOMEM_DATA"


@dataclass(frozen=True)
class _Spec:
    """How one named dataset is found and read."""

    directory: str  # folder name below $ANOMEM_DATA and ./data
    splits: tuple[str, ...]
    expected: str  # the files a user must provide, for error messages
    locate: Callable[[Path, str], Path | None]
    load: Callable[..., ImageSet]  # load(directory, split, **options)
    options: tuple[str, ...] = ()
    fixed: tuple[tuple[str, object], ...] = ()  # options implied by the name
    system_dirs: tuple[str, ...] = ()
    downloadable: bool = False


def _lazy(module: str, function: str, **bound: object) -> Callable[..., Any]:
    """``anomem.data.<module>.<function>``, imported on first call, with ``bound`` keywords."""

    def call(*args: object, **kwargs: object) -> Any:
        target = getattr(importlib.import_module(f"anomem.data.{module}"), function)
        return target(*args, **bound, **kwargs)

    call.__name__ = call.__qualname__ = function
    return call


_TRAIN_TEST = ("train", "test")
_IDX_FILES = "{train,t10k}-images-idx3-ubyte[.gz], {train,t10k}-labels-idx1-ubyte[.gz]"
_CIFAR100 = {
    "directory": "cifar100",
    "splits": _TRAIN_TEST,
    "expected": "cifar-100-python/ (train, test, meta)",
    "locate": _lazy("cifar", "locate_cifar100"),
    "load": _lazy("cifar", "load_cifar100"),
    "options": ("label_mode",),
}
_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        directory="fashion-mnist",
        splits=_TRAIN_TEST,
        expected=_IDX_FILES,
        locate=_lazy("idx", "locate_idx", dataset="fashion-mnist"),
        load=_lazy("idx", "load_idx", dataset="fashion-mnist"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        downloadable=True,
    ),
    "mnist": _Spec(
        directory="mnist",
        splits=_TRAIN_TEST,
        expected=_IDX_FILES,
        locate=_lazy("idx", "locate_idx", dataset="mnist"),
        load=_lazy("idx", "load_idx", dataset="mnist"),
        downloadable=True,
    ),
    "cifar10": _Spec(
        directory="cifar10",
        splits=_TRAIN_TEST,
        expected="cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
        locate=_lazy("cifar", "locate_cifar10"),
        load=_lazy("cifar", "load_cifar10"),
    ),
    "cifar100": _Spec(**_CIFAR100),
    "cifar100-coarse": _Spec(**_CIFAR100, fixed=(("label_mode", "coarse"),)),
    "svhn": _Spec(
        directory="svhn",
        splits=("train", "test", "extra"),
        expected="train_32x32.mat, test_32x32.mat [, extra_32x32.mat]",
        locate=_lazy("svhn", "locate_svhn"),
        load=_lazy("svhn", "load_svhn"),
    ),
    "cub200": _Spec(
        directory="cub200",
        splits=_TRAIN_TEST,
        expected="CUB_200_2011/ (images.txt, image_class_labels.txt, train_test_split.txt, "
        "classes.txt, images/)",
        locate=_lazy("cub", "locate_cub200"),
        load=_lazy("cub", "load_cub200"),
        options=("image_size",),
    ),
}
_PATH_PREFIXES = ("folder", "imagefolder")
_OTHER = ("digits",)


def available_datasets() -> tuple[str, ...]:
    """Every name :func:`load_dataset` accepts (path datasets shown as ``<prefix>:<path>``)."""
    return (*sorted((*_SPECS, *_OTHER)), *(f"{p}:<path>" for p in _PATH_PREFIXES))


def search_dirs(name: str, root: str | Path | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in order (see the module docstring)."""
    if root is not None:
        return [Path(root)]
    spec = _SPECS.get(name)
    directory = spec.directory if spec else name
    dirs = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        dirs += [Path(env) / directory, Path(env)]
    dirs.append(Path("data") / directory)
    dirs += [Path(d) for d in (spec.system_dirs if spec else ())]
    return dirs


def _check_options(name: str, allowed: Sequence[str], options: dict) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(
            f"dataset {name!r} takes no option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(allowed) if allowed else 'none'}"
        )


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise DataError(f"dataset {name!r} has splits {', '.join(splits)}, got split={split!r}")


def _load_path_dataset(prefix: str, path: str, split: str, options: dict) -> ImageSet:
    if prefix == "folder":
        from anomem.data.folder import FolderLayout, load_folder

        names = ("normal_dir", "abnormal_dir", "mask_dir", "normal_split_ratio", "normal_test_dir")
        _check_options("folder", ("image_size", "channels", "layout", *names), options)
        given = {k: options.pop(k) for k in names if k in options}
        if given and "layout" in options:
            raise DataError(f"give the folder layout either as layout= or as {', '.join(given)}, not both")
        if given:
            options["layout"] = FolderLayout(**given)
        return load_folder(path, split, **options)
    from anomem.data.imagefolder import load_image_folder

    allowed = tuple(inspect.signature(load_image_folder).parameters)[1:]
    _check_options("imagefolder", allowed, options)
    directory = Path(path) / split if (Path(path) / split).is_dir() else Path(path)
    dataset = load_image_folder(directory, **options)
    dataset.meta["split"] = split
    return dataset


def _load_digits(split: str, options: dict) -> ImageSet:
    from anomem.data.digits import load_digits_splits

    _check_options("digits", ("image_size", "test_fraction", "seed"), options)
    _check_split("digits", split, ("train", "test"))
    return getattr(load_digits_splits(**options), split)


def load_dataset(
    name: str, split: str, root: str | Path | None = None, download: bool = False, **options: object
) -> ImageSet:
    """Load ``split`` of the dataset called ``name`` (see :func:`available_datasets`).

    Args:
        name: a dataset name, or ``"folder:<path>"`` / ``"imagefolder:<path>"``
            (``"folder"`` / ``"imagefolder"`` with ``root=<path>`` also work). For
            ``imagefolder``, ``<path>/<split>`` is used when it exists, else ``<path>``.
        split: "train" or "test" ("extra" for SVHN; any for imagefolder).
        root: a directory holding the files; when given no other place is searched.
        download: fetch MNIST / Fashion-MNIST if they are not found.
        options: loader options: ``label_mode`` (cifar100), ``image_size`` (cub200,
            digits, folder, imagefolder), ``channels`` and the layout (folder: ``layout``, or
            ``normal_dir``, ``abnormal_dir``, ``mask_dir``, ``normal_split_ratio``), ``mode`` and
            ``skip_invalid`` (imagefolder), ``test_fraction`` and ``seed`` (digits).

    Raises:
        DataError: unknown name, split or option; files not found (the message lists
            the directories searched and the files expected there).

    Shape:
        images (N, C, H, W) uint8; targets (N,) int64.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {name!r}")
    prefix, sep, path = name.partition(":")
    if prefix.strip().lower() in _PATH_PREFIXES and (sep or root is not None):
        if sep and root is not None:
            raise DataError(
                f"give the folder either in the name {name!r} or as root={root!r}, not both"
            )
        if download:
            raise DataError(f"{name!r} is a local folder; download=True does not apply")
        return _load_path_dataset(
            prefix.strip().lower(), path if sep else str(root), split, options
        )

    key = name.strip().lower()
    if key in _PATH_PREFIXES:
        raise DataError(f"dataset {key!r} needs a path: name it '{key}:<path>' or pass root=<path>")
    if key == "digits":
        if root is not None or download:
            raise DataError("digits ships with scikit-learn; root and download do not apply")
        return _load_digits(split, options)
    spec = _SPECS.get(key)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    _check_split(key, split, spec.splits)
    _check_options(key, spec.options, options)
    for option, value in spec.fixed:
        if options.setdefault(option, value) != value:
            raise DataError(f"dataset {key!r} implies {option}={value!r}, got {options[option]!r}")
    if download and not spec.downloadable:
        raise DataError(
            f"{key} cannot be downloaded automatically; put {spec.expected} in one of: "
            f"{', '.join(map(str, search_dirs(key, root)))}"
        )

    searched = search_dirs(key, root)
    for base in searched:
        found = spec.locate(base, split)
        if found is not None:
            return spec.load(found, split, **options)
    if download:
        from anomem.data.idx import download_idx

        target = searched[0]
        download_idx(key, target)
        found = spec.locate(target, split)
        if found is not None:
            return spec.load(found, split, **options)
    raise DataError(
        f"{key} ({split}) not found; put {spec.expected} in one of: "
        f"{', '.join(map(str, searched))}"
        + (" (or pass download=True)" if spec.downloadable else "")
    )


def validate_class_index(class_names: Sequence[str], index: int | str) -> int:
    """The class index ``index`` (an int or a class name), checked against ``class_names``.

    Raises:
        DataError: the index is out of range, not an integer, or an unknown name.
    """
    if isinstance(index, str):
        if index in class_names:
            return list(class_names).index(index)
        raise DataError(f"unknown class {index!r}; classes: {', '.join(class_names)}")
    if isinstance(index, bool) or not hasattr(index, "__index__"):
        raise DataError(f"class index must be an int or a class name, got {index!r}")
    i = int(index)
    if not 0 <= i < len(class_names):
        raise DataError(f"class index {i} does not exist; valid: 0..{len(class_names) - 1}")
    return i


def select_classes(dataset: ImageSet, classes: Sequence[int | str]) -> ImageSet:
    """The images of ``dataset`` whose class is in ``classes`` (indices or names).

    Targets keep their original class indices.

    Raises:
        DataError: a class does not exist, or ``classes`` is empty.
    """
    if isinstance(classes, str | int):
        classes = [classes]
    indices = sorted({validate_class_index(dataset.class_names, c) for c in classes})
    if not indices:
        raise DataError("select_classes needs at least one class")
    keep = torch.isin(dataset.targets, torch.tensor(indices, dtype=dataset.targets.dtype))
    return dataset.subset(keep)
