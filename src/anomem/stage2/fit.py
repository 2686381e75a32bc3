"""Stage 2 of fitting: what the scorer learns on a trained, frozen stage 1.

Given the inference module (:class:`anomem.inference.AnoMemModel`), these functions
set the scorer's per-scale statistics and normal banks, keep the pooled deviations
that later refits and thresholds need (:class:`Stage2Banks`, :class:`ScoreBank`), and
train the heads (Eq. 10-12) when labelled anomalies exist. They also make the
training-time inputs of stage 2: the held-out calibration normals and the
pseudo-anomalies (:mod:`anomem.model.pseudo`).

Symbols: N images, S scales, D_s pooled features of scale s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from anomem.config import AnoMemConfig
from anomem.engine import fit_heads
from anomem.errors import ConfigError
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.model.pseudo import make_pseudo_anomalies, shift_separability
from anomem.stage2.patch_bank import pixel_descriptors
from anomem.stage2.scorer import one_class_scores


class DeviationSummary(NamedTuple):
    """Per-image stage-2 inputs of a set of images, computed in one pass."""

    scores: torch.Tensor  # (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9)
    pooled: list[torch.Tensor]  # S x (N, D_s) pooled deviations φ(Δ^(s))
    embeddings: list[torch.Tensor]  # S x (N, C_s) tap features averaged over positions
    map_mean: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖ over all images
    map_sq: torch.Tensor  # (S,) mean of per-position ‖Δ_ij‖²
    pixels: torch.Tensor | None = None  # (N, 2) pixel-bank scores, when the bank is ready
    patches: torch.Tensor | None = None  # (N, 2) feature- and pixel-patch scores, when the banks are ready


class ScoreBank(NamedTuple):
    """Stage-2 inputs of a set of images, enough to score them under any scorer state.

    Attributes:
        raw: (N, S) one-class scores ‖Δ^(s)‖₂ (Eq. 9), before standardisation.
        pooled: S x (N, D_s) pooled deviations φ(Δ^(s)) for the heads (Eq. 10).
        bank: (N, S) standardised normal-bank distances, or (N, 0) / None when the
            detector keeps no bank (the banks never change after fit, so these stay valid).
        pixel: (N, 2) or (N, 3) standardised global, local (and contrast) pixel-bank
            scores, or None / empty without a pixel bank.
        pixel_features: (N, D) the images at pixel-bank resolution, or None: with them
            the pixel scores are recomputed under the current pixel bank (a refit adds
            anomalies to it, which changes the contrast).
    """

    raw: torch.Tensor
    pooled: list[torch.Tensor]
    bank: torch.Tensor | None = None
    pixel: torch.Tensor | None = None
    pixel_features: torch.Tensor | None = None
    patches: torch.Tensor | None = None  # (N, 2) standardised patch-bank scores (never change after fit)


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
def summarise(model: AnoMemModel, images: torch.Tensor, batch_size: int = 256) -> DeviationSummary:
    """Eq. 9 scores, pooled deviations, embeddings and map statistics of ``images``."""
    heads = model.scorer.heads
    scores, pooled, embs, pix, msum, msq, count = [], [], [], [], 0.0, 0.0, 0
    patches = []
    ready = any(b.ready for b in model.scorer.patches.values())
    for ev in model.evidence_batches(images, batch_size, patches=ready):
        if ev.pixel_scores is not None:
            pix.append(ev.pixel_scores)
        if ev.patch_scores is not None:
            patches.append(ev.patch_scores)
        devs = ev.deviations
        embs.append(ev.embeddings)
        scores.append(one_class_scores(devs))
        pooled.append([h.pool_features(d) for h, d in zip(heads, devs)])
        norms = [d.norm(dim=1) for d in devs]  # S x (B, H_s, W_s)
        msum = msum + torch.stack([n.mean((1, 2)).sum() for n in norms])
        msq = msq + torch.stack([(n**2).mean((1, 2)).sum() for n in norms])
        count += devs[0].shape[0]
    return DeviationSummary(torch.cat(scores), [torch.cat(p) for p in zip(*pooled)],
                            [torch.cat(e) for e in zip(*embs)], msum / count, msq / count,
                            torch.cat(pix) if pix else None, torch.cat(patches) if patches else None)


@torch.inference_mode()
def bank_scores(model: AnoMemModel, bank: ScoreBank) -> np.ndarray:
    """Merged scores (N,) of a :class:`ScoreBank` under the model's current stage 2:
    what :meth:`AnoMem.anomaly_score` gives for those images, without the images."""
    s, device = model.scorer, model.scorer.score_mean.device
    sup = model.use_heads
    raw = s.head_distances([p.to(device) for p in bank.pooled]) if sup else bank.raw.to(device)  # Eq. 10 / 9
    near = None if bank.bank is None else bank.bank.to(device)
    pixels = None if bank.pixel is None else bank.pixel.to(device)
    if bank.pixel_features is not None and bank.pixel_features.numel() and s.pixels.ready:
        pixels = s.pixel_scores(bank.pixel_features.to(device))[0]
    image = s.image_score(s.standardise(raw, sup, near), pixels, sup)  # Eq. 13 (+ pixel bank)
    patches = None if bank.patches is None or not s.has_patches else bank.patches.to(device)
    return s.fuse(image, patches).float().cpu().numpy()


def fit_scorer(model: AnoMemModel, cfg: AnoMemConfig, normals: torch.Tensor, anomalies: torch.Tensor,
               pseudo: torch.Tensor) -> Stage2Banks:
    """Statistics, normal banks and (with labelled anomalies) the heads, in place.

    The heads learn from the labelled anomalies and the pseudo-anomalies together;
    pseudo-anomalies alone train them only with ``pseudo.heads`` (alone they make
    unstable heads, docs/method.md), but their pooled deviations are kept so that a
    later refit uses them beside the new anomalies.
    """
    scorer = model.scorer
    summ = summarise(model, normals)
    scorer.score_mean.copy_(summ.scores.mean(0))
    scorer.score_std.copy_(summ.scores.std(0, unbiased=False).clamp_min(1e-8))
    scorer.map_mean.copy_(summ.map_mean)
    scorer.map_std.copy_((summ.map_sq - summ.map_mean**2).clamp_min(1e-12).sqrt())
    if cfg.scorer.bank > 0 and scorer.standardize and normals.shape[0] > 2:
        pick = torch.randperm(normals.shape[0], generator=torch.Generator().manual_seed(cfg.train.seed + 31))
        scorer.set_banks([e[pick[: cfg.scorer.bank].to(e.device)] for e in summ.embeddings])
        if scorer.pixels.active:
            scorer.pixels.fit(to_float(normals[pick[: cfg.scorer.bank]]).to(scorer.score_mean.device))
    fit_patch_banks(model, cfg, normals)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    keep = torch.randperm(normals.shape[0], generator=gen)[: cfg.scorer.normal_bank]
    empty = [p.new_zeros((0, p.shape[1])) for p in summ.pooled]  # fresh: a p[:0] view would keep every row
    banks = Stage2Banks([p[keep.to(p.device)] for p in summ.pooled], summ.scores[keep.to(summ.scores.device)],
                        empty, [t.clone() for t in empty])
    if pseudo.shape[0] > 0:
        keep = torch.randperm(pseudo.shape[0], generator=gen)[: cfg.scorer.normal_bank]
        banks = banks._replace(pseudo=summarise(model, pseudo[keep]).pooled)
    if cfg.scorer.mode == "one-class":
        return banks
    if anomalies.shape[0] > 0:
        banks = banks._replace(anomaly=summarise(model, anomalies).pooled)
        store_pixel_anomalies(model, anomalies, keep_previous=False)
    if anomalies.shape[0] > 0 or (cfg.pseudo.heads and pseudo.shape[0] > 0):
        train_heads(model, banks, cfg)
    return banks


def store_pixel_anomalies(model: AnoMemModel, anomalies: torch.Tensor, keep_previous: bool) -> None:
    """Put labelled anomalies into the pixel bank (for its contrast score), after the
    ones stored before when ``keep_previous``; nothing without a pixel bank."""
    px = model.scorer.pixels
    if not px.ready or anomalies.shape[0] == 0:
        return
    new = px.features(to_float(anomalies).to(px.bank.device))
    if keep_previous and px.anomalies.shape[0] and px.anomalies.shape[1] == new.shape[1]:
        new = torch.cat([px.anomalies, new])
    px.set_anomalies(new)


def train_heads(model: AnoMemModel, banks: Stage2Banks, cfg: AnoMemConfig) -> None:
    """Train g^(s) on the kept normals against anomalies + pseudo-anomalies (Eq. 11-12),
    then set the head-distance statistics and mark the scorer supervised."""
    s = model.scorer
    anomalies = [torch.cat([a, p]) for a, p in zip(banks.anomaly, banks.pseudo)]
    fit_heads(s.heads, banks.normal, anomalies, cfg.scorer, cfg.train.seed)
    with torch.no_grad():
        d = s.head_distances(banks.normal)  # (N, S)
        s.head_mean.copy_(d.mean(0))
        s.head_std.copy_(d.std(0, unbiased=False).clamp_min(1e-6))
        s.supervised.fill_(True)


def calibration_bank(model: AnoMemModel, images: torch.Tensor, cap: int, seed: int) -> ScoreBank:
    """The :class:`ScoreBank` of (at most ``cap``, seeded draw) held-out normals."""
    summ = summarise(model, images)
    # Capped like the normal bank, so the checkpoint does not grow with the data.
    keep = torch.randperm(summ.scores.shape[0], generator=torch.Generator().manual_seed(seed))[:cap]
    s = model.scorer
    near = s.bank_scores([e[keep] for e in summ.embeddings]) if s.has_banks else None
    pixels = None if summ.pixels is None else summ.pixels[keep.to(summ.pixels.device)]  # from the same pass
    feats = None
    if s.pixels.ready:
        feats = s.pixels.features(to_float(images[keep.to(images.device)]).to(s.pixels.bank.device))
    patches = None if summ.patches is None else summ.patches[keep.to(summ.patches.device)]
    return ScoreBank(summ.scores[keep], [p[keep.to(p.device)] for p in summ.pooled], near, pixels, feats, patches)


PATCH_FIT_IMAGES = 1024  # training normals whose descriptors feed the coresets, at most


@torch.inference_mode()
def fit_patch_banks(model: AnoMemModel, cfg: AnoMemConfig, normals: torch.Tensor) -> None:
    """Fill the patch banks (:mod:`anomem.stage2.patch_bank`): a seeded share ``patches.held_out``
    of the normals (at least one) is left out of the coresets and sets their statistics."""
    banks = model.scorer.patches
    if not any(b.size > 0 for b in banks.values()) or normals.shape[0] < 2:
        return
    model.eval()  # BatchNorm must not move while the descriptors are read
    gen = torch.Generator().manual_seed(cfg.train.seed + 4099)
    order = torch.randperm(normals.shape[0], generator=gen)
    n_out = min(max(1, round(cfg.patches.held_out * normals.shape[0])), normals.shape[0] - 1, 64)
    held, train = order[:n_out], order[n_out:][:PATCH_FIT_IMAGES]
    for name, bank in banks.items():
        if bank.size <= 0:
            continue
        desc = [patch_descriptors(model, normals[idx], name) for idx in (train, held)]
        if desc[0] is None:
            continue
        bank.fit(desc[0], desc[1], gen)
    model.scorer.fusion.copy_(torch.tensor([1.0, 0.0, 0.0]))  # until fit_fusion weighs them
    model.scorer.map_fusion.copy_(torch.tensor([1.0, 0.0, 0.0]))


def patch_descriptors(model: AnoMemModel, images: torch.Tensor, name: str, batch_size: int = 128) -> torch.Tensor | None:
    """Descriptors (N, D, h, w) of one patch bank (``feature`` or ``pixel``) of ``images``."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = to_float(images[i : i + batch_size].to(model.net.pixel_mean.device))
        if name == "pixel":
            out.append(pixel_descriptors(x))
            continue
        d = model.net.evidence(x).local_features
        if d is None:
            return None
        out.append(d.float())
    return torch.cat(out)


