"""The ``anomem`` command: turns arguments into a config and calls the library.

Every user mistake (bad path, bad value, corrupt file) ends with a one-line
``anomem: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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
from anomem.checkpoint import atomic_write_text, git_commit, load_checkpoint, save_checkpoint
from anomem.config import AnoMemConfig, load_config
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError
from anomem.inputs import check_batch_size, check_int_range, check_trainable_size
from anomem.limits import check_config_limits, check_seed
from anomem.outputs import (
    RunLock,
    check_claimable,
    check_file_target,
    check_new_run_dir,
    check_outputs,
    claim_output_dir,
    prepare_dir,
    real,
)
from anomem.validate import validate_training_checkpoint

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


def _existing(path: str | None) -> str | None:
    return path if path is not None and Path(path).exists() else None


def _train_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """What `anomem train` reads: the dataset folder or data root, and the config file."""
    return [("--data", _existing(args.data)), ("--data-root", _existing(getattr(args, "data_root", None))),
            ("--config", _existing(getattr(args, "config", None)))]


def _data_digest(data: TrainData) -> str:
    """sha256 of every tensor the run trains and tests on, to tell at resume whether they changed."""
    h = hashlib.sha256()
    for t in (data.normals, data.anomalies, data.test_images, data.test_is_anomaly):
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.dtype != torch.bool else t.to(torch.uint8).numpy())
    return h.hexdigest()


_SAVED_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "data_root": (str, type(None)), "normal_class": (int, type(None)),
    "ratio": (int, float), "channels": (int, type(None)), "seed": (int, type(None)),
    "data_sha256": (str, type(None)), "cwd": (str, type(None)),
}


def _load_saved_args(run: Path) -> dict[str, Any]:
    """RUN_DIR/args.json, every entry resume uses checked for type and range."""
    path = run / "args.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot resume: {str(path)!r} is unreadable: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(saved, dict):
        raise DataError(f"cannot resume: {str(path)!r} is missing or not a mapping")
    if "data" not in saved:
        raise DataError(f"cannot resume: {str(path)!r} has no 'data' entry")
    for key, default in (("data_root", None), ("normal_class", None), ("ratio", 0.0), ("channels", None)):
        saved.setdefault(key, default)
    for key, types in _SAVED_ARG_TYPES.items():
        value = saved.get(key)
        if key not in saved and type(None) in types:
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            raise DataError(f"cannot resume: {str(path)!r}: entry {key!r} has the wrong type ({value!r})")
    if not saved["data"]:
        raise DataError(f"cannot resume: {str(path)!r}: entry 'data' is empty")
    if not (0.0 <= float(saved.get("ratio", 0.0)) < 1.0):
        raise DataError(f"cannot resume: {str(path)!r}: ratio {saved['ratio']!r} is outside [0, 1)")
    if saved.get("channels") not in (None, 1, 3):
        raise DataError(f"cannot resume: {str(path)!r}: channels {saved['channels']!r} is not 1 or 3")
    # Runs from before absolute paths were stored: resolve relative paths against the start directory.
    cwd = saved.get("cwd")
    for key in ("data", "data_root", "config"):
        value = saved.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and cwd and Path(cwd, value).exists():
            saved[key] = str(Path(cwd, value))
    return saved


def _absolute_args(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments to store in args.json: paths made absolute, so resume works from any directory."""
    saved = {k: v for k, v in vars(args).items() if k not in ("func",)}
    for key in ("data", "data_root", "config"):
        value = saved.get(key)
        if isinstance(value, str) and value and Path(value).exists():
            saved[key] = str(Path(value).resolve())
    saved["cwd"] = str(Path.cwd())
    return saved


def _config_from_args(args: argparse.Namespace) -> AnoMemConfig:
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"train.device={args.device}")
    if args.config is not None and Path(args.config).is_dir():
        raise ConfigError(f"config file {args.config!r} is a directory; give a YAML file")
    cfg = load_config(None if args.config and not args.preset_given else args.preset, args.config, overrides)
    check_config_limits(cfg)
    return cfg


