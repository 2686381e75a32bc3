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
from typing import Any

import torch

from anomem._version import __version__
from anomem.config import AnoMemConfig, config_differences
from anomem.engine import EpochLog, Stage1Trainer, resolve_device
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError
from anomem.factory import build_net, build_scorer
from anomem.fit.fusion import FusionFit
from anomem.fit.stage2 import Stage2Banks, score_bank_from_state, score_bank_state
from anomem.io.checkpoint import (
    FORMAT_VERSION,
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
    validate_old_format,
    validate_training_checkpoint,
)
from anomem.model.backbone import WeightsReport
from anomem.model.prototypes import PrototypeCache
from anomem.thresholds import Threshold

_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError)


def _cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().cpu() for t in tensors]


def history_json(history: list[EpochLog]) -> str:
    return json.dumps([log.__dict__ for log in history])


def history_from_json(text: str) -> list[EpochLog]:
    """Stage-1 epoch logs as saved in a checkpoint's ``history`` entry."""
    return [EpochLog(**{**d, "retrieval_steps": tuple(d["retrieval_steps"])}) for d in json.loads(text)]


def read_detector_file(path: str | Path) -> tuple[dict[str, Any], Path, bool]:
    """A detector file's entries in the current format, every field checked, its path, and
    whether its content hash is still to be checked. An older format's hash is checked
    before it is migrated (:func:`anomem.io.migrate.migrate`); the current one's is left
    to the caller, after the entries were built, so that a field's own error is the one
    reported. Raises CheckpointError with one line."""
    path = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(path, verify=False)
    current = ckpt.get("format_version") == FORMAT_VERSION
    if not current:
        verify_content_hash(ckpt, path)
        validate_old_format(ckpt, path)
        ckpt = migrate(ckpt)
    validate_detector_checkpoint(ckpt, path)
    return ckpt, path, current


