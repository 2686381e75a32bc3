"""Fitting stage 2 on a trained, frozen stage 1, signal by signal.

Given the inference module (:class:`anomem.inference.AnoMemModel`), :func:`fit_scorer`
fits each signal of the scorer from the training normals (statistics, banks, patch
coresets), trains the heads (Eq. 10-12) when labelled anomalies exist, and keeps what
later refits and thresholds need without the images: :class:`Stage2Banks` (pooled
deviations) and :class:`ScoreBank` (the cached parts of the held-out normals, scored
under any weights by :func:`cached_scores`).

Symbols: N images, S scales, D_s pooled features of scale s.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from anomem.config import AnoMemConfig
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.stage2.heads import fit_heads
from anomem.stage2.scorer import Reading, fuse
from anomem.stage2.weights import LOCAL, compose, split_of

INPUTS = ("pixel_global", "pixel_local", "feature_patches", "pixel_patches")  # kept per image; the contrast is
# not: a refit changes it, so it is recomputed from the kept pixel vectors


class DeviationSummary(NamedTuple):
    """Per-image stage-2 inputs of a set of images, computed in one pass."""

    scores: torch.Tensor  # (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9)
    pooled: list[torch.Tensor]  # S x (N, D_s) pooled deviations φ(Δ^(s))
    embeddings: list[torch.Tensor]  # S x (N, C_s) tap features averaged over positions
    map_mean: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖ over all images
    map_sq: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖²
    inputs: dict[str, torch.Tensor]  # (N,) the input-level image scores of INPUTS, every ready bank read


class ScoreBank(NamedTuple):
    """Stage-2 inputs of a set of images, enough to score them under any scorer state.

    Attributes:
        raw: (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9), before standardisation.
        pooled: S x (N, D_s) pooled deviations φ(Δ^(s)) for the heads (Eq. 10).
        bank: (N, S) standardised feature-bank distances, or None without a bank.
        inputs: (N,) image scores of the input-level signals by name (:data:`INPUTS`).
        pixel_features: (N, D) the images at pixel-bank resolution, or None: with them
            the pixel scores and the contrast are recomputed under the current state.
    """

    raw: torch.Tensor
    pooled: list[torch.Tensor]
    bank: torch.Tensor | None = None
    inputs: dict[str, torch.Tensor] = {}
    pixel_features: torch.Tensor | None = None


class Stage2Banks(NamedTuple):
    """Pooled deviations kept after fit, so stage 2 can be retrained without images.

    Attributes:
        normal: S x (n, D_s) of up to ``scorer.normal_bank`` training normals.
        normal_scores: (n, S) their raw Eq. 9 scores (same rows).
        anomaly: S x (m, D_s) of the labelled anomalies seen so far.
        pseudo: S x (p, D_s) of the pseudo-anomalies made at fit time.
    """

    normal: list[torch.Tensor]
    normal_scores: torch.Tensor
    anomaly: list[torch.Tensor]
    pseudo: list[torch.Tensor]


@torch.inference_mode()
def summarise(model: AnoMemModel, images: torch.Tensor, batch_size: int = 256, inputs: bool = False) -> DeviationSummary:
    """Eq. 9 scores, pooled deviations, embeddings, map moments and, with ``inputs``, the
    input-level scores (every ready bank read; only the calibration bank keeps them)."""
    heads = model.scorer.heads
    scores, pooled, embs, msum, msq, count = [], [], [], 0.0, 0.0, 0
    rows: list[dict[str, torch.Tensor]] = []
    for r in model.readings(images, batch_size, need=model.need(every=True) if inputs else set()):
        devs = r.net.deviations
        rows.append({k: v for k, v in r.inputs.items() if k in INPUTS})
        embs.append(r.net.embeddings)
        scores.append(r.eq9)
        pooled.append(heads.pool(devs))
        norms = [d.norm(dim=1) for d in devs]  # S x (B, H_s, W_s)
        msum = msum + torch.stack([n.mean((1, 2)).sum() for n in norms])
        msq = msq + torch.stack([(n**2).mean((1, 2)).sum() for n in norms])
        count += devs[0].shape[0]
    cols = {k: torch.cat([r[k] for r in rows]) for k in (rows[0] if rows else {})}
    return DeviationSummary(torch.cat(scores), [torch.cat(p) for p in zip(*pooled)],
                            [torch.cat(e) for e in zip(*embs)], msum / count, msq / count, cols)


def cached_reading(model: AnoMemModel, bank: ScoreBank) -> Reading:
    """The :class:`~anomem.stage2.scorer.Reading` of a :class:`ScoreBank` under the model's
    current stage 2: what :meth:`Scorer.read` gives for those images, without them (the
    pixel bank and the contrast recomputed from the kept pixel vectors)."""
    s, device = model.scorer, model.scorer.weights.values.device
    inputs = {k: v.to(device) for k, v in bank.inputs.items()}
    if bank.pixel_features is not None and bank.pixel_features.numel() and s.pixels.ready:
        inputs.update(s.pixel_parts(bank.pixel_features.to(device))[0])
    pooled = [p.to(device) for p in bank.pooled] if s.heads.trained else None
    return Reading(bank.raw.to(device), pooled, None if bank.bank is None else bank.bank.to(device), inputs)


@torch.inference_mode()
def cached_scores(model: AnoMemModel, bank: ScoreBank, weights: dict[str, float] | None = None) -> np.ndarray:
    """Image scores (N,) of a :class:`ScoreBank` under the model's current stage 2 (and
    fitted or given weights): what :meth:`AnoMem.anomaly_score` gives for those images."""
    return fuse(model.scorer.parts(cached_reading(model, bank)), model.weights(weights)).float().cpu().numpy()


def settings_of(model: AnoMemModel, cfg: AnoMemConfig) -> dict[str, Any]:
    """The settings the model's weights were composed from: the config's ``weights``
    section and the ``image`` / ``map`` splits the current weights hold."""
    w = model.scorer.weights.as_dict()
    return {**cfg.weights.settings(model.scorer.num_scales), "image": split_of(w), "map": split_of(w, "map.")}


def compose_weights(model: AnoMemModel, cfg: AnoMemConfig, image: list[float] | None = None,
                    map: list[float] | None = None) -> dict[str, float]:
    """The flat weights of the config's settings and the ``image``/``map`` split (default:
    the split the current weights hold) for what the scorer can read now."""
    settings = settings_of(model, cfg)
    settings.update({k: v for k, v in (("image", image), ("map", map)) if v})
    return compose(settings, model.scorer.readable(model.use_heads), model.scorer.num_scales, model.use_heads)


def fit_scorer(model: AnoMemModel, cfg: AnoMemConfig, normals: torch.Tensor, anomalies: torch.Tensor,
               pseudo: torch.Tensor, held_out: torch.Tensor | None = None) -> Stage2Banks:
    """Every signal's state and statistics, and (with labelled anomalies) the heads, in place.
    ``held_out``: validation normals that set the patch banks' statistics (see :func:`fit_patch_banks`).

    The heads learn from the labelled anomalies and the pseudo-anomalies together;
    pseudo-anomalies alone train them only with ``pseudo.heads`` (alone they make
    unstable heads, docs/decisions.md), but their pooled deviations are kept so that a
    later refit uses them beside the new anomalies.
    """
    scorer = model.scorer
    standardise = cfg.scorer.merge == "standardized"
    summ = summarise(model, normals)
    scorer.memory.fit(summ.scores, summ.map_mean, summ.map_sq, standardise)
    if cfg.bank.size > 0 and standardise and normals.shape[0] > 2:
        pick = torch.randperm(normals.shape[0], generator=torch.Generator().manual_seed(cfg.train.seed + 31))
        scorer.bank.fit([e[pick[: cfg.bank.size].to(e.device)] for e in summ.embeddings])
        if cfg.weights.pixel_bank_used:
            scorer.pixels.fit(to_float(normals[pick[: cfg.bank.size]]).to(scorer.weights.values.device))
    fit_patch_banks(model, cfg, normals, held_out)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    keep = torch.randperm(normals.shape[0], generator=gen)[: cfg.scorer.normal_bank]
    empty = [p.new_zeros((0, p.shape[1])) for p in summ.pooled]  # fresh: a p[:0] view would keep every row
    banks = Stage2Banks([p[keep.to(p.device)] for p in summ.pooled], summ.scores[keep.to(summ.scores.device)],
                        empty, [t.clone() for t in empty])
    if pseudo.shape[0] > 0:
        keep = torch.randperm(pseudo.shape[0], generator=gen)[: cfg.scorer.normal_bank]
        banks = banks._replace(pseudo=summarise(model, pseudo[keep]).pooled)
    if cfg.scorer.mode == "one-class":
        return finish(model, cfg, banks)
    if anomalies.shape[0] > 0:
        banks = banks._replace(anomaly=summarise(model, anomalies).pooled)
        store_anomalies(model, anomalies, keep_previous=False)
    if anomalies.shape[0] > 0 or (cfg.pseudo.heads and pseudo.shape[0] > 0):
        train_heads(model, banks, cfg)
    return finish(model, cfg, banks)


def finish(model: AnoMemModel, cfg: AnoMemConfig, banks: Stage2Banks) -> Stage2Banks:
    """Compose the weights for what the scorer can read now (after a fit or a refit)."""
    model.scorer.weights.set(compose_weights(model, cfg))
    return banks


def store_anomalies(model: AnoMemModel, anomalies: torch.Tensor, keep_previous: bool) -> None:
    """Give labelled anomalies to the contrast (after the ones stored before when
    ``keep_previous``); nothing without a pixel bank."""
    s = model.scorer
    if not s.pixels.ready or anomalies.shape[0] == 0:
        return
    new = s.pixels.features(to_float(anomalies).to(s.pixels.bank.device))
    old = s.contrast.anomalies
    if keep_previous and old.shape[0] and old.shape[1] == new.shape[1]:
        new = torch.cat([old, new])
    s.contrast.fit(s.pixels, new)


def train_heads(model: AnoMemModel, banks: Stage2Banks, cfg: AnoMemConfig) -> None:
    """Train g^(s) on the kept normals against anomalies + pseudo-anomalies (Eq. 11-12),
    then set the statistics of their distances and mark them trained."""
    heads = model.scorer.heads
    anomalies = [torch.cat([a, p]) for a, p in zip(banks.anomaly, banks.pseudo)]
    h = cfg.heads
    fit_heads(heads.nets, banks.normal, anomalies, steps=h.steps, batch_size=h.batch_size, lr=h.lr,
              weight_decay=h.weight_decay, margin=h.margin, seed=cfg.train.seed)
    heads.calibrate(banks.normal, standardise=cfg.scorer.merge == "standardized")


def refit(model: AnoMemModel, banks: Stage2Banks, cfg: AnoMemConfig, anomalies: torch.Tensor,
          normals: torch.Tensor | None = None, keep_previous: bool = True, contrast: bool = True) -> Stage2Banks:
    """Retrain the heads with labelled anomalies on the frozen stage 1 (after those seen
    before when ``keep_previous``; on ``normals`` instead of the kept normal bank when
    given), and give them to the contrast unless ``contrast`` is False. The new banks."""
    new = summarise(model, anomalies).pooled
    if normals is not None:
        summ = summarise(model, normals)
        banks = banks._replace(normal=summ.pooled, normal_scores=summ.scores)
    if keep_previous:
        new = [torch.cat([old, n]) for old, n in zip(banks.anomaly, new)]
    banks = banks._replace(anomaly=new)
    if contrast:
        store_anomalies(model, anomalies, keep_previous)
    train_heads(model, banks, cfg)
    return finish(model, cfg, banks)


def calibration_bank(model: AnoMemModel, images: torch.Tensor, cap: int, seed: int) -> ScoreBank:
    """The :class:`ScoreBank` of (at most ``cap``, seeded draw) held-out normals."""
    summ = summarise(model, images, inputs=True)
    # Capped like the normal bank, so the checkpoint does not grow with the data.
    keep = torch.randperm(summ.scores.shape[0], generator=torch.Generator().manual_seed(seed))[:cap]
    s = model.scorer
    near = s.bank([e[keep] for e in summ.embeddings]) if s.bank.ready else None
    feats = None
    if s.pixels.ready:
        feats = s.pixels.features(to_float(images[keep.to(images.device)]).to(s.pixels.bank.device))
    inputs = {k: v[keep.to(v.device)] for k, v in summ.inputs.items()}
    return ScoreBank(summ.scores[keep], [p[keep.to(p.device)] for p in summ.pooled], near, inputs, feats)


PATCH_FIT_IMAGES = 1024  # training normals whose descriptors feed the coresets, at most


@torch.inference_mode()
def fit_patch_banks(model: AnoMemModel, cfg: AnoMemConfig, normals: torch.Tensor,
                    held_out: torch.Tensor | None = None) -> None:
    """Fill the patch banks (:mod:`anomem.stage2.patch_bank`): a seeded share
    ``patches.held_out`` of the normals (at least one) is left out of the coresets and
    sets their statistics; given ``held_out`` (validation normals), every normal feeds the
    coresets and those set the statistics. The fusion weighs them only once
    :mod:`anomem.fit.fusion` has."""
    banks = {name: model.scorer.local(name) for name in LOCAL}
    if not any(b.size > 0 for b in banks.values()) or normals.shape[0] < 2:
        return
    model.eval()  # BatchNorm must not move while the descriptors are read
    gen = torch.Generator().manual_seed(cfg.train.seed + 4099)
    order = torch.randperm(normals.shape[0], generator=gen)
    if held_out is None:
        n_out = min(max(1, round(cfg.patches.held_out * normals.shape[0])), normals.shape[0] - 1, 64)
        sets = (normals[order[n_out:][:PATCH_FIT_IMAGES]], normals[order[:n_out]])
    else:
        pick = torch.randperm(held_out.shape[0], generator=gen)[:64]
        sets = (normals[order[:PATCH_FIT_IMAGES]], held_out[pick])
    for name, bank in banks.items():
        if bank.size <= 0:
            continue
        desc = [patch_descriptors(model, images, name) for images in sets]
        if desc[0] is None:
            continue
        bank.fit(desc[0], desc[1], gen)


def patch_descriptors(model: AnoMemModel, images: torch.Tensor, name: str, batch_size: int = 128) -> torch.Tensor | None:
    """Descriptors (N, D, h, w) of the local signal ``name`` of ``images``."""
    bank, out = model.scorer.local(name), []
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i : i + batch_size].to(model.net.pixel_mean.device))
        ev = model.net.evidence(x, local=bank.reads_encoder)
        d = bank.source(x, ev)
        if d is None:
            return None
        out.append(d.float())
    return torch.cat(out)


def score_bank_state(bank: ScoreBank | None) -> dict[str, Any]:
    """A :class:`ScoreBank` as checkpoint entries (CPU tensors; empty tensors for None)."""
    if bank is None:
        return {}
    t = lambda v, *shape: torch.zeros(*shape) if v is None else v.detach().cpu()  # noqa: E731
    n = bank.raw.shape[0]
    return {"raw": bank.raw.cpu(), "pooled": [p.cpu() for p in bank.pooled], "bank": t(bank.bank, n, 0),
            **{k: t(bank.inputs.get(k), 0) for k in INPUTS}, "pixel_features": t(bank.pixel_features, 0)}


def score_bank_from_state(state: dict[str, Any]) -> ScoreBank | None:
    """The :class:`ScoreBank` of :func:`score_bank_state` (None for an empty entry)."""
    if not state:
        return None
    some = lambda v: None if v is None or v.numel() == 0 else v  # noqa: E731
    bank = state["bank"]
    return ScoreBank(state["raw"], list(state["pooled"]), bank if bank.shape[1] else None,
                     {k: state[k] for k in INPUTS if some(state.get(k)) is not None}, some(state.get("pixel_features")))


__all__ = [
    "DeviationSummary",
    "ScoreBank",
    "Stage2Banks",
    "cached_reading",
    "cached_scores",
    "calibration_bank",
    "fit_patch_banks",
    "finish",
    "fit_scorer",
    "compose_weights",
    "settings_of",
    "refit",
    "score_bank_from_state",
    "score_bank_state",
    "store_anomalies",
    "summarise",
    "train_heads",
]
