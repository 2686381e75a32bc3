"""What every ``anomem`` verb shares: loading data and detectors, run directories, logs, AUROC warnings."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from anomem.errors import DataError
from anomem.io.checkpoint import atomic_write_text
from anomem.io.outputs import (
    prepare_dir,
)
from anomem.io.records import score_records  # noqa: F401  (the score files' records; the server shares them)

log = logging.getLogger("anomem")


# -- data -------------------------------------------------------------------------

def _load_detector(path, device: str = "cpu"):
    """``AnoMem.load`` (every field validated first), imported on use: torch loads lazily."""
    from anomem.detector import AnoMem

    return AnoMem.load(path, device=device)

def _is_folder_dataset(spec: str) -> bool:
    return Path(spec).is_dir()


def folder_layout(args: argparse.Namespace):
    """The :class:`~anomem.data.folder.FolderLayout` that ``--normal-dir``, ``--abnormal-dir``,
    ``--mask-dir`` and ``--normal-split-ratio`` describe (the fixed layout by default)."""
    from anomem.data.folder import FolderLayout

    given = {key: getattr(args, key, None) for key in ("normal_dir", "abnormal_dir", "mask_dir", "normal_split_ratio",
                                                         "normal_test_dir")}
    if given["abnormal_dir"] is not None:
        given["abnormal_dir"] = tuple(given["abnormal_dir"])
    return FolderLayout(**{k: v for k, v in given.items() if v is not None})


class TrainData:
    """What ``anomem train`` fits on and (optionally) evaluates on."""

    def __init__(self, normals, anomalies, test_images=None, test_is_anomaly=None, test_paths=None, description="",
                 validation=None):
        self.normals, self.anomalies, self.validation = normals, anomalies, validation
        self.test_images, self.test_is_anomaly, self.test_paths = test_images, test_is_anomaly, test_paths
        self.description = description


def _check_data_spec(spec: str) -> None:
    if Path(spec).exists() and not _is_folder_dataset(spec):
        raise DataError(f"{spec!r} is not a dataset folder: expected {spec}/train/normal (and optionally train/anomaly, test/)")


def load_train_data(args: argparse.Namespace, image_size: int | None = None) -> TrainData:
    """A named dataset in one-vs-all mode, or a user folder (any :class:`FolderLayout`)."""
    from anomem.bench.protocols import one_vs_all
    from anomem.data.folder import folder_splits, load_folder

    spec = args.data
    _check_data_spec(spec)
    if _is_folder_dataset(spec):
        layout = folder_layout(args)
        train = load_folder(spec, "train", image_size=image_size, channels=args.channels, layout=layout)
        normals = train.images[~train.anomaly]
        anomalies = train.images[train.anomaly]
        test = None
        if "test" in folder_splits(spec, layout):
            test = load_folder(spec, "test", image_size=tuple(train.images.shape[2:]), channels=train.images.shape[1],
                               layout=layout)
        how = ""
        if train.meta["layout"] == "flat" and layout.normal_test_dir is not None:
            how = f" (flat layout: every normal trains; test normals from {layout.normal_test_dir}/)"
        elif train.meta["layout"] == "flat" and test is None:  # small data: say what it cannot do
            how = " (flat layout: too few images to hold any out: no test split, no test AUROC)"
        elif train.meta["layout"] == "flat":
            share = layout.normal_split_ratio
            how = (f" (flat layout: {1 - share:.0%} of the normals train, the other {share:.0%} and the abnormal "
                   f"images test, split seed 0)")
        return TrainData(
            normals,
            anomalies if anomalies.shape[0] else None,
            None if test is None else test.images,
            None if test is None else test.anomaly,
            None if test is None else test.paths,
            f"folder {spec}: {normals.shape[0]} normal, {anomalies.shape[0]} anomalous training images{how}",
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


def report_conversions(counts: dict | None, det, strict: bool) -> None:
    """One line on stderr saying what was converted to fit the detector's input; with
    ``strict`` (``--strict``) any conversion is an error instead (nothing is scored)."""
    from anomem.data.image_io import describe_conversions

    msg = describe_conversions(counts)
    if msg is None:
        return
    h, w = det.image_size_
    target = f"{w}x{h} {'grey' if det.in_channels_ == 1 else 'RGB'}"
    if strict:
        raise DataError(f"--strict: the inputs do not match the detector's input ({target}): scoring them "
                        f"{msg.replace('converted', 'would convert', 1)}; convert them first, or drop --strict")
    print(f"anomem: {msg} (detector input: {target})", file=sys.stderr)


def progress_mode(enabled: bool, stream=None) -> tuple[bool, bool]:
    """(progress bars, plain lines): bars only when ``stream`` (stderr) is a terminal;
    otherwise (a log file, CI, a pipe) one line per step instead, which a log can hold."""
    if not enabled:
        return False, False
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        tty = False
    return tty, not tty


# -- run directory ------------------------------------------------------------------
def _prepare_run_dir(out: str) -> Path:
    return prepare_dir(Path(out))


def _setup_log(run: Path) -> logging.Handler:
    handler = logging.FileHandler(run / "train.log", encoding="utf-8", errors="surrogateescape")  # any file name
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


SCORE_FORMATS = ("csv", "json", "jsonl")


def format_records(rows: list[dict], fmt: str) -> str:
    """``rows`` as CSV (a header, then quoted rows; None is an empty cell), a JSON list or JSON lines."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # quoted as CSV needs: names may hold commas or newlines
    w.writerow(rows[0].keys() if rows else ["path", "score", "score_normalized", "is_anomaly", "threshold"])
    for r in rows:
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in r.values()])
    return buf.getvalue()


