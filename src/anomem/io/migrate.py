"""Checkpoint formats: what changed, and the one explicit migration of older files.

* Format 1: stage 2 was one module with flat buffer names (``score_mean``, ``bank0``,
  ``pixels.global_mean``, ``fusion``...), the fusion's other weights lived only in the
  config, whose ``scorer`` section held 25 fields, and entries added over time
  (pixel bank, contrast, patch banks, pseudo bank, calibration bank...) were absent
  from older files.
* Format 2: one module per signal (:mod:`anomem.stage2`), each with its own entries
  under its name (``memory.score.mean``, ``bank.rows0``, ``pixels.global_z.mean``,
  ``weights.image``...); every fusion weight is state (``weights.*``); the config has
  the sections of :mod:`anomem.config.legacy`; the calibration bank's parts are named;
  every entry is present.

:func:`migrate` turns a format-1 dict into format 2 once, after its content hash was
checked, so nothing past the loader ever looks at which keys a file holds. A file's
scores do not change: the migrated state scores as format 1 did (a test holds two
small format-1 files and their scores, tests/fixtures).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from anomem.config import AnoMemConfig
from anomem.config.legacy import upgrade
from anomem.errors import ConfigError

# format-1 scorer entry -> format-2 entry, by pattern
RENAMES = [
    (r"scale_weights", r"weights.scales"),
    (r"score_(mean|std)", r"memory.score.\1"),
    (r"map_(mean|std)", r"memory.map.\1"),
    (r"head_(mean|std)", r"heads.z.\1"),
    (r"supervised", r"heads.trained"),
    (r"bank_(mean|std)", r"bank.z.\1"),
    (r"bank(\d+)", r"bank.rows\1"),
    (r"heads\.(\d+)\.in_(mean|std)", r"heads.nets.\1.inputs.\2"),
    (r"heads\.(\d+)\.(mlp\..+)", r"heads.nets.\1.\2"),
    (r"pixels\.(global|map|local)_(mean|std)", r"pixels.\1_z.\2"),
    (r"pixels\.anomalies", r"contrast.anomalies"),
    (r"pixels\.contrast_(mean|std)", r"contrast.z.\1"),
    (r"patches\.(\w+)\.(map|score)_(mean|std)", r"patches.\1.\2_z.\3"),
    (r"fusion", r"weights.image"),
    (r"map_fusion", r"weights.map"),
]


def _rename(key: str) -> str:
    for old, new in RENAMES:
        if re.fullmatch(old, key):
            return re.sub(old, new, key)
    return key


def _scorer_v2(old: dict[str, Any], cfg: AnoMemConfig | None) -> dict[str, Any]:
    """A format-1 scorer state in format 2; entries it lacks come from a fresh scorer."""
    new = {_rename(k): v for k, v in old.items()}
    if cfg is None:
        return new  # an unreadable config: the validator names the problem
    from anomem.factory import build_scorer

    scales = 0
    while f"bank.rows{scales}" in new:
        scales += 1
    channels = tuple(int(new[f"bank.rows{i}"].shape[1]) for i in range(scales))
    if not channels:
        return new
    fresh = build_scorer(cfg, channels).state_dict()
    if cfg.scorer.merge == "weighted":  # format 1 read raw Eq. 9 and head scores under this merge
        for stat in ("memory.score", "heads.z"):
            new[f"{stat}.mean"], new[f"{stat}.std"] = fresh[f"{stat}.mean"], fresh[f"{stat}.std"]
    for name in ("bank", "pixel_global", "pixel_local", "contrast", "map_pixel"):
        new[f"weights.{name}"] = fresh[f"weights.{name}"]  # format 1 read them from the config
    return {**fresh, **new}


def _calibration_v2(cal: dict[str, Any]) -> dict[str, Any]:
    """The format-1 calibration bank with its pixel and patch columns named."""
    if not cal:
        return {}
    n = cal["raw"].shape[0]
    col = lambda t, i: t[:, i].contiguous() if t is not None and t.ndim == 2 and t.shape[1] > i else torch.zeros(0)  # noqa: E731
    pixel, patches = cal.get("pixel"), cal.get("patches")
    return {"raw": cal["raw"], "pooled": cal["pooled"], "bank": cal.get("bank", torch.zeros(n, 0)),
            "pixel_global": col(pixel, 0), "pixel_local": col(pixel, 1),
            "feature_patches": col(patches, 0), "pixel_patches": col(patches, 1),
            "pixel_features": cal.get("pixel_features", torch.zeros(0))}


def migrate(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` in the current format (2): format-1 dicts are migrated, others returned as is.
    Works on detector files and mid-training checkpoints alike."""
    if ckpt.get("format_version") != 1:
        return ckpt
    out = dict(ckpt)
    out["format_version"] = 2
    cfg = None
    try:
        d = upgrade(json.loads(ckpt["config"]))
        out["config"] = json.dumps(d, sort_keys=True)
        cfg = AnoMemConfig.from_dict(d)
    except (ConfigError, ValueError, KeyError, TypeError):
        pass  # left for the validator, which names what is wrong
    if not isinstance(ckpt.get("scorer"), dict):
        return out  # a mid-training checkpoint: its config was all that changed
    out["scorer"] = _scorer_v2(ckpt["scorer"], cfg)
    anomaly = ckpt.get("anomaly_bank") or []
    out.setdefault("pseudo_bank", [a[:0].clone() for a in anomaly])
    out.setdefault("normal_score_bank", torch.zeros(0, len(anomaly)))
    out["calibration_bank"] = _calibration_v2(ckpt.get("calibration_bank") or {})
    for key, empty in (("threshold", ""), ("history", "[]"), ("meta", "{}")):
        out.setdefault(key, empty)
    for key in ("prototype_cache", "training_digests"):
        out[key] = ckpt.get(key) or {}
    return out


__all__ = ["RENAMES", "migrate"]
