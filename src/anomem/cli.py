"""The ``anomem`` command: turns arguments into a config and calls the library.

Every user mistake (bad path, bad value, corrupt file) ends with a one-line
``anomem: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem import __version__
from anomem.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from anomem.config import AnoMemConfig, load_config
from anomem.errors import AnoMemError, DataError

log = logging.getLogger("anomem")


# -- data -------------------------------------------------------------------------
def _is_folder_dataset(spec: str) -> bool:
    return Path(spec).is_dir() and (Path(spec) / "train").is_dir()


class TrainData:
    """What ``anomem train`` fits on and (optionally) evaluates on."""

    def __init__(self, normals, anomalies, test_images=None, test_is_anomaly=None, test_paths=None, description=""):
        self.normals, self.anomalies = normals, anomalies
        self.test_images, self.test_is_anomaly, self.test_paths = test_images, test_is_anomaly, test_paths
        self.description = description


def load_train_data(args: argparse.Namespace, image_size: int | None = None) -> TrainData:
    """A named dataset in one-vs-all mode, or a user folder with train/normal."""
    from anomem.data.folder import load_folder
    from anomem.protocols import one_vs_all

    spec = args.data
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
    if Path(spec).exists():
        raise DataError(f"{spec!r} is not a dataset folder: expected {spec}/train/normal (and optionally train/anomaly, test/)")
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


# -- run directory ------------------------------------------------------------------
def _prepare_run_dir(out: str) -> Path:
    run = Path(out)
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DataError(f"cannot write to output directory {out!r}: {e.strerror or e}") from None
    return run


def _setup_log(run: Path) -> None:
    handler = logging.FileHandler(run / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _config_from_args(args: argparse.Namespace) -> AnoMemConfig:
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"train.device={args.device}")
    return load_config(None if args.config and not args.preset_given else args.preset, args.config, overrides)


# -- commands -----------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from anomem.detector import AnoMem

    if args.resume:
        run = Path(args.resume)
        last = run / "last.ckpt"
        if not last.is_file():
            raise DataError(f"cannot resume: {str(last)!r} does not exist")
        state = load_checkpoint(last)
        saved = json.loads((run / "args.json").read_text()) if (run / "args.json").is_file() else None
        if saved is None:
            raise DataError(f"cannot resume: {str(run / 'args.json')!r} is missing")
        args = argparse.Namespace(**{**saved, "resume": str(run), "progress": args.progress})
        cfg = AnoMemConfig.from_dict(json.loads(state["config"]))
    else:
        state = None
        cfg = _config_from_args(args)
    args.seed = cfg.train.seed
    run = _prepare_run_dir(args.out)
    _setup_log(run)
    data = load_train_data(args)
    saved_args = {k: v for k, v in vars(args).items() if k not in ("func",)}
    atomic_write_text(run / "args.json", json.dumps(saved_args, indent=2))
    atomic_write_text(run / "config.json", json.dumps(cfg.to_dict(), indent=2))
    log.info("anomem %s: %s", __version__, data.description)
    print(f"data: {data.description}", file=sys.stderr)

    def on_epoch_end(det: AnoMem, trainer, entry) -> None:
        log.info("epoch %d loss %.4f (com %.4f var %.4f) lr %.4f %.0f img/s", entry.epoch, entry.loss,
                 entry.contrastive, entry.variance, entry.lr, entry.images_per_s)
        save_checkpoint(det.stage1_checkpoint(trainer), run / "last.ckpt")

    t0 = time.time()
    det = AnoMem(cfg, progress=args.progress).fit(data.normals, data.anomalies, on_epoch_end=on_epoch_end, resume=state)
    train_s = time.time() - t0
    metrics: dict[str, Any] = {
        "version": __version__, "git_commit": _git_commit(), "seed": cfg.train.seed, "data": data.description,
        "train_seconds": round(train_s, 2), "final_loss": det.history_[-1].loss if det.history_ else None,
        "supervised": det.is_supervised,
    }
    if data.test_images is not None:
        scores = det.anomaly_score(data.test_images)
        metrics["test_auroc"] = _auroc(data.test_is_anomaly, scores)
        metrics["test_size"] = int(data.test_images.shape[0])
        _write_scores(run / "test_scores.csv", data.test_paths, scores, data.test_is_anomaly)
    det.save(run / "model.ckpt", meta={"metrics": metrics, "config": cfg.to_dict()})
    atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=2))
    log.info("done: %s", json.dumps(metrics))
    auc = metrics.get("test_auroc")
    print(f"trained in {train_s:.1f} s" + (f"; test AUROC {auc:.4f}" if auc is not None else ""))
    print(f"run directory: {run}  (model: {run / 'model.ckpt'})")
    return 0


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


def cmd_score(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images
    from anomem.detector import AnoMem

    det = AnoMem.load(args.checkpoint, device=args.device or "cpu")
    imgs = load_images(args.inputs, image_size=det.image_size_, channels=det.in_channels_, skip_invalid=args.skip_invalid)
    scores = det.anomaly_score(imgs.images, batch_size=args.batch_size)
    if args.out is None:
        for p, s in zip(imgs.paths, scores):
            print(f"{p},{float(s):.6g}")
        return 0
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps([{"path": p, "score": float(s)} for p, s in zip(imgs.paths, scores)], indent=2))
    else:
        _write_scores(out, imgs.paths, scores)
    print(f"scored {len(scores)} images -> {out}")
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images
    from anomem.detector import AnoMem

    det = AnoMem.load(args.checkpoint, device=args.device or "cpu")
    load = lambda p: load_images(p, image_size=det.image_size_, channels=det.in_channels_).images  # noqa: E731
    t0 = time.time()
    det.refit_scorer(load(args.anomalies), normals=None if args.normals is None else load(args.normals),
                     keep_previous=not args.replace)
    out = args.out or args.checkpoint
    det.save(out, meta=det.meta_)
    print(f"refitted stage 2 on {det.anomaly_bank_[0].shape[0]} anomalies in {time.time() - t0:.1f} s -> {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """One-vs-all on scikit-learn's embedded digits: AnoMem vs raw-pixel kNN."""
    from anomem.baselines import make_baseline
    from anomem.data.registry import load_dataset
    from anomem.detector import AnoMem
    from anomem.protocols import one_vs_all

    run = _prepare_run_dir(args.out)
    cfg = load_config("tiny", None, [f"train.seed={args.seed}", *(args.set or [])])
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    rows = []
    print(f"AnoMem demo: scikit-learn digits ({len(train)} train / {len(test)} test, 16x16), one-vs-all, preset 'tiny'")
    print(f"{'normal':>6} {'AnoMem':>7} {'kNN':>7} {'seconds':>8}")
    for c in args.classes:
        t0 = time.time()
        split = one_vs_all(train, test, c, 0.0, args.seed)
        det = AnoMem(cfg, progress=False).fit(split.normals)
        auc = _auroc(split.test_is_anomaly, det.anomaly_score(split.test_images))
        knn = make_baseline("knn").fit(split.normals)
        auc_knn = _auroc(split.test_is_anomaly, knn.anomaly_score(split.test_images))
        rows.append({"normal_class": c, "anomem_auroc": auc, "knn_auroc": auc_knn, "seconds": round(time.time() - t0, 1)})
        print(f"{c:>6} {auc:7.3f} {auc_knn:7.3f} {time.time() - t0:8.1f}", flush=True)
        det.save(run / f"class{c}.ckpt")
    mean = float(np.mean([r["anomem_auroc"] for r in rows]))
    mean_knn = float(np.mean([r["knn_auroc"] for r in rows]))
    print(f"{'mean':>6} {mean:7.3f} {mean_knn:7.3f}")
    result = {"version": __version__, "seed": args.seed, "config": cfg.to_dict(), "rows": rows,
              "mean_anomem_auroc": mean, "mean_knn_auroc": mean_knn}
    atomic_write_text(run / "demo.json", json.dumps(result, indent=2))
    print(f"run directory: {run} (results: {run / 'demo.json'}, detectors: class<k>.ckpt)")
    return 0