def _check_same_config(path: Path, cfg: AnoMemConfig) -> None:
    """Resuming uses the checkpoint's config; refuse if RUN_DIR/config.json says otherwise."""
    try:
        written = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise DataError(f"cannot resume: {str(path)!r} is unreadable: {e}") from None

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix.rstrip("."): d}
        return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    a, b = flat(written), flat(json.loads(cfg.to_json()))
    diff = sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...))
    if diff:
        raise DataError(f"cannot resume: last.ckpt was made with a config that differs from {str(path)!r} "
                        f"in {', '.join(diff[:5])}; restore config.json or start a new run")


# -- commands -----------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from anomem.distributed import init_from_env, shutdown

    init_from_env()  # under torchrun: join the process group; only rank 0 writes below
    try:
        code = _train(args)
    except BaseException:
        shutdown(ok=False)  # no barrier: the other ranks may be inside a collective
        raise
    shutdown()
    return code


def _train(args: argparse.Namespace) -> int:
    from anomem.distributed import is_main_process

    saved_digest = None
    if args.resume:
        run = Path(args.resume)
        last = run / "last.ckpt"
        if not last.is_file():
            hint = (" (the run stopped before its first epoch ended: start it again with the same --out)"
                    if (run / "args.json").is_file() else "")
            raise DataError(f"cannot resume: {str(last)!r} does not exist{hint}")
        state = load_checkpoint(last)
        saved = _load_saved_args(run)
        saved_digest = saved.get("data_sha256")
        # Write into RUN_DIR even if the run was started with another --out and then moved.
        args = argparse.Namespace(**{**saved, "resume": str(run), "out": str(run), "progress": args.progress})
        try:
            cfg = AnoMemConfig.from_dict(json.loads(state["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot resume: {str(last)!r} holds no readable config: {e}") from None
        validate_training_checkpoint(state, last)
        _check_same_config(run / "config.json", cfg)
    else:
        state = None
        cfg = _config_from_args(args)
        run = Path(args.out)
    args.seed = cfg.train.seed
    # Nothing is written before every input is checked: paths, data, config against data.
    _check_data_spec(args.data)
    check_outputs([("--out", run)], _train_inputs(args))
    if not args.resume and is_main_process():
        check_new_run_dir(run)
    data = load_train_data(args)
    check_trainable_size(data.normals.shape[2:])
    if cfg.scorer.mode == "supervised" and data.anomalies is None:
        raise ConfigError("scorer.mode=supervised needs labelled anomalies (train/anomaly/ or --ratio > 0), "
                          "and the training data hold none")
    digest = _data_digest(data)
    if saved_digest is not None and saved_digest != digest:
        raise DataError(f"cannot resume: the training data ({args.data}) differ from the data the run started "
                        "with (their sha256 changed); restore them or start a new run")
    if not is_main_process():
        return _train_in(args, cfg, state, data, digest, run, None)
    _prepare_run_dir(str(run))
    with RunLock(run):
        if not args.resume:
            check_new_run_dir(run)  # again, now that no other process can start a run here
        handler = _setup_log(run)
        try:
            return _train_in(args, cfg, state, data, digest, run, handler)
        finally:
            log.removeHandler(handler)
            handler.close()


def _train_in(args, cfg, state, data, digest, run: Path, handler) -> int:
    from anomem.detector import AnoMem
    from anomem.distributed import is_main_process

    if args.resume:
        log.info("resuming %s", run)
        if "data_sha256" not in vars(args):
            log.warning("args.json records no data digest (a run from an older anomem): cannot check that the data are unchanged")
    saved_args = {**_absolute_args(args), "data_sha256": digest}
    if is_main_process():
        atomic_write_text(run / "args.json", json.dumps(saved_args, indent=2))
        atomic_write_text(run / "config.json", json.dumps(cfg.to_dict(), indent=2))
    log.info("anomem %s: %s", __version__, data.description)
    print(f"data: {data.description}", file=sys.stderr)

    def on_epoch_end(det: AnoMem, trainer, entry) -> None:
        log.info("epoch %d loss %.4f (com %.4f var %.4f) lr %.4f %.0f img/s", entry.epoch, entry.loss,
                 entry.contrastive, entry.variance, entry.lr, entry.images_per_s)
        if is_main_process():
            save_checkpoint(det.stage1_checkpoint(trainer), run / "last.ckpt")

    t0 = time.time()
    det = AnoMem(cfg, progress=args.progress and is_main_process()).fit(
        data.normals, data.anomalies, on_epoch_end=on_epoch_end, resume=state
    )
    train_s = time.time() - t0
    if not is_main_process():
        return 0
    metrics: dict[str, Any] = {
        "version": __version__, "git_commit": git_commit(), "seed": cfg.train.seed, "config": cfg.to_dict(),
        "data": data.description,
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
    _warn_inverted(auc, "test AUROC")
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

    check_batch_size(args.batch_size, "--batch-size")
    check_outputs([("--out", args.out), ("--maps", args.maps)],
                  [("checkpoint", args.checkpoint), *(("path", p) for p in args.inputs)])
    if args.out is not None:
        check_file_target("--out", args.out, ("text",))
    if args.maps is not None:
        check_claimable("--maps", args.maps, "score --maps")
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    imgs = load_images(args.inputs, image_size=det.image_size_, channels=det.in_channels_, skip_invalid=args.skip_invalid)
    _report_skipped(imgs)
    maps_dir = None if args.maps is None else claim_output_dir("--maps", args.maps, "score --maps")
    if maps_dir is None:
        scores = det.anomaly_score(imgs.images, batch_size=args.batch_size)
    else:
        maps = det.anomaly_maps(imgs.images, batch_size=args.batch_size)
        scores = maps.scores
    th = det.threshold_
    labels = None if th is None else ["anomaly" if v else "normal" for v in th.predict(scores)]
    if maps_dir is not None:
        _write_heatmaps(det, maps_dir, imgs, maps, labels)
    if args.out is None:
        w = csv.writer(sys.stdout, lineterminator="\n")  # quoted as CSV needs: names may hold commas or newlines
        for i, (p, s) in enumerate(zip(imgs.paths, scores)):
            w.writerow([p, f"{float(s):.6g}", *(() if labels is None else (labels[i],))])
        return 0
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        rows = [{"path": p, "score": float(s)} | ({} if labels is None else {"label": labels[i]})
                for i, (p, s) in enumerate(zip(imgs.paths, scores))]
        atomic_write_text(out, json.dumps(rows, indent=2))
    else:
        _write_scores(out, imgs.paths, scores, labels=labels)
    print(f"scored {len(scores)} images -> {out}" + ("" if th is None else f" ({th.describe()})"))
    return 0


def _report_skipped(imgs) -> None:
    skipped = imgs.meta.get("skipped") or []
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"anomem: skipped {len(skipped)} invalid file(s): {shown}", file=sys.stderr)


def _write_heatmaps(det, out: Path, imgs, maps, labels) -> None:
    """One PNG per image: image, fused overlay, per-scale maps; score (+ label) in the title."""
    from anomem.report import map_range, save_heatmap_png

    vrange = map_range(maps.fused)
    used: set[str] = set()
    for i, path in enumerate(imgs.paths):
        stem = Path(path).stem
        name, k = stem, 1
        while name in used:  # same file name in two folders
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        title = f"{Path(path).name}: score {float(maps.scores[i]):.4g}" + ("" if labels is None else f" ({labels[i]})")
        save_heatmap_png(out / f"{name}.png", imgs.images[i], maps.fused[i], maps.per_scale[i], title,
                         scale_names=det.config_.backbone.taps, vrange=vrange)
    print(f"heat-maps: {len(imgs.paths)} PNG files in {out}", file=sys.stderr)


def cmd_threshold(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images

    _check_checkpoint_out(args, [("--normals", p) for p in args.normals or ()] + [("--labelled", args.labelled)])
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    load = lambda p: load_images(p, image_size=det.image_size_, channels=det.in_channels_).images  # noqa: E731
    given = [name for name in ("value", "normals", "labelled") if getattr(args, name) is not None]
    if len(given) > 1:
        raise DataError(f"give at most one of --value, --normals, --labelled (got {', '.join('--' + g for g in given)})")
    if args.value is not None:
        det.set_threshold(args.value)
    elif args.labelled is not None:
        root = Path(args.labelled)
        if not (root / "normal").is_dir() or not (root / "anomaly").is_dir():
            raise DataError(f"--labelled {root}: expected folders {root}/normal and {root}/anomaly")
        if args.fpr is not None:
            raise DataError("--fpr sets a threshold from normals only; with --labelled use --method f1 or recall")
        det.calibrate_threshold(load(root / "normal"), load(root / "anomaly"), method=args.method or "f1", recall=args.recall)
    else:
        if args.method not in (None, "fpr"):
            raise DataError(f"--method {args.method} needs labelled anomalies (--labelled DIR)")
        normals = None if args.normals is None else load(args.normals)
        det.calibrate_threshold(normals, fpr=args.fpr)
    out = args.out or args.checkpoint
    det.save(out, meta=det.meta_)
    print(f"{det.threshold_.describe()} -> {out}")
    return 0


def _evaluation_set(args: argparse.Namespace, det):
    """(images, is_anomaly, masks | None, names | None, description) for `anomem evaluate`."""
    from anomem.data.folder import load_folder

    spec = args.data
    if Path(spec).is_dir():
        if not (Path(spec) / "test").is_dir():
            raise DataError(f"{spec!r} has no test/ folder (expected test/normal, test/anomaly, optional test/masks)")
        test = load_folder(spec, "test", image_size=det.image_size_, channels=det.in_channels_)
        return test.images, test.anomaly, test.masks, list(test.paths), f"folder {spec} (test split)"
    if Path(spec).exists():
        raise DataError(f"{spec!r} is not a dataset folder with test/")
    from anomem.data.registry import load_dataset, validate_class_index

    if args.normal_class is None:
        raise DataError(f"--normal-class is required with the named dataset {spec!r}")
    from anomem.inputs import match_geometry

    test = load_dataset(spec, "test", root=args.data_root)
    cls = args.normal_class
    c = validate_class_index(test.class_names, int(cls) if cls.lstrip("-").isdigit() else cls)
    gen = torch.Generator().manual_seed(args.seed)
    if args.defects:
        from anomem.data.defects import add_defects

        normals = test.images[test.targets == c]
        if args.max_images is not None:
            normals = normals[torch.randperm(normals.shape[0], generator=gen)[: max(1, args.max_images // 2)]]
        normals = match_geometry(normals, det.in_channels_, det.image_size_)  # masks at the detector's size
        bad = add_defects(normals, seed=args.seed)
        if normals.dtype != torch.uint8:
            normals = (normals * 255).round().to(torch.uint8)
        images = torch.cat([normals, bad.images])
        is_anomaly = torch.cat([torch.zeros(normals.shape[0], dtype=torch.bool), torch.ones(normals.shape[0], dtype=torch.bool)])
        masks = torch.cat([torch.zeros_like(bad.masks), bad.masks])
        desc = (f"{spec} test split, class {c} ({test.class_names[c]}): {normals.shape[0]} normal images and the same "
                f"images with generated local defects (seed {args.seed})")
        return images, is_anomaly, masks, None, desc
    images, is_anomaly = test.images, test.targets != c
    if args.max_images is not None and args.max_images < images.shape[0]:
        keep = torch.randperm(images.shape[0], generator=gen)[: args.max_images].sort().values
        images, is_anomaly = images[keep], is_anomaly[keep]
    desc = f"{spec} test split, one-vs-all, normal class {c} ({test.class_names[c]})"
    return images, is_anomaly, None, None, desc


def cmd_evaluate(args: argparse.Namespace) -> int:
    from anomem.report import evaluate, write_report

    check_batch_size(args.batch_size, "--batch-size")
    check_seed("--seed", args.seed)
    if args.max_images is not None:
        check_int_range("--max-images", args.max_images, 2 if args.defects else 1, 10_000_000)
    check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint), ("--data", _existing(args.data)),
                                          ("--data-root", _existing(args.data_root))])
    check_claimable("--out", args.out, "evaluate", legacy=("report.html",))
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    images, is_anomaly, masks, names, desc = _evaluation_set(args, det)
    out = claim_output_dir("--out", args.out, "evaluate", legacy=("report.html",))
    ev = evaluate(det, images, is_anomaly, masks, names, batch_size=args.batch_size)
    details = {"checkpoint": str(args.checkpoint), "data": desc, "anomem": __version__,
               "threshold": "none" if det.threshold_ is None else det.threshold_.describe()}
    files = write_report(ev, images, out, title=args.title, details=details)
    shown = ", ".join(f"{k} {ev.metrics[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro") if k in ev.metrics)
    print(f"{desc}: {shown or 'no ranking metric (one class only)'}")
    for key in ("image_auroc", "pixel_auroc"):
        _warn_inverted(ev.metrics.get(key), key.replace("_", " "))
    print(f"report: {files.html} (and {files.markdown.name}, {files.metrics.name})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from anomem.export import export_scorer

    check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint)])
    check_file_target("--out", args.out, (args.format,))
    det = _load_detector(args.checkpoint, device="cpu")
    path = export_scorer(det, args.out, args.format, sigma=args.sigma)
    c, (h, w) = det.in_channels_, det.image_size_
    print(f"exported {args.format} scorer -> {path}: input 'image' float [0, 1] (B, {c}, {h}, {w}); "
          f"outputs 'score' (B,), 'fused_map' (B, {h}, {w})")
    return 0


