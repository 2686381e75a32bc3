"""Every field of a checkpoint checked for type, shape, range and finiteness before use.

A checkpoint is a file someone may hand you. :func:`anomem.io.checkpoint.load_checkpoint`
makes sure it is plain data; this module makes sure that data can neither crash, stall
nor fool whoever uses it: NaN weights or scorer statistics would score every image
"normal", a bank of the wrong width would fail deep inside ``refit``, a zero standard
deviation would turn scores into inf, an image size of 10⁹ would allocate without end.

* :func:`validate_detector_checkpoint` — a fitted detector (``model.ckpt``), before
  ``AnoMem._from_checkpoint`` builds anything from it.
* :func:`validate_training_checkpoint` — a mid-training ``last.ckpt``, before resume.
* :func:`load_detector` — load + validate + build, what the CLI uses everywhere.
* :func:`check_device` — a device name the library can use (no ``meta``, no typos).

Every failure is a :class:`CheckpointError` of one line naming the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from anomem.config import AnoMemConfig
from anomem.errors import CheckpointError, ConfigError
from anomem.limits import check_config_limits
from anomem.stage2.pixel_bank import PixelBank
from anomem.stage2.scorer import Scorer
from anomem.stage2.state import StateError, tensor
from anomem.thresholds import Threshold

MAX_IMAGE_SIDE = 8192  # the largest (H, W) side a checkpoint may claim
MAX_SCALES = 16




def check_device(device: Any) -> str:
    """Refuse device names the library cannot compute on (``meta``, typos) with ConfigError."""
    if not isinstance(device, str) or not (
        device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d{1,3}", device)
    ):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device




def _tensor_dict(value: Any, field: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise StateError(f"{field} must be a mapping of tensors, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str):
            raise StateError(f"{field} has a non-string key {k!r}")
        tensor(v, f"{field}[{k!r}]")
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{field} must be an integer, got {value!r}"[:200])
    if not lo <= value <= hi:
        raise StateError(f"{field} must lie in [{lo}, {hi}], got {value}")
    return value


def _json(value: Any, field: str, kind: type) -> Any:
    if not isinstance(value, str):
        raise StateError(f"{field} must be a JSON string, got {type(value).__name__}")
    try:
        out = json.loads(value)
    except ValueError as e:
        raise StateError(f"{field} is not valid JSON: {e}") from None
    if not isinstance(out, kind):
        raise StateError(f"{field} must hold a JSON {kind.__name__}, got {type(out).__name__}")
    return out


def _history(value: Any, field: str = "history") -> None:
    for i, entry in enumerate(_json(value, field, list)):
        if not isinstance(entry, dict):
            raise StateError(f"{field}[{i}] must be a mapping")
        for k in ("epoch", "loss"):
            v = entry.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise StateError(f"{field}[{i}].{k} must be a finite number, got {v!r}"[:200])


def _common(ckpt: Mapping[str, Any]) -> None:
    """Fields both kinds of checkpoint share: geometry, config text, weights."""
    if not isinstance(ckpt.get("config"), str):
        raise StateError(f"config must be a JSON string, got {type(ckpt.get('config')).__name__}")
    try:
        cfg = AnoMemConfig.from_dict(json.loads(ckpt["config"]))
    except (ConfigError, ValueError, KeyError, TypeError):
        cfg = None  # reported by the loader as "holds a config this version cannot read"
    if cfg is not None:
        try:
            check_config_limits(cfg)
        except ConfigError as e:
            raise StateError(f"config: {e}") from None
    if ckpt.get("in_channels") not in (1, 3) or isinstance(ckpt.get("in_channels"), bool):
        raise StateError(f"in_channels must be 1 or 3, got {ckpt.get('in_channels')!r}"[:200])
    size = ckpt.get("image_size")
    if not isinstance(size, list | tuple) or len(size) != 2:
        raise StateError(f"image_size must be [H, W], got {size!r}"[:200])
    for i, v in enumerate(size):
        _int(v, f"image_size[{i}]", 1, MAX_IMAGE_SIDE)
    net = _tensor_dict(ckpt.get("net"), "net")
    for k, t in net.items():  # statistics a square root or a division is taken of
        if k.endswith("running_var") and t.is_floating_point() and bool((t < 0).any()):
            raise StateError(f"net[{k!r}] must be >= 0 (a variance)")
        if k.rsplit(".", 1)[-1].endswith("std") and t.is_floating_point() and not bool((t > 0).all()):
            raise StateError(f"net[{k!r}] must be > 0 (a standard deviation)")
    if "history" in ckpt:
        _history(ckpt["history"])


def _bank_list(value: Any, field: str, dims: list[int]) -> None:
    if not isinstance(value, list | tuple) or len(value) != len(dims):
        raise StateError(f"{field} must be a list of {len(dims)} tensors (one per scale), got "
                   f"{type(value).__name__} of length {len(value) if isinstance(value, list | tuple) else '-'}")
    rows = None
    for i, (t, d) in enumerate(zip(value, dims)):
        t = tensor(t, f"{field}[{i}]", ndim=2, floating=True)
        if t.shape[1] != d:
            raise StateError(f"{field}[{i}] must have {d} columns (the scorer's input width), got shape {tuple(t.shape)}")
        if rows is not None and t.shape[0] != rows:
            raise StateError(f"{field}: scales hold different numbers of images ({rows} and {t.shape[0]})")
        rows = t.shape[0]


def _pixel_grid(ckpt: Mapping[str, Any]) -> list[int]:
    """The pixel bank's (C, h, w) that the detector's input size and config give."""
    try:
        side = int(json.loads(ckpt["config"])["pixels"].get("side", 32))
    except (ValueError, TypeError, KeyError, AttributeError):
        side = 32  # an unreadable config is reported when the config is read
    return PixelBank.grid_for(ckpt["in_channels"], ckpt["image_size"], side)


def _scorer(ckpt: Mapping[str, Any]) -> list[int]:
    """The stage-2 state, each signal checking its own entries; each scale's pooled input width."""
    s = _tensor_dict(ckpt.get("scorer"), "scorer")
    return Scorer.check_state(s, _pixel_grid(ckpt), MAX_SCALES)


