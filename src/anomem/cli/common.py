"""What every ``anomem`` verb shares: loading data and detectors, run directories, logs, AUROC warnings."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from anomem.checkpoint import atomic_write_text
from anomem.errors import DataError
from anomem.outputs import (
    prepare_dir,
)

log = logging.getLogger("anomem")


# -- data -------------------------------------------------------------------------

def _load_detector(path, device: str = "cpu"):
    """``AnoMem.load`` (every field validated first), imported on use: torch loads lazily."""
    from anomem.detector import AnoMem

    return AnoMem.load(path, device=device)

def _is_folder_dataset(spec: str) -> bool:
    return Path(spec).is_dir() and (Path(spec) / "train").is_dir()


class TrainData:
    """What ``anomem train`` fits on and (optionally) evaluates on."""

    def __init__(self, normals, anomalies, test_images=None, test_is_anomaly=None, test_paths=None, description=""):
        self.normals, self.anomalies = normals, anomalies
        self.test_images, self.test_is_anomaly, self.test_paths = test_images, test_is_anomaly, test_paths
        self.description = description


def _check_data_spec(spec: str) -> None:
    if Path(spec).exists() and not _is_folder_dataset(spec):
        raise DataError(f"{spec!r} is not a dataset folder: expected {spec}/train/normal (and optionally train/anomaly, test/)")


def load_train_data(args: argparse.Namespace, image_size: int | None = None) -> TrainData:
    """A named dataset in one-vs-all mode, or a user folder with train/normal."""
    from anomem.data.folder import load_folder
    from anomem.protocols import one_vs_all

    spec = args.data
    _check_data_spec(spec)
    if _is_folder_dataset(spec):
        train = load_folder(spec, "train", image_size=image_size, channels=args.channels)
        normals = train.images[~train.anomaly]
        anomalies = train.images[train.anomaly]
        test = None
        if (Path(spec) / "test").is_dir():
            test = load_folder(spec, "test", image_size=tuple(train.images.shape[2:]), channels=train.images.shape[1])
        return TrainData(
            normals,
            anomalies if anomalies.shape[0] else None,
            None if test is None else test.images,
            None if test is None else test.anomaly,
            None if test is None else test.paths,
            f"folder {spec}: {normals.shape[0]} normal, {anomalies.shape[0]} anomalous training images",
        )
    from anomem.data.registry import load_dataset

    if args.normal_class is None:
        raise DataError(f"--normal-class is required with the named dataset {spec!r} (one-vs-all protocol)")
    train = load_dataset(spec, "train", root=args.data_root)
    test = load_dataset(spec, "test", root=args.data_root)
    split = one_vs_all(train, test, args.normal_class, args.ratio, args.seed)
    return TrainData(
        split.normals,
        split.anomalies if split.anomalies.shape[0] else None,
        split.test_images,
        split.test_is_anomaly,
        None,
        f"{spec} one-vs-all, normal class {args.normal_class} ({train.class_names[args.normal_class]}), "
        f"γ={args.ratio}: {split.normals.shape[0]} normals, {split.anomalies.shape[0]} labelled anomalies",
    )


def _auroc(is_anomaly: torch.Tensor, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = is_anomaly.numpy().astype(int)
    if y.min() == y.max():
        return None
    return float(roc_auc_score(y, scores))


def _warn_inverted(auroc: float | None, what: str) -> None:
    from anomem.metrics import inverted_warning

    msg = inverted_warning(auroc, what)
    if msg:
        print(msg, file=sys.stderr)


# -- run directory ------------------------------------------------------------------
def _prepare_run_dir(out: str) -> Path:
    return prepare_dir(Path(out))


def _setup_log(run: Path) -> logging.Handler:
    handler = logging.FileHandler(run / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _write_scores(path: Path, paths, scores: np.ndarray, is_anomaly=None, labels=None) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["path" if paths is not None else "index", "score"]
    if labels is not None:
        header.append("label")
    if is_anomaly is not None:
        header.append("is_anomaly")
    w.writerow(header)
    for i, s in enumerate(scores):
        row = [paths[i] if paths is not None else i, f"{float(s):.6g}"]
        if labels is not None:
            row.append(labels[i])
        if is_anomaly is not None:
            row.append(int(is_anomaly[i]))
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())
