"""The argument parser of the ``anomem`` command: one sub-command per verb."""

from __future__ import annotations

import argparse
import re

from anomem import __version__
from anomem.cli.bench import cmd_benchmark, cmd_linear_eval
from anomem.cli.common import SCORE_FORMATS
from anomem.cli.demo import cmd_demo
from anomem.cli.score import (
    cmd_evaluate,
    cmd_export,
    cmd_refit,
    cmd_score,
    cmd_threshold,
)
from anomem.cli.serve import cmd_serve
from anomem.cli.train import (
    cmd_train,
)


class _Parser(argparse.ArgumentParser):
    """argparse, with ``-2.5e-1`` read as a negative number (a value), not an option."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="named preset: cpu-small (default), gpu-r18, paper-r50, tiny")
    p.add_argument("--config", default=None, help="YAML file with config overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value, e.g. train.epochs=5")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")


def _add_folder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("folder layout", "folder names of a user dataset (like anomalib's Folder); "
                             "a folder without train/ is flat: its normals are split into train and test")
    g.add_argument("--normal-dir", default=None, metavar="NAME",
                   help="the normal images' folder in each split (default normal; '.' in a flat folder: all of it)")
    g.add_argument("--abnormal-dir", nargs="+", default=None, metavar="NAME",
                   help="the anomalies' folder(s), one type each (default anomaly); '*': every other folder (MVTec AD)")
    g.add_argument("--mask-dir", default=None, metavar="PATH",
                   help="masks, relative to the dataset folder (default test/masks; flat: masks; MVTec AD: ground_truth)")
    g.add_argument("--normal-split-ratio", type=float, default=None, metavar="R",
                   help="flat folders: the share of normals held out for testing, seeded (default 0.2)")
    g.add_argument("--normal-test-dir", default=None, metavar="NAME",
                   help="flat folders: a folder of normal test images instead of the split")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="anomem", description="Anomaly detection via multi-scale contrasted memory.")
    ap.add_argument("--version", action="version", version=f"anomem {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector on a named dataset or a folder")
    t.add_argument("--data", help="dataset name (fashion-mnist, mnist, cifar10, digits, ...) or a folder (train/normal, ...: see --normal-dir)")
    t.add_argument("--data-root", default=None, help="where named datasets live (else $ANOMEM_DATA, ./data, system paths)")
    t.add_argument("--normal-class", type=int, default=None, help="one-vs-all: the normal class index")
    t.add_argument("--ratio", type=float, default=0.0, help="γ: fraction of labelled anomalies in the training set")
    t.add_argument("--channels", type=int, default=None, choices=(1, 3), help="folders: force grey (1) or colour (3)")
    t.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="folders: resize every image to N x N (default: the folder's common size); scoring resizes "
                        "to the trained size")
    t.add_argument("--val-normals", nargs="+", default=None, metavar="PATH",
                   help="normal images/folders not trained on and sharing no pixels with the training images (another "
                        "batch, or another region of the scene the training crops were cut from): they set the "
                        "threshold, the fusion weights and the patch banks' statistics instead of a held-out share of "
                        "the training normals")
    t.add_argument("--out", default=None, help="run directory (default runs/<time>)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run from its last.ckpt")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    _add_folder_args(t)
    _add_config_args(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score images or folders with a trained detector")
    s.add_argument("checkpoint")
    s.add_argument("inputs", nargs="+", help="image files and/or directories (scanned recursively)")
    s.add_argument("--out", default=None,
                   help="score file: CSV, or JSON with a .json suffix, JSON lines with .jsonl; stdout (CSV) if omitted")
    s.add_argument("--format", choices=SCORE_FORMATS, default=None,
                   help="csv (header + one row per image), json (a list of records) or jsonl (one record a line); "
                        "default: from the --out suffix, else csv")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", default=None)
    s.add_argument("--skip-invalid", action="store_true", help="skip unreadable/non-image files instead of failing")
    s.add_argument("--maps", default=None, metavar="DIR",
                   help="also write one heat-map file per image into DIR (the 'heatmap' column names it)")
    s.add_argument("--maps-format", choices=("png", "npy", "figure"), default="png",
                   help="png: the fused map coloured, at the image's size (fast, default); npy: its float32 values; "
                        "figure: image, overlay and per-scale maps with the score (slow)")
    s.add_argument("--strict", action="store_true",
                   help="refuse images that would need resizing or a grey/colour or bit-depth conversion")
    s.set_defaults(func=cmd_score)

    r = sub.add_parser("refit", help="retrain stage 2 only, with new labelled anomalies (seconds)")
    r.add_argument("checkpoint")
    r.add_argument("--anomalies", nargs="+", required=True, help="anomaly image files/directories")
    r.add_argument("--normals", nargs="+", default=None, help="normal images (default: the bank kept in the checkpoint)")
    r.add_argument("--replace", action="store_true", help="forget previously given anomalies instead of adding to them")
    r.add_argument("--out", default=None, help="output checkpoint (default: overwrite the input, atomically)")
    r.add_argument("--device", default=None)
    r.set_defaults(func=cmd_refit)

    th = sub.add_parser("threshold", help="set the decision threshold stored in a checkpoint (no refitting)")
    th.add_argument("checkpoint")
    th.add_argument("--fpr", type=float, default=None, help="target false-positive rate on normals (default: the config's, 0.01)")
    th.add_argument("--normals", nargs="+", default=None,
                    help="normal images/folders not used for training (default: the normals held out at fit time)")
    th.add_argument("--labelled", default=None, metavar="DIR", help="folder with normal/ and anomaly/: threshold from labels")
    th.add_argument("--method", choices=("fpr", "f1", "recall"), default=None, help="with --labelled: f1 (default) or recall")
    th.add_argument("--recall", type=float, default=0.95, help="target recall for --method recall")
    th.add_argument("--value", type=float, default=None, help="set the raw-score threshold by hand")
    th.add_argument("--out", default=None, help="output checkpoint (default: overwrite the input, atomically)")
    th.add_argument("--device", default=None)
    th.set_defaults(func=cmd_threshold)

    ev = sub.add_parser("evaluate", help="metrics and an HTML/Markdown report on a labelled test set")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", required=True, help="folder with test/normal, test/anomaly[, test/masks] or a dataset name")
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--normal-class", default=None, help="named datasets: the normal class (index or name)")
    ev.add_argument("--defects", action="store_true",
                    help="named datasets: test on the normal class's test images plus copies with generated local defects (with masks)")
    ev.add_argument("--max-images", type=int, default=None, help="evaluate on a seeded random subset of this size")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True, help="report directory")
    ev.add_argument("--title", default="AnoMem evaluation")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--strict", action="store_true",
                    help="refuse test images that would need resizing or a grey/colour or bit-depth conversion")
    ev.add_argument("--device", default=None)
    _add_folder_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export the scorer (image -> score, fused heat-map) to ONNX or TorchScript")
    ex.add_argument("checkpoint")
    ex.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--sigma", type=float, default=None, help="heat-map smoothing σ in pixels (default: the config's)")
    ex.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve a trained detector over HTTP: POST /score, GET /model, GET /health",
                        description="Serve a trained detector over HTTP. Limits: files, bytes per file and per "
                                    "request, and pixels per image are refused with 413 and a JSON reason; a request "
                                    "that does not arrive whole within --request-timeout gets 408; uploads are "
                                    "decoded while their estimated memory fits in --decode-budget-mb.")
    sv.add_argument("checkpoint")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed at start)")
    sv.add_argument("--max-files", type=int, default=64, help="images per request (default 64)")
    sv.add_argument("--max-file-mb", type=float, default=10.0, help="MiB per image file, checked before decoding (default 10)")
    sv.add_argument("--max-request-mb", type=float, default=64.0, help="MiB per request body (default 64)")
    sv.add_argument("--max-batch", type=int, default=64, help="images of concurrent requests scored together (default 64)")
    sv.add_argument("--max-pixels", type=float, default=25e6,
                    help="pixels per image (width x height), checked from its header before decoding; over it: "
                         "413 (default 25e6, e.g. 5000x5000)")
    sv.add_argument("--decode-budget-mb", type=float, default=512.0,
                    help="MiB that the decodes of concurrent uploads may take together, each estimated from its "
                         "header (about 9-12 bytes per pixel for 8-bit images, 39 for 16-bit grey); an upload waits "
                         "until its estimate fits, and one whose estimate alone is larger gets 413 (default 512)")
    sv.add_argument("--request-timeout", type=float, default=30.0,
                    help="seconds a request may take to arrive whole (head and body); then 408 (default 30)")
    sv.add_argument("--shutdown-timeout", type=float, default=10.0,
                    help="after SIGTERM, seconds a request still arriving is waited for; then 503 (default 10)")
    sv.add_argument("--max-connections", type=int, default=None,
                    help="connections held at once; one more closes the slowest unfinished request with 503 "
                         "(default: the open-file limit less 64)")
    sv.add_argument("--device", default=None)
    sv.set_defaults(func=cmd_serve)

    b = sub.add_parser("benchmark", help="run a protocol with AnoMem and the baselines side by side (resumable)")
    b.add_argument("--protocol", default="one-vs-all", choices=("one-vs-all", "deep-sad", "cross-type", "ood"))
    b.add_argument("--data", default="fashion-mnist", help="a named dataset with train and test splits")
    b.add_argument("--data-root", default=None)
    b.add_argument("--ood", default=None, metavar="DATASET", help="protocol ood: the out-of-distribution test set")
    b.add_argument("--classes", type=int, nargs="+", default=[0], help="normal classes (one cell each)")
    b.add_argument("--ratios", type=float, nargs="+", default=[0.0],
                   help="γ: labelled anomalies as a fraction of the training set (deep-sad: γ_l)")
    b.add_argument("--pollution", type=float, default=0.0, help="deep-sad: γ_p, unlabelled anomalies in the training set")
    b.add_argument("--seeds", type=int, default=1, help="seeded draws per class and ratio (0..N-1)")
    b.add_argument("--methods", "--baselines", nargs="+", default=["all"], metavar="M",
                   help="method groups: all, anomem, anomem-paper, anomem-single-scale, simclr, deepsad, knn, ocsvm, iforest")
    b.add_argument("--preset", default="cpu-small")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for the AnoMem-based methods")
    b.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    b.add_argument("--max-train", type=int, default=None, help="cap the training normals per cell (seeded subsample)")
    b.add_argument("--max-test", type=int, default=None, help="cap the test images (one fixed stratified subsample)")
    b.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    b.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    b.add_argument("--out", required=True, help="results directory (rerun with the same settings to resume)")
    b.add_argument("--no-progress", dest="progress", action="store_false")
    b.set_defaults(func=cmd_benchmark)

    le = sub.add_parser("linear-eval", help="linear evaluation of a trained encoder (logistic regression on frozen features)")
    le.add_argument("checkpoint")
    le.add_argument("--data", required=True, help="a named labelled dataset with train and test splits")
    le.add_argument("--data-root", default=None)
    le.add_argument("--max-train", type=int, default=None, help="subsample the probe's training images (seeded)")
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--device", default=None)
    le.add_argument("--out", default=None, help="also write the accuracies to this JSON file")
    le.set_defaults(func=cmd_linear_eval)

    d = sub.add_parser("demo", help="AnoMem beside patch kNN and kNN on a bundled photograph with drawn defects "
                                    "(report.html with heat-maps), or one-vs-all on scikit-learn's digits")
    d.add_argument("--data", choices=("photo", "digits"), default="photo")
    d.add_argument("--category", default=None, help="the photograph (--data photo): grass (default), gravel, brick, "
                                                    "tissue or stars")
    d.add_argument("--size", type=int, default=None, help="crop side in pixels (--data photo; 32..256, default 96)")
    # Three classes keep the digits demo (install included) under 5 minutes on 2 cores.
    d.add_argument("--classes", type=int, nargs="+", default=None,
                   help="normal classes to run in turn (--data digits; default 0 1 2; 0..9 for all, ~30 s each)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)
    return ap
