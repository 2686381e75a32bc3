"""Save and load :class:`~anomem.AnoMem` detectors, and mid-training checkpoints.

A detector file is one weights-only checkpoint (:mod:`anomem.io.checkpoint`: tensors,
strings and numbers, loaded without executing code) holding the config as JSON, the
network and scorer state dicts, the stage-2 banks, the calibration bank, the threshold,
the prototype cache, the training history and free-form metadata. Loading rebuilds the
modules from the config (:mod:`anomem.factory`) and refuses, with one clear line, a file
whose entries do not fit it, or whose content hash (:func:`anomem.io.checkpoint.content_hash`)
does not match. Saving validates the state with the loader's own checks first, so
``save()`` never writes a file that ``load()`` refuses (:func:`check_loadable`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomem._version import __version__
from anomem.config import AnoMemConfig, config_differences
from anomem.engine import EpochLog, Stage1Trainer, resolve_device
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError
from anomem.factory import build_net, build_scorer
from anomem.io.checkpoint import (
    git_commit,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
    verify_content_hash,
)
from anomem.io.migrate import migrate
from anomem.io.validate import (
    check_device,
    validate_detector_checkpoint,
    validate_training_checkpoint,
)
from anomem.model.prototypes import PrototypeCache
from anomem.stage2.fit import Stage2Banks, score_bank_from_state, score_bank_state
from anomem.thresholds import Threshold

if TYPE_CHECKING:  # pragma: no cover
    from anomem.detector import AnoMem

_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError)


def _cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().cpu() for t in tensors]


def base_state(det: AnoMem, net_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The entries every checkpoint of ``det`` holds: version, config, geometry, weights."""
    return {
        "library_version": __version__,
        "git_commit": git_commit(),
        "config": det.config_.to_json(),
        "seed": det.config_.train.seed,
        "in_channels": det.in_channels_,
        "image_size": list(det.image_size_),
        "net": {k: v.detach().cpu() for k, v in net_state.items()},
    }


def history_json(history: list[EpochLog]) -> str:
    return json.dumps([log.__dict__ for log in history])


def history_from_json(text: str) -> list[EpochLog]:
    """Stage-1 epoch logs as saved in a checkpoint's ``history`` entry."""
    return [EpochLog(**{**d, "retrieval_steps": tuple(d["retrieval_steps"])}) for d in json.loads(text)]


def stage1_checkpoint(det: AnoMem, trainer: Stage1Trainer) -> dict[str, Any]:
    """A resumable mid-training checkpoint dict (weights + trainer state)."""
    state = base_state(det, trainer.net.state_dict())
    state["trainer"] = trainer.state_dict()
    state["history"] = history_json(det.history_)
    return state


def restore_stage1(det: AnoMem, ckpt: dict[str, Any], trainer: Stage1Trainer) -> None:
    """Continue ``trainer`` from a :func:`stage1_checkpoint` made with the same config."""
    if "trainer" not in ckpt:
        raise CheckpointError("this checkpoint holds no training state to resume from")
    ckpt = migrate(ckpt)
    validate_training_checkpoint(ckpt, "the resume checkpoint")
    try:
        diff = config_differences(json.loads(ckpt["config"]), det.config_.to_dict())
        if diff:
            raise CheckpointError(f"cannot resume: the checkpoint was made with a different config ({', '.join(diff[:5])})")
        trainer.net.load_state_dict(ckpt["net"])
        trainer.load_state_dict(ckpt["trainer"])
        det.history_ = history_from_json(ckpt.get("history", "[]"))
    except AnoMemError:
        raise
    except _MALFORMED as e:
        raise CheckpointError(f"cannot resume: malformed training checkpoint: {type(e).__name__}: {e}") from None


def check_loadable(det: AnoMem, what: str = "this detector") -> dict[str, Any]:
    """The state :func:`save_detector` writes, checked as :func:`load_detector` will check
    it. Raises DataError naming the field (degenerate training data end here: all-black
    images blow memory patterns up past what a loader accepts)."""
    state = detector_state(det)
    try:
        validate_detector_checkpoint(state, "the fitted state")
    except CheckpointError as e:
        reason = str(e).split("is a malformed checkpoint: ", 1)[-1]
        raise DataError(f"{what} is not usable and would not load: {reason}; the training images are "
                        "degenerate (constant or nearly identical?) or training diverged") from None
    return state


