"""Config keys that moved, and the one function that moves them: :func:`upgrade`.

The config's layout changed twice:

* the stage-2 settings were one ``scorer`` section of 25 fields (checkpoint format 1);
  they became the sections ``scorer``, ``heads``, ``threshold``, ``bank``, ``pixels``;
* the fusion's settings were spread over ``memory.scale_weights``, ``bank.weight`` and
  four ``pixels.*weight`` fields (format 2); they are the ``weights`` section now, each
  named as the weight it sets (:mod:`anomem.stage2.weights`).

Reading a config never moves keys: :func:`upgrade` is called where an *old file* is read
(a checkpoint's migration, :mod:`anomem.io.migrate`; the config of an earlier run or
benchmark cell compared with today's, :func:`anomem.config.config_differences`). A key of
an old layout given today (YAML, ``--set``) is an error naming its new place.
"""

from __future__ import annotations

from typing import Any

_WEIGHTS = {"memory.scale_weights": "weights.scales", "bank.weight": "weights.bank",
            "pixels.weight": "weights.pixel_global", "pixels.local_weight": "weights.pixel_local",
            "pixels.map_weight": "weights.map_pixel", "pixels.contrast_weight": "weights.contrast"}
_SCORER = {
    **{f"scorer.{k}": f"heads.{k}" for k in ("pool_size", "hidden", "margin", "steps", "batch_size", "lr",
                                              "weight_decay")},
    **{f"scorer.{k}": f"threshold.{k}" for k in ("calibration_fraction", "calibration_max_fraction", "target_fpr",
                                                  "contamination")},
    "scorer.bank": "bank.size",
    "scorer.bank_k": "bank.k",
    "scorer.pixel_side": "pixels.side",
    "scorer.local_k": "pixels.local_k",
    "scorer.bank_weight": "weights.bank",
    "scorer.pixel_weight": "weights.pixel_global",
    "scorer.local_weight": "weights.pixel_local",
    "scorer.map_pixel_weight": "weights.map_pixel",
    "scorer.contrast_weight": "weights.contrast",
}
MOVED: dict[str, str] = {**_SCORER, **_WEIGHTS}  # old dotted key -> where it lives now

PIXEL_WEIGHTS = ("pixel_global", "pixel_local", "map_pixel", "contrast")


def upgrade(d: Any) -> Any:
    """A copy of a nested config dict with every key of :data:`MOVED` in its new place, the
    old spelling winning (anything not a dict of dicts is returned as is, for the validator
    to refuse). Settings the format-1 layout silently ignored are set to what they did:
    with ``scorer.merge=weighted`` no bank was read, and without a bank no pixel bank."""
    if not isinstance(d, dict):
        return d
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    moved_scorer = False
    for old, new in MOVED.items():
        section, field = old.split(".")
        src = out.get(section)
        if isinstance(src, dict) and field in src:
            to_section, name = new.split(".")
            target = out.setdefault(to_section, {})
            if isinstance(target, dict):
                target[name] = src.pop(field)
                moved_scorer |= old in _SCORER
    if moved_scorer:  # settings the old layout ignored without a word are refused now: make them what they did
        scorer, bank, weights = out.get("scorer", {}), out.setdefault("bank", {}), out.setdefault("weights", {})
        if isinstance(scorer, dict) and scorer.get("merge") == "weighted" and isinstance(bank, dict):
            bank["size"] = 0  # merge=weighted read no bank
        if isinstance(bank, dict) and bank.get("size") == 0 and isinstance(weights, dict):
            weights.update(dict.fromkeys(PIXEL_WEIGHTS, 0.0))  # no bank, no pixel bank
    return out


__all__ = ["MOVED", "PIXEL_WEIGHTS", "upgrade"]