def calibration_split(normal: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the normals held out to set the threshold: floor(fraction · n) of the
    n normals, drawn with a generator seeded by ``seed`` (the global RNG is untouched),
    never leaving fewer than 2 normals to train on. (M,) int64, sorted; M may be 0."""
    idx = normal.nonzero().flatten()
    m = min(int(fraction * idx.numel()), idx.numel() - 2)
    if m <= 0:
        return idx[:0]
    gen = torch.Generator().manual_seed(seed + 7919)  # a stream of its own, not the training one
    return idx[torch.randperm(idx.numel(), generator=gen)[:m]].sort().values


def usable_shifts(x: torch.Tensor, shifts: tuple[str, ...], cfg: AnoMemConfig) -> tuple[str, ...]:
    """The shifts that move these normals (N, C, H, W) off their distribution: a shift the
    class is (nearly) invariant to makes pseudo-anomalies that look normal."""
    p = cfg.pseudo
    if shifts and p.min_separability > 0 and x.shape[0] >= 4:
        sep = shift_separability(x, shifts, generator=torch.Generator().manual_seed(cfg.train.seed + 7))
        shifts = tuple(k for k in shifts if sep[k] >= p.min_separability)
    return shifts


def pseudo_anomalies(normals: torch.Tensor, cfg: AnoMemConfig) -> torch.Tensor:
    """``pseudo.ratio`` x N pseudo-anomalies of the training normals (float, CPU), seeded
    by ``train.seed`` on a stream of their own (:mod:`anomem.model.pseudo`)."""
    p = cfg.pseudo
    count = max(1, round(p.ratio * normals.shape[0]))
    gen = torch.Generator().manual_seed(cfg.train.seed + 104729)
    shifts = p.shifts
    if normals.shape[-1] != normals.shape[-2]:  # quarter turns need square images
        shifts = tuple(k for k in shifts if k not in ("rot90", "rot270"))
        if not shifts and not p.defects:
            raise ConfigError("pseudo.shifts holds only quarter turns, which need square images; add rot180 or vflip")
    x = to_float(normals)
    shifts = usable_shifts(x, shifts, cfg)
    if not shifts and (p.defect_fraction == 0 or not p.defects):
        return x[:0]  # nothing left that makes an anomaly: the paper's stage 1
    return make_pseudo_anomalies(x, count, shifts, p.defects, p.defect_fraction, p.defect_size, gen).images


__all__ = [
    "DeviationSummary",
    "ScoreBank",
    "Stage2Banks",
    "bank_scores",
    "calibration_bank",
    "calibration_split",
    "fit_patch_banks",
    "fit_scorer",
    "pseudo_anomalies",
    "summarise",
    "train_heads",
    "usable_shifts",
]