def save_detector(det: AnoMem, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write a fitted detector to one file, atomically, once its state passed the loader's checks."""
    state = check_loadable(det, "the detector to save")
    state["meta"] = json.dumps(meta or {})
    save_checkpoint(state, path)


def detector_state(det: AnoMem) -> dict[str, Any]:
    """Every entry of a detector file (``meta`` empty), tensors on the CPU."""
    model = det.model_
    state = base_state(det, model.net.state_dict())
    state["scorer"] = {k: v.detach().cpu() for k, v in model.scorer.state_dict().items()}
    b = det.banks_
    state["normal_bank"], state["anomaly_bank"], state["pseudo_bank"] = _cpu(b.normal), _cpu(b.anomaly), _cpu(b.pseudo)
    state["normal_score_bank"] = b.normal_scores.cpu()
    state["calibration_bank"] = score_bank_state(det.calibration_bank_)
    state["threshold"] = "" if det.threshold_ is None else det.threshold_.to_json()
    cache = det.prototype_cache_
    state["prototype_cache"] = {} if cache is None else cache.to_state()
    state["history"] = history_json(det.history_)
    state["training_digests"] = {k: v.cpu() for k, v in (getattr(det, "training_digests_", None) or {}).items()}
    state["meta"] = "{}"
    return state


def load_detector(cls: type[AnoMem], path: str | Path, device: str = "cpu") -> AnoMem:
    """Read a file written by :func:`save_detector` (no code in it is executed).

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, from a newer format, or
            holds entries of the wrong kind (a clear message, never a traceback).
    """
    check_device(device)
    path = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(path, verify=False)
    if ckpt.get("format_version") == 1:  # its hash covers the format-1 fields: checked before they move
        verify_content_hash(ckpt, path)
        ckpt = migrate(ckpt)
    validate_detector_checkpoint(ckpt, path)  # every field checked before anything is built from it
    try:
        det = _from_checkpoint(cls, ckpt, path, device)
    except AnoMemError:
        raise
    except _MALFORMED as e:
        raise CheckpointError(f"{str(path)!r} is a malformed checkpoint: {type(e).__name__}: {e}") from None
    verify_content_hash(ckpt, path)  # last, so that a field's own error is the one reported
    return det


def _from_checkpoint(cls: type[AnoMem], ckpt: dict[str, Any], path: str | Path, device: str) -> AnoMem:
    if "scorer" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is a mid-training checkpoint; resume it with `anomem train --resume`")
    try:
        cfg = AnoMemConfig.from_dict(json.loads(ckpt["config"]))
    except (ConfigError, ValueError, KeyError) as e:
        raise CheckpointError(f"{str(path)!r} holds a config this version cannot read: {e}") from None
    det = cls(cfg, progress=False)
    det.config_ = cfg
    det.in_channels_ = int(ckpt["in_channels"])
    det.image_size_ = tuple(int(v) for v in ckpt["image_size"])
    det.device_ = resolve_device(device)
    net = build_net(cfg, det.in_channels_, det.image_size_)
    channels = net.backbone.tap_channels
    scorer = build_scorer(cfg, channels)
    state = ckpt["scorer"]
    try:
        net.load_state_dict(ckpt["net"])
        scorer.resize_like(state)
        scorer.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{str(path)!r}: weights do not match its config: {str(e).splitlines()[0]}") from None
    det.model_ = det.new_model(net, scorer).to(det.device_).eval()
    to = lambda ts: [t.to(det.device_) for t in ts]  # noqa: E731
    det.banks_ = Stage2Banks(to(ckpt["normal_bank"]), ckpt["normal_score_bank"].to(det.device_),
                             to(ckpt["anomaly_bank"]), to(ckpt["pseudo_bank"]))
    det.calibration_bank_ = score_bank_from_state(ckpt["calibration_bank"])
    det.threshold_ = Threshold.from_json(ckpt["threshold"]) if ckpt["threshold"] else None
    cache = ckpt["prototype_cache"] or None
    det.prototype_cache_ = None if cache is None else PrototypeCache.from_state(cache)
    det.history_ = history_from_json(ckpt["history"])
    det.meta_ = json.loads(ckpt["meta"])
    det.library_version_ = ckpt.get("library_version")
    det.training_digests_ = dict(ckpt["training_digests"])
    return det


__all__ = ["load_detector", "restore_stage1", "save_detector", "stage1_checkpoint"]