def _validate_detector(ckpt: Mapping[str, Any]) -> None:
    _common(ckpt)
    dims = _scorer(ckpt)
    n = len(dims)
    for field in ("normal_bank", "anomaly_bank"):
        _bank_list(ckpt.get(field), field, dims)
    if ckpt["normal_bank"][0].shape[0] < 1:
        raise StateError("normal_bank holds no images")
    _bank_list(ckpt.get("pseudo_bank"), "pseudo_bank", dims)
    t = tensor(ckpt.get("normal_score_bank"), "normal_score_bank", ndim=2, floating=True)
    if t.shape[1] != n:
        raise StateError(f"normal_score_bank must have {n} columns, got shape {tuple(t.shape)}")
    cal = ckpt.get("calibration_bank")
    if not isinstance(cal, Mapping):
        raise StateError(f"calibration_bank must be a mapping, got {type(cal).__name__}")
    if cal:
        raw = tensor(cal.get("raw"), "calibration_bank['raw']", ndim=2, floating=True)
        if raw.shape[1] != n:
            raise StateError(f"calibration_bank['raw'] must have {n} columns, got shape {tuple(raw.shape)}")
        _bank_list(cal.get("pooled"), "calibration_bank['pooled']", dims)
        if cal["pooled"][0].shape[0] != raw.shape[0]:
            raise StateError("calibration_bank: 'raw' and 'pooled' hold different numbers of images")
        for key in ("pixel_global", "pixel_local", "feature_patches", "pixel_patches"):
            v = tensor(cal.get(key), f"calibration_bank[{key!r}]", floating=True)
            if v.numel() and v.shape != (raw.shape[0],):
                raise StateError(f"calibration_bank[{key!r}] must be ({raw.shape[0]},) or empty, got {tuple(v.shape)}")
        pf = tensor(cal.get("pixel_features"), "calibration_bank['pixel_features']", floating=True)
        d = ckpt["scorer"]["pixels.bank"].shape[1]
        if pf.numel() and (pf.ndim != 2 or pf.shape[0] != raw.shape[0] or pf.shape[1] != d):
            raise StateError(f"calibration_bank['pixel_features'] must be ({raw.shape[0]}, {d}) (the pixel bank's "
                       f"width) or empty, got {tuple(pf.shape)}")
        b = tensor(cal.get("bank"), "calibration_bank['bank']", ndim=2, floating=True)  # (N, 0): no bank
        if b.shape[0] != raw.shape[0] or b.shape[1] not in (0, n):
            raise StateError(f"calibration_bank['bank'] must be ({raw.shape[0]}, 0 or {n}), got {tuple(b.shape)}")
    th = ckpt.get("threshold", "")
    if not isinstance(th, str):
        raise StateError(f"threshold must be a JSON string, got {type(th).__name__}")
    if th:
        try:
            Threshold(**_json(th, "threshold", dict))
        except (TypeError, ValueError) as e:  # ConfigError is a ValueError
            raise StateError(f"threshold is not a valid threshold: {e}") from None
    cache = ckpt.get("prototype_cache")
    if cache:
        if not isinstance(cache, Mapping):
            raise StateError("prototype_cache must be a mapping")
        for key in ("patches", "similarity", "source"):
            if not isinstance(cache.get(key), list | tuple) or len(cache[key]) != n:
                raise StateError(f"prototype_cache[{key!r}] must be a list of {n} tensors")
        for i in range(n):
            p = tensor(cache["patches"][i], f"prototype_cache['patches'][{i}]", ndim=4)
            sim = tensor(cache["similarity"][i], f"prototype_cache['similarity'][{i}]", ndim=1)
            src = tensor(cache["source"][i], f"prototype_cache['source'][{i}]", ndim=2)
            if p.dtype != torch.uint8 or p.shape[1] != ckpt["in_channels"]:
                raise StateError(f"prototype_cache['patches'][{i}] must be uint8 with {ckpt['in_channels']} channels")
            if sim.shape[0] != p.shape[0] or src.shape != (p.shape[0], 3) or src.is_floating_point():
                raise StateError(f"prototype_cache scale {i}: patches, similarity and source do not match")
    _json(ckpt.get("meta"), "meta", dict)
    digests = ckpt.get("training_digests")
    if not isinstance(digests, Mapping) or not set(digests) <= {"normal", "anomaly"}:  # {} in migrated files
        raise StateError("training_digests must be a mapping with 'normal' and 'anomaly'")
    for key, t in digests.items():
        if tensor(t, f"training_digests[{key!r}]", ndim=1).dtype != torch.int64:
            raise StateError(f"training_digests[{key!r}] must be int64, got {t.dtype}")