class PersistenceMixin:
    """The estimator's own state as checkpoint entries, and back (:class:`anomem.AnoMem`
    inherits it): :meth:`state_entries` / :meth:`set_state` are the only places that
    read or write its attributes for a file; :meth:`save` / :meth:`load` add the file."""

    def base_entries(self, net_state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The entries every checkpoint holds: version, config, geometry, network weights."""
        return {"library_version": __version__, "git_commit": git_commit(), "config": self.config_.to_json(),
                "seed": self.config_.train.seed, "in_channels": self.in_channels_, "image_size": list(self.image_size_),
                "net": {k: v.detach().cpu() for k, v in net_state.items()}}

    def state_entries(self) -> dict[str, Any]:
        """Every entry of a detector file, tensors on the CPU."""
        model = self.model_
        state = self.base_entries(model.net.state_dict())
        state["scorer"] = {k: v.detach().cpu() for k, v in model.scorer.state_dict().items()}
        b = self.banks_
        state["normal_bank"], state["anomaly_bank"], state["pseudo_bank"] = _cpu(b.normal), _cpu(b.anomaly), _cpu(b.pseudo)
        state["normal_score_bank"] = b.normal_scores.cpu()
        state["calibration_bank"] = score_bank_state(self.calibration_bank_)
        state["threshold"] = "" if self.threshold_ is None else self.threshold_.to_json()
        cache = self.prototype_cache_
        state["prototype_cache"] = {} if cache is None else cache.to_state()
        state["history"] = history_json(self.history_)
        state["training_digests"] = {k: v.cpu() for k, v in self.training_digests_.items()}
        state["fusion"] = "" if self.fusion_ is None else self.fusion_.to_json()
        state["backbone_weights"] = "" if self.backbone_weights_ is None else json.dumps(self.backbone_weights_._asdict())
        state["meta"] = json.dumps(self.meta_)
        return state

    def set_state(self, ckpt: dict[str, Any], path: str | Path, device: str) -> None:
        """Build the detector from a validated, current-format checkpoint."""
        if "scorer" not in ckpt:
            raise CheckpointError(f"{str(path)!r} is a mid-training checkpoint; resume it with `anomem train --resume`")
        try:
            cfg = AnoMemConfig.from_dict(json.loads(ckpt["config"]))
        except (ConfigError, ValueError, KeyError) as e:
            raise CheckpointError(f"{str(path)!r} holds a config this version cannot read: {e}") from None
        self.config_, self.in_channels_ = cfg, int(ckpt["in_channels"])
        self.image_size_ = tuple(int(v) for v in ckpt["image_size"])
        self.device_ = resolve_device(device)
        net = build_net(cfg, self.in_channels_, self.image_size_)
        scorer = build_scorer(cfg, net.backbone.tap_channels)
        try:
            net.load_state_dict(ckpt["net"])
            scorer.resize_like(ckpt["scorer"])
            scorer.load_state_dict(ckpt["scorer"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"{str(path)!r}: weights do not match its config: {str(e).splitlines()[0]}") from None
        self.model_ = self.new_model(net, scorer).to(self.device_).eval()
        to = lambda ts: [t.to(self.device_) for t in ts]  # noqa: E731
        self.banks_ = Stage2Banks(to(ckpt["normal_bank"]), ckpt["normal_score_bank"].to(self.device_),
                                  to(ckpt["anomaly_bank"]), to(ckpt["pseudo_bank"]))
        self.calibration_bank_ = score_bank_from_state(ckpt["calibration_bank"])
        self.threshold_ = Threshold.from_json(ckpt["threshold"]) if ckpt["threshold"] else None
        cache = ckpt["prototype_cache"] or None
        self.prototype_cache_ = None if cache is None else PrototypeCache.from_state(cache)
        self.history_ = history_from_json(ckpt["history"])
        self.fusion_ = FusionFit.from_json(ckpt["fusion"]) if ckpt["fusion"] else None
        report = ckpt["backbone_weights"]
        self.backbone_weights_ = WeightsReport(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in json.loads(report).items()}) if report else None
        self.meta_ = json.loads(ckpt["meta"])
        self.library_version_ = ckpt.get("library_version")
        self.training_digests_ = dict(ckpt["training_digests"])

    def check_loadable(self, what: str = "this detector") -> dict[str, Any]:
        """The state :meth:`save` writes, checked as :meth:`load` will check it. Raises
        DataError naming the field (degenerate training data end here: all-black images
        blow memory patterns up past what a loader accepts)."""
        state = self.state_entries()
        try:
            validate_detector_checkpoint(state, "the fitted state")
        except CheckpointError as e:
            reason = str(e).split("is a malformed checkpoint: ", 1)[-1]
            raise DataError(f"{what} is not usable and would not load: {reason}; the training images are "
                            "degenerate (constant or nearly identical?) or training diverged") from None
        return state

    def save(self, path: str | Path, meta: dict[str, Any] | None = None) -> None:
        """Write the fitted detector to one file, atomically, once its state passed the
        loader's checks; ``meta`` (free-form JSON) replaces :attr:`meta_` in the file."""
        self.check_fitted()
        state = self.check_loadable("the detector to save")
        state["meta"] = json.dumps(self.meta_ if meta is None else meta)
        save_checkpoint(state, path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu"):
        """Load a detector saved by :meth:`save` (no code in the file is executed).

        Raises:
            CheckpointError: the file is missing, corrupt, unsafe, from a newer format,
                or holds entries of the wrong kind (a clear message, never a traceback).
        """
        check_device(device)
        ckpt, path, unverified = read_detector_file(path)
        det = cls(progress=False)
        try:
            det.set_state(ckpt, path, device)
        except AnoMemError:
            raise
        except _MALFORMED as e:
            raise CheckpointError(f"{str(path)!r} is a malformed checkpoint: {type(e).__name__}: {e}") from None
        if unverified:
            verify_content_hash(ckpt, path)
        det.config = det.config_
        return det

    # -- mid-training checkpoints ------------------------------------------------------
    def stage1_checkpoint(self, trainer: Stage1Trainer) -> dict[str, Any]:
        """A resumable mid-training checkpoint dict (weights + trainer state)."""
        state = self.base_entries(trainer.net.state_dict())
        state["trainer"] = trainer.state_dict()
        state["history"] = history_json(self.history_)
        return state

    def restore_stage1(self, ckpt: dict[str, Any], trainer: Stage1Trainer) -> None:
        """Continue ``trainer`` from a :meth:`stage1_checkpoint` made with the same config."""
        if "trainer" not in ckpt:
            raise CheckpointError("this checkpoint holds no training state to resume from")
        ckpt = migrate(ckpt)
        validate_training_checkpoint(ckpt, "the resume checkpoint")
        try:
            diff = config_differences(json.loads(ckpt["config"]), self.config_.to_dict())
            if diff:
                raise CheckpointError(f"cannot resume: the checkpoint was made with a different config ({', '.join(diff[:5])})")
            trainer.net.load_state_dict(ckpt["net"])
            trainer.load_state_dict(ckpt["trainer"])
            self.history_ = history_from_json(ckpt.get("history", "[]"))
        except AnoMemError:
            raise
        except _MALFORMED as e:
            raise CheckpointError(f"cannot resume: malformed training checkpoint: {type(e).__name__}: {e}") from None


__all__ = ["PersistenceMixin", "history_from_json", "history_json", "read_detector_file"]