def _check_checkpoint_out(args: argparse.Namespace, image_inputs: list[tuple[str, str | None]]) -> None:
    """refit/threshold rewrite the checkpoint in place by default; another --out may only
    replace a checkpoint, and never lands on or inside the images they read."""
    out = args.out or args.checkpoint
    inputs = list(image_inputs)
    elsewhere = args.out is not None and real(args.out) != real(args.checkpoint)
    if elsewhere:
        inputs.append(("checkpoint", args.checkpoint))
    check_outputs([("--out", out)], inputs)
    if elsewhere:  # in place, the input itself is replaced once it has loaded as a checkpoint
        check_file_target("--out", out, ("checkpoint",))


def cmd_refit(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images

    _check_checkpoint_out(args, [("--anomalies", p) for p in args.anomalies] + [("--normals", p) for p in args.normals or ()])
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    load = lambda p: load_images(p, image_size=det.image_size_, channels=det.in_channels_).images  # noqa: E731
    t0 = time.time()
    det.refit_scorer(load(args.anomalies), normals=None if args.normals is None else load(args.normals),
                     keep_previous=not args.replace)
    out = args.out or args.checkpoint
    det.save(out, meta=det.meta_)
    print(f"refitted stage 2 on {det.anomaly_bank_[0].shape[0]} anomalies in {time.time() - t0:.1f} s -> {out}")
    print(det.threshold_.describe() if det.threshold_ is not None
          else "no threshold stored (no held-out normals): set one with `anomem threshold`")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Protocol x classes x ratios x seeds, AnoMem beside every baseline; resumable."""
    from anomem.benchmark import GROUPS, BenchmarkSettings, run_benchmark

    check_int_range("--jobs", args.jobs, 1, 256)
    if args.threads is not None:
        check_int_range("--threads", args.threads, 1, 1024)
    check_int_range("--seeds", args.seeds, 1, 1000)
    if not (0.0 <= args.pollution < 1.0):  # NaN fails too
        raise DataError(f"--pollution (γ_p) must lie in [0, 1), got {args.pollution}")
    for name in ("max_train", "max_test"):
        if getattr(args, name) is not None:
            check_int_range("--" + name.replace("_", "-"), getattr(args, name), 1, 10_000_000)
    check_outputs([("--out", args.out)], [("--data-root", _existing(args.data_root))])
    # a results directory is new, empty, or one a benchmark wrote (its benchmark.json): resumed, never clobbered
    check_claimable("--out", args.out, "benchmark", legacy=("benchmark.json",))
    groups = tuple(GROUPS) if "all" in args.methods else tuple(dict.fromkeys(args.methods))
    overrides = tuple(args.set or ()) + ((f"train.epochs={args.epochs}",) if args.epochs is not None else ())
    check_config_limits(load_config(args.preset, None, list(overrides)))  # a bad --set fails now, not in a worker
    s = BenchmarkSettings(
        protocol=args.protocol, data=args.data, data_root=args.data_root, ood=args.ood,
        classes=tuple(args.classes), ratios=tuple(args.ratios), seeds=args.seeds, groups=groups,
        preset=args.preset, overrides=overrides, max_train=args.max_train, max_test=args.max_test,
        pollution=args.pollution,
    )
    t0 = time.time()
    out = run_benchmark(s, args.out, jobs=args.jobs, threads=args.threads, progress=args.progress)
    print((out / "results.md").read_text())
    print(f"benchmark finished in {time.time() - t0:.0f} s: {out / 'results.md'}, results.json, results.csv, plots")
    return 0


def cmd_linear_eval(args: argparse.Namespace) -> int:
    """Linear evaluation of a trained detector's frozen encoder on a labelled dataset."""
    from anomem.benchmark import linear_evaluation
    from anomem.data.registry import load_dataset

    check_seed("--seed", args.seed)
    if args.max_train is not None:
        check_int_range("--max-train", args.max_train, 1, 10_000_000)
    if args.out is not None:
        check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint), ("--data-root", _existing(args.data_root))])
        check_file_target("--out", args.out, ("text",))
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    train = load_dataset(args.data, "train", root=args.data_root)
    test = load_dataset(args.data, "test", root=args.data_root)
    t0 = time.time()
    acc = linear_evaluation(det, train, test, max_train=args.max_train, seed=args.seed)
    print(f"linear evaluation on {args.data} ({len(test)} test images, {time.time() - t0:.0f} s): "
          f"frozen encoder {100 * acc['encoder']:.1f}% accuracy, raw pixels {100 * acc['raw_pixels']:.1f}%")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps({"checkpoint": str(args.checkpoint), "data": args.data,
                                                      "max_train": args.max_train, "seed": args.seed, **acc}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """One-vs-all on scikit-learn's embedded digits: AnoMem vs raw-pixel kNN."""
    from anomem.baselines import make_baseline
    from anomem.data.registry import load_dataset
    from anomem.detector import AnoMem
    from anomem.protocols import one_vs_all

    check_claimable("--out", args.out, "demo", legacy=("demo.json",))
    # Settings chosen on a validation split of the digits training data (docs/method.md):
    # digits are not flip-invariant, and heavy crops erase what tells them apart.
    demo = ["backbone.width=16", "train.epochs=100", "train.batch_size=32", "memory.normalize=l2", "memory.beta=8",
            "augment.flip_p=0", "augment.crop_scale=[0.85,1]"]
    for c in args.classes:
        check_int_range("--classes", c, 0, 9)
    cfg = load_config("tiny", None, [*demo, f"train.seed={args.seed}", *(args.set or [])])
    check_config_limits(cfg)
    run = claim_output_dir("--out", args.out, "demo", legacy=("demo.json",))
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
    result = {"version": __version__, "git_commit": git_commit(), "seed": args.seed, "config": cfg.to_dict(), "rows": rows,
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
    s.add_argument("--maps", default=None, metavar="DIR",
                   help="also write one PNG per image: image, fused heat-map overlay, per-scale maps")
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
    ev.add_argument("--device", default=None)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export the scorer (image -> score, fused heat-map) to ONNX or TorchScript")
    ex.add_argument("checkpoint")
    ex.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--sigma", type=float, default=None, help="heat-map smoothing σ in pixels (default: the config's)")
    ex.set_defaults(func=cmd_export)

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

    d = sub.add_parser("demo", help="one-vs-all on the embedded scikit-learn digits, with a kNN baseline")
    # Three classes keep `make demo` (install included) under 5 minutes on 2 cores.
    d.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2],
                   help="normal classes to run in turn (default 0 1 2; 0..9 for all, ~30 s each)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)
    return ap


def one_line(e: BaseException) -> str:
    """An error message on one line (YAML and torch errors span several; the CLI promises one)."""
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip())


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
        print(f"anomem: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