def _write_scores(path: Path, paths, scores: np.ndarray, threshold=None, truth=None, heatmaps=None,
                  fmt: str = "csv") -> None:
    """The score file of ``anomem score --out`` and ``train``'s test_scores.csv, atomically."""
    atomic_write_text(path, format_records(score_records(paths, scores, threshold, truth, heatmaps), fmt))


# -- threshold warnings: once, at the end of the command ----------------------------
_DEFERRED: list[list[str]] = []  # the notes of the command running now (a stack: main() may nest in tests)


@contextlib.contextmanager
def threshold_warnings_at_end(stream=None) -> Iterator[None]:
    """Hold back every :class:`~anomem.thresholds.ThresholdWarning` of one command and say it
    once, at its end, with what to do: not once per threshold (the demo fits one per class),
    nor inside the result lines (:func:`threshold_line`). Other warnings pass through at once."""
    from anomem.thresholds import ThresholdWarning

    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", ThresholdWarning)  # counted here, not deduplicated by location
        passed = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, ThresholdWarning):
                notes.append(str(message))
            else:
                passed(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        _DEFERRED.append(notes)
        try:
            yield
        finally:
            _DEFERRED.pop()
        # said only when the command succeeded: a failed command prints its one error line alone
        said = list(dict.fromkeys(notes))
        if said:
            more = f" (and {len(said) - 1} more threshold(s) of this run alike)" if len(said) > 1 else ""
            print(f"anomem: warning: {said[0]}{more}; `anomem threshold MODEL --fpr F` or `--normals DIR` "
                  "sets a threshold again", file=stream or sys.stderr)


def threshold_line(threshold) -> str:
    """``threshold.describe()`` for a result line, its caveat held for the end of the command."""
    if threshold.note and _DEFERRED:
        _DEFERRED[-1].append(threshold.note)
        return threshold.describe(note=False)
    return threshold.describe()


def summary_stream(out) -> TextIO:
    """Where a command's summary line goes: stderr when its output file is a stream
    (``-``, ``/dev/stdout``, a FIFO, a device), where the line would join the data."""
    from anomem.io.checkpoint import is_stream

    return sys.stderr if out is not None and is_stream(out) else sys.stdout