def _matrix_list(value: Any, field: str) -> None:
    if not isinstance(value, list | tuple):
        raise StateError(f"{field} must be a list of tensors (one per scale), got {type(value).__name__}")
    for i, t in enumerate(value):
        tensor(t, f"{field}[{i}]", ndim=2, floating=True)


def _old_fields(ckpt: Mapping[str, Any]) -> None:
    """What the migration reads of a format-1 or format-2 file, checked before it runs."""
    if not isinstance(ckpt.get("config"), str):
        raise StateError(f"config must be a JSON string, got {type(ckpt.get('config')).__name__}")
    _json(ckpt["config"], "config", dict)
    if "scorer" not in ckpt:
        return  # a mid-training checkpoint: only its config is migrated
    scorer = _tensor_dict(ckpt["scorer"], "scorer")
    for key, t in scorer.items():  # the feature bank's rows give the scales' widths to the migration
        if re.fullmatch(r"bank\d+|bank\.rows\d+", key) and t.ndim != 2:
            raise StateError(f"scorer[{key!r}] must have 2 dimensions, got shape {tuple(t.shape)}")
    for field in ("normal_bank", "anomaly_bank", "pseudo_bank"):
        if field in ckpt:
            _matrix_list(ckpt[field], field)
    cal = ckpt.get("calibration_bank")
    if cal is not None and not isinstance(cal, Mapping):
        raise StateError("calibration_bank must be a mapping")
    if cal:
        tensor(cal.get("raw"), "calibration_bank['raw']", ndim=2, floating=True)
        _matrix_list(cal.get("pooled"), "calibration_bank['pooled']")
        for key in ("bank", "pixel", "patches", "pixel_features"):  # format 1 held columns in matrices
            if cal.get(key) is not None and ckpt.get("format_version") == 1:
                tensor(cal[key], f"calibration_bank[{key!r}]", floating=True)
        for key, v in cal.items():
            if isinstance(v, torch.Tensor):
                tensor(v, f"calibration_bank[{key!r}]")


def validate_old_format(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """Raise CheckpointError unless the fields of a format-1 or format-2 ``ckpt`` that its
    migration reads are of the right kind (checked before it runs; the whole migrated
    file is then checked as a current one is)."""
    try:
        _old_fields(ckpt)
    except StateError as e:
        raise CheckpointError(f"{str(path)!r} is a malformed checkpoint: {e}") from None


def validate_detector_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """Raise CheckpointError unless ``ckpt`` (a fitted detector) is well-formed and finite.

    Call it between :func:`load_checkpoint` and ``AnoMem._from_checkpoint``.
    """
    if "scorer" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is a mid-training checkpoint; resume it with `anomem train --resume`")
    try:
        _validate_detector(ckpt)
    except StateError as e:
        raise CheckpointError(f"{str(path)!r} is a malformed checkpoint: {e}") from None


def validate_training_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """Raise CheckpointError unless a mid-training ``last.ckpt`` is well-formed and finite."""
    try:
        _common(ckpt)
        trainer = ckpt.get("trainer")
        if not isinstance(trainer, Mapping):
            raise StateError("trainer must be a mapping (the training state)")
        _int(trainer.get("epoch"), "trainer['epoch']", 0, 10**7)
        rng = tensor(trainer.get("rng_cpu"), "trainer['rng_cpu']", ndim=1)
        if rng.dtype != torch.uint8:
            raise StateError(f"trainer['rng_cpu'] must be uint8, got {rng.dtype}")
        opt = trainer.get("optimizer")
        if not isinstance(opt, Mapping) or not isinstance(opt.get("state"), Mapping):
            raise StateError("trainer['optimizer'] must hold the optimizer state")
        for k, st in opt["state"].items():
            if isinstance(st, Mapping):
                for name, t in st.items():
                    if isinstance(t, torch.Tensor):
                        tensor(t, f"trainer['optimizer'] state {k} {name}")
    except StateError as e:
        raise CheckpointError(f"cannot resume: {str(path)!r} is a malformed training checkpoint: {e}") from None
