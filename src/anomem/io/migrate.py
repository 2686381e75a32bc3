"""Checkpoint formats: what changed, and the one explicit migration of older files.

* Format 1: stage 2 was one module with flat buffer names (``score_mean``, ``bank0``,
  ``pixels.global_mean``, ``fusion``...), the fusion's other weights lived only in the
  config, whose ``scorer`` section held 25 fields, and entries added over time
  (pixel bank, contrast, patch banks, pseudo bank, calibration bank...) were absent
  from older files.
* Format 2: one module per signal (:mod:`anomem.stage2`), each with its own entries
  under its name (``memory.score.mean``, ``bank.rows0``, ``pixels.global_z.mean``...);
  the fusion's eight nested weights as state (``weights.scales``, ``weights.image``...);
  the patch banks under ``patches.feature`` / ``patches.pixel``.
* Format 3: the score is linear: one flat weight per named part (``weights.values``, in
  :func:`anomem.stage2.weights.part_names` order), the patch banks under their part
  names (``feature_patches``, ``pixel_patches``), the config's fusion settings in its
  ``weights`` section, and the fit's record (``fusion``, ``backbone_weights``) saved.

:func:`migrate` brings an older dict to format 3 once, after its content hash was
checked, so nothing past the loader ever looks at which keys a file holds. A file's
scores do not change: format 2's nested formula multiplied out is format 3's weights
(:func:`anomem.stage2.weights.compose`); tests/fixtures holds files of formats 1 and 2
with what the code that wrote them scored (tests/io/test_migration.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from anomem.config import AnoMemConfig
from anomem.config.legacy import upgrade
from anomem.errors import ConfigError
from anomem.io.checkpoint import FORMAT_VERSION
from anomem.stage2.weights import LOCAL, compose, part_names

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
    """A format-1 scorer state in format 2's names; the weights format 1 read from the
    config become entries, the image and map splits it lacked are the global score's."""
    new = {_rename(k): v for k, v in old.items()}
    if cfg is None:
        return new  # an unreadable config: the validator names the problem
    if cfg.scorer.merge == "weighted":  # format 1 read raw Eq. 9 and head scores under this merge
        n = len(cfg.backbone.taps)
        for stat in ("memory.score", "heads.z"):
            new[f"{stat}.mean"], new[f"{stat}.std"] = torch.zeros(n), torch.ones(n)
    w = cfg.weights
    for name in ("bank", "pixel_global", "pixel_local", "contrast", "map_pixel"):
        new[f"weights.{name}"] = torch.tensor(float(getattr(w, name)))  # format 1 read them from the config
    for name in ("image", "map"):
        new.setdefault(f"weights.{name}", torch.tensor([1.0, 0.0, 0.0]))
    return new


def _rows(state: dict[str, Any], key: str) -> int:
    t = state.get(key)
    return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.ndim >= 1 else 0


def _scorer_v3(old: dict[str, Any], cfg: AnoMemConfig | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A format-2 scorer state in format 3 (the nested weights multiplied out into flat
    ones), and the settings it held (for the config's ``weights`` section)."""
    new = {re.sub(r"^patches\.(feature|pixel)\.", r"\1_patches.", k): v for k, v in old.items()
           if not k.startswith("weights.")}
    scales = old.get("weights.scales")
    if cfg is None or not isinstance(scales, torch.Tensor) or scales.ndim != 1 or not scales.numel():
        return new, {}  # left for the validator, which names what is missing
    n = int(scales.numel())
    settings = {k[len("weights."):]: v.tolist() for k, v in old.items() if k.startswith("weights.")}
    trained = old.get("heads.trained")
    heads = bool(trained) if isinstance(trained, torch.Tensor) and trained.numel() == 1 else False
    heads = heads and cfg.scorer.mode != "one-class"
    readable = {f"memory.{s}" for s in range(n)} | ({f"heads.{s}" for s in range(n)} if heads else set())
    readable |= {f"bank.{s}" for s in range(n)} if _rows(new, "bank.rows0") > 1 else set()
    pixels = _rows(new, "pixels.bank") > 1
    readable |= {"pixel_global", "pixel_local"} if pixels else set()
    anomalies, bank = new.get("contrast.anomalies"), new.get("pixels.bank")
    if heads and pixels and _rows(new, "contrast.anomalies") and anomalies.shape[-1] == bank.shape[-1]:
        readable.add("contrast")
    image, maps = settings.get("image", [1.0, 0.0, 0.0]), settings.get("map", [1.0, 0.0, 0.0])
    for i, part in enumerate(LOCAL, 1):  # format 2 read a patch bank only when a split weighed it
        if _rows(new, f"{part}.bank") and max(image[i], maps[i]) > 0:
            readable.add(part)
    try:
        flat = compose(settings, readable, n, heads)
    except ValueError:
        return new, {}  # refused settings: the validator names the missing weights entry
    new["weights.values"] = torch.tensor([flat[k] for k in part_names(n)])
    return new, {k: v for k, v in settings.items() if k not in ("image", "map")}


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
    """``ckpt`` in the current format (3): older dicts are migrated, others returned as is.
    Works on detector files and mid-training checkpoints alike."""
    version = ckpt.get("format_version")
    if version not in (1, 2) or isinstance(version, bool):
        return ckpt
    out = dict(ckpt)
    out["format_version"] = FORMAT_VERSION
    cfg, d = None, None
    try:
        d = upgrade(json.loads(ckpt["config"]))
        out["config"] = json.dumps(d, sort_keys=True)
        cfg = AnoMemConfig.from_dict(d)
    except (ConfigError, ValueError, KeyError, TypeError):
        pass  # left for the validator, which names what is wrong
    if not isinstance(ckpt.get("scorer"), dict):
        return out  # a mid-training checkpoint: its config was all that changed
    scorer = _scorer_v2(ckpt["scorer"], cfg) if version == 1 else ckpt["scorer"]
    scorer, settings = _scorer_v3(scorer, cfg)
    if cfg is not None and settings:
        d["weights"] = {**d.get("weights", {}), **settings}  # the weights format 2 scored with
        if len(settings.get("scales", [])) == len(cfg.backbone.taps):
            out["config"] = json.dumps(d, sort_keys=True)
            cfg = AnoMemConfig.from_dict(d)
    if cfg is not None:
        scorer = {**_fresh_scorer(scorer, cfg), **scorer}
    out["scorer"] = scorer
    if version == 1:
        anomaly = ckpt.get("anomaly_bank") or []
        out.setdefault("pseudo_bank", [a[:0].clone() for a in anomaly])
        out.setdefault("normal_score_bank", torch.zeros(0, len(anomaly)))
        out["calibration_bank"] = _calibration_v2(ckpt.get("calibration_bank") or {})
        for key in ("prototype_cache", "training_digests"):
            out[key] = ckpt.get(key) or {}
    for key, empty in (("threshold", ""), ("history", "[]"), ("meta", "{}"), ("fusion", ""), ("backbone_weights", "")):
        out.setdefault(key, empty)
    return out


def _fresh_scorer(state: dict[str, Any], cfg: AnoMemConfig) -> dict[str, Any]:
    """The state of a fresh scorer of the config, for entries an old file lacks."""
    from anomem.factory import build_scorer

    rows = []
    while isinstance(state.get(f"bank.rows{len(rows)}"), torch.Tensor):
        rows.append(state[f"bank.rows{len(rows)}"])
    if not rows or any(r.ndim != 2 for r in rows):
        return {}  # the validator names the entry
    return build_scorer(cfg, tuple(int(r.shape[1]) for r in rows)).state_dict()


__all__ = ["RENAMES", "migrate"]