# -- parser -------------------------------------------------------------------------
def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="named preset: cpu-small (default), gpu-r18, paper-r50, tiny")
    p.add_argument("--config", default=None, help="YAML file with config overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value, e.g. train.epochs=5")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="anomem", description="Anomaly detection via multi-scale contrasted memory.")
    ap.add_argument("--version", action="version", version=f"anomem {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector on a named dataset or a folder")
    t.add_argument("--data", help="dataset name (fashion-mnist, mnist, cifar10, digits, ...) or a folder with train/normal")
    t.add_argument("--data-root", default=None, help="where named datasets live (else $ANOMEM_DATA, ./data, system paths)")
    t.add_argument("--normal-class", type=int, default=None, help="one-vs-all: the normal class index")
    t.add_argument("--ratio", type=float, default=0.0, help="γ: fraction of labelled anomalies in the training set")
    t.add_argument("--channels", type=int, default=None, choices=(1, 3), help="folders: force grey (1) or colour (3)")
    t.add_argument("--out", default=None, help="run directory (default runs/<time>)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run from its last.ckpt")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    _add_config_args(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score images or folders with a trained detector")
    s.add_argument("checkpoint")
    s.add_argument("inputs", nargs="+", help="image files and/or directories (scanned recursively)")
    s.add_argument("--out", default=None, help="CSV (default) or .json file; stdout if omitted")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", default=None)
    s.add_argument("--skip-invalid", action="store_true", help="skip unreadable/non-image files instead of failing")
    s.set_defaults(func=cmd_score)

    r = sub.add_parser("refit", help="retrain stage 2 only, with new labelled anomalies (seconds)")
    r.add_argument("checkpoint")
    r.add_argument("--anomalies", nargs="+", required=True, help="anomaly image files/directories")
    r.add_argument("--normals", nargs="+", default=None, help="normal images (default: the bank kept in the checkpoint)")
    r.add_argument("--replace", action="store_true", help="forget previously given anomalies instead of adding to them")
    r.add_argument("--out", default=None, help="output checkpoint (default: overwrite the input, atomically)")
    r.add_argument("--device", default=None)
    r.set_defaults(func=cmd_refit)

    d = sub.add_parser("demo", help="one-vs-all on the embedded scikit-learn digits, with a kNN baseline")
    d.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "train":
        args.preset_given = args.preset is not None
        if args.preset is None:
            args.preset = "cpu-small"
        if not args.resume and not args.data:
            ap.error("train: --data is required (or --resume RUN_DIR)")
        if args.out is None:
            args.out = args.resume or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        if not (0.0 <= args.ratio < 1.0):
            ap.error(f"--ratio must lie in [0, 1), got {args.ratio}")
    try:
        return args.func(args)
    except AnoMemError as e:
        print(f"anomem: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
