"""``anomem train``: a run directory owned by one process, resumable, checked before it is written."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from anomem import __version__
from anomem.cli.common import (
    TrainData,
    _auroc,
    _check_data_spec,
    _prepare_run_dir,
    _setup_log,
    _warn_inverted,
    _write_scores,
    folder_layout,
    load_train_data,
    log,
    progress_mode,
)
from anomem.cli.flags import FOLDER_LAYOUT
from anomem.config import AnoMemConfig, config_differences, load_config, resolve_local_recipe
from anomem.errors import CheckpointError, ConfigError, DataError
from anomem.inputs import training_set, validation_set
from anomem.io.checkpoint import (
    atomic_write_text,
    git_commit,
    load_checkpoint,
    loads_json,
    save_checkpoint,
    verify_content_hash,
)
from anomem.io.outputs import (
    RunLock,
    check_new_run_dir,
    check_outputs,
)
from anomem.io.validate import validate_training_checkpoint
from anomem.limits import check_config_limits


def _existing(path: str | None) -> str | None:
    return path if path is not None and Path(path).exists() else None


def _train_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """What `anomem train` reads: the dataset folder or data root, and the config file."""
    return [("--data", _existing(args.data)), ("--data-root", _existing(getattr(args, "data_root", None))),
            ("--config", _existing(getattr(args, "config", None))),
            *(("--val-normals", _existing(p)) for p in getattr(args, "val_normals", None) or ())]


def _validation_normals(args: argparse.Namespace, checked: torch.Tensor) -> torch.Tensor | None:
    """``--val-normals``, read at the training images' channels and size and checked
    against them (:func:`anomem.inputs.validation_set`) before anything is written."""
    paths = getattr(args, "val_normals", None)
    if not paths:
        return None
    from anomem.data.folder import load_images

    images = load_images(paths, image_size=tuple(checked.shape[-2:]), channels=int(checked.shape[1])).images
    return validation_set(images, checked)


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
    "normal_dir": (str, type(None)), "abnormal_dir": (list, type(None)), "mask_dir": (str, type(None)),
    "normal_split_ratio": (int, float, type(None)), "normal_test_dir": (str, type(None)),
    "val_normals": (list, type(None)),
}


def _load_saved_args(run: Path) -> dict[str, Any]:
    """RUN_DIR/args.json, every entry resume uses checked for type and range."""
    path = run / "args.json"
    try:
        saved = loads_json(path.read_text(encoding="utf-8")) if path.is_file() else None
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
    if saved.get("val_normals"):
        saved["val_normals"] = [str(Path(v).resolve()) if Path(v).exists() else v for v in saved["val_normals"]]
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
        written = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise DataError(f"cannot resume: {str(path)!r} is unreadable: {e}") from None
    diff = config_differences(written, cfg.to_dict()) if isinstance(written, dict) else ["(not a mapping)"]
    if diff:
        raise DataError(f"cannot resume: last.ckpt was made with a config that differs from {str(path)!r} "
                        f"in {', '.join(diff[:5])}; restore config.json or start a new run")


def _split_record(args: argparse.Namespace) -> dict[str, Any]:
    """``{"split": ...}``: the dataset folder and the layout that split it (or the named
    dataset and its normal class), so that `anomem evaluate` tests on the same split."""
    if not Path(args.data).is_dir():  # a named dataset: its one-vs-all normal class
        return {"split": {"data": args.data, "normal_class": args.normal_class, "ratio": args.ratio}}
    layout = folder_layout(args)
    split = {key: getattr(layout, key) for key in FOLDER_LAYOUT}
    split["abnormal_dir"] = list(layout.abnormal_dirs)
    return {"split": {"data": str(Path(args.data).resolve()), **split}}


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
        state = load_checkpoint(last, verify=False)  # the hash is checked once the fields are
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
        verify_content_hash(state, last, prefix="cannot resume: ")
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
    size = getattr(args, "image_size", None)
    if size is not None and not (8 <= size <= 4096):
        raise ConfigError(f"--image-size must lie in [8, 4096] pixels, got {size}")
    data = load_train_data(args, image_size=size)
    checked, _ = training_set(data.normals, data.anomalies, None)  # degenerate data refused before anything is written
    data.validation = _validation_normals(args, checked)
    # the recipe read against the image size now, so config.json, the checkpoint and a resume all hold the same values
    cfg = resolve_local_recipe(cfg, checked.shape[-2:])
    del checked
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

    # A bar in a terminal; elsewhere (a log file, CI) one plain line per epoch on stderr.
    bar, lines = progress_mode(args.progress and is_main_process())

    def on_epoch_end(det: AnoMem, trainer, entry) -> None:
        log.info("epoch %d loss %.4f (com %.4f var %.4f) lr %.4f %.0f img/s", entry.epoch, entry.loss,
                 entry.contrastive, entry.variance, entry.lr, entry.images_per_s)
        if lines:
            print(f"epoch {entry.epoch}/{trainer.epochs} loss {entry.loss:.4f} (com {entry.contrastive:.4f} "
                  f"var {entry.variance:.4f}) lr {entry.lr:.4g} {entry.images_per_s:.0f} img/s", file=sys.stderr, flush=True)
        if is_main_process():
            save_checkpoint(det.stage1_checkpoint(trainer), run / "last.ckpt")

    t0 = time.time()
    det = AnoMem(cfg, progress=bar).fit(
        data.normals, data.anomalies, validation=data.validation, on_epoch_end=on_epoch_end, resume=state
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
        _write_scores(run / "test_scores.csv", data.test_paths, scores, det.threshold_, truth=data.test_is_anomaly)
    det.save(run / "model.ckpt", meta={"metrics": metrics, "config": cfg.to_dict(), **_split_record(args)})
    atomic_write_text(run / "metrics.json", json.dumps(metrics, indent=2))
    log.info("done: %s", json.dumps(metrics))
    auc = metrics.get("test_auroc")
    print(f"trained in {train_s:.1f} s" + (f"; test AUROC {auc:.4f}" if auc is not None else ""))
    _warn_inverted(auc, "test AUROC")
    print(f"run directory: {run}  (model: {run / 'model.ckpt'})")
    return 0
