"""Config keys that moved, and the one function that moves them: :func:`upgrade`.

Until version 0.x the stage-2 settings were one ``scorer`` section of 25 fields; they
are now five sections of at most 12 (``scorer``, ``heads``, ``threshold``, ``bank``,
``pixels``). Configs written before (checkpoints of format 1, ``config.json`` of old
runs, benchmark settings, a user's YAML file or ``key=value`` overrides) still read:
each old key is moved to its new place, the old spelling winning over a new one given
in the same dict (it was given later: presets are written in the new spelling).
"""

from __future__ import annotations

from typing import Any

MOVED: dict[str, str] = {
    **{f"scorer.{k}": f"heads.{k}" for k in ("pool_size", "hidden", "margin", "steps", "batch_size", "lr",
                                              "weight_decay")},
    **{f"scorer.{k}": f"threshold.{k}" for k in ("calibration_fraction", "calibration_max_fraction", "target_fpr",
                                                  "contamination")},
    "scorer.bank": "bank.size",
    "scorer.bank_k": "bank.k",
    "scorer.bank_weight": "bank.weight",
    "scorer.pixel_side": "pixels.side",
    "scorer.pixel_weight": "pixels.weight",
    "scorer.local_weight": "pixels.local_weight",
    "scorer.map_pixel_weight": "pixels.map_weight",
    "scorer.local_k": "pixels.local_k",
    "scorer.contrast_weight": "pixels.contrast_weight",
}


PIXEL_WEIGHTS = ("weight", "local_weight", "map_weight", "contrast_weight")


def upgrade(d: Any) -> Any:
    """A copy of a nested config dict with every key of :data:`MOVED` in its new place
    (anything that is not a dict of dicts is returned as is, for the validator to refuse).
    Settings the old layout silently ignored are set to what they did: with
    ``scorer.merge=weighted`` no bank was read, and without a bank no pixel bank."""
    if not isinstance(d, dict) or not isinstance(d.get("scorer"), dict):
        return d
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    scorer, moved = out["scorer"], False
    for old, new in MOVED.items():
        field = old.split(".", 1)[1]
        if field in scorer:
            section, name = new.split(".")
            target = out.setdefault(section, {})
            if isinstance(target, dict):
                target[name] = scorer.pop(field)
                moved = True
    if moved:  # settings the old layout ignored without a word are refused now: make them what they did
        bank, pixels = out.setdefault("bank", {}), out.setdefault("pixels", {})
        if scorer.get("merge") == "weighted" and isinstance(bank, dict):
            bank["size"] = 0  # merge=weighted read no bank
        if isinstance(bank, dict) and bank.get("size") == 0 and isinstance(pixels, dict):
            pixels.update({name: 0.0 for name in PIXEL_WEIGHTS})  # no bank, no pixel bank
    return out


def moved_key(key: str) -> str:
    """The current spelling of a dotted key (itself when it did not move)."""
    return MOVED.get(key, key)


__all__ = ["MOVED", "moved_key", "upgrade"]
