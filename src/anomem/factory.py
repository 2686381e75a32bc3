"""Build the pure-torch parts from a config: the one place config meets model code.

:mod:`anomem.model.net`, :mod:`anomem.model.memory`, :mod:`anomem.model.backbone`, :mod:`anomem.model.losses`
and :mod:`anomem.model.augment` take plain arguments and know nothing of
:class:`~anomem.config.AnoMemConfig`; the estimator, the training engine, benchmarks and
tests build them through these functions, so fit and load always build the same thing.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

from anomem.config import AnoMemConfig
from anomem.model.augment import SimCLRViews
from anomem.model.backbone import TappedResNet, WeightsReport, load_resnet_weights, resolve_stem
from anomem.model.memory import HopfieldMemory
from anomem.model.net import AnoMemNet
from anomem.stage2.scorer import Scorer
from anomem.stage2.weights import compose, global_only
from anomem.thresholds import user_stacklevel


def build_net(cfg: AnoMemConfig, in_channels: int, image_size: tuple[int, int] | None = None) -> AnoMemNet:
    """Encoder with the configured taps and one Hopfield memory per tap (untrained);
    ``image_size`` (H, W) picks the stem when ``backbone.stem`` is ``auto``."""
    b, m = cfg.backbone, cfg.memory
    stem = resolve_stem(b.stem, image_size)
    backbone = TappedResNet.build(b.arch, b.taps, in_channels=in_channels, width=b.width, stem=stem)
    memories = [
        HopfieldMemory(k, c, beta=m.beta, normalize=m.normalize, max_steps=m.max_steps, learn_beta=m.learn_beta, tol=m.tol)
        for k, c in zip(m.sizes, backbone.tap_channels)
    ]
    return AnoMemNet(backbone, memories, in_channels, use_memory=m.enabled)


def load_backbone_weights(net: AnoMemNet, cfg: AnoMemConfig) -> WeightsReport | None:
    """Start ``net``'s encoder from ``backbone.weights`` (a local torchvision ResNet state
    dict), in place; None when the field is empty. Called by fit only: a saved detector
    holds its own weights. Logs the counts, and warns when some encoder tensors stay
    random (a different stem or a 1-channel input, say)."""
    if not cfg.backbone.weights:
        return None
    report = load_resnet_weights(net.backbone, cfg.backbone.weights)
    logging.getLogger("anomem").info("backbone.weights %s: %s", cfg.backbone.weights, report.describe())
    if report.mismatched or report.missing:
        first = (report.mismatched or report.missing)[0]
        warnings.warn(f"backbone.weights: {report.describe()} (e.g. {first})", UserWarning,
                      stacklevel=user_stacklevel())
    return report


def build_scorer(cfg: AnoMemConfig, channels: tuple[int, ...]) -> Scorer:
    """An untrained stage-2 scorer for taps with ``channels``, its weights composed from
    the config's settings for what it can read yet (the memory alone)."""
    scorer = Scorer(channels, pool=cfg.heads.pool_size, hidden=cfg.heads.hidden, bank_k=cfg.bank.k,
                    pixel_side=cfg.pixels.side, local_k=cfg.pixels.local_k, map_sigma=cfg.scorer.map_sigma,
                    patch_banks={"feature_patches": cfg.patches.feature_bank, "pixel_patches": cfg.patches.pixel_bank},
                    patch_top_k=cfg.patches.top_k)
    settings = {**cfg.weights.settings(len(channels)), "image": global_only(), "map": global_only()}
    scorer.weights.set(compose(settings, scorer.readable(False), len(channels), heads=False))
    return scorer


def build_views(cfg: AnoMemConfig, image_size: tuple[int, int], channels: int) -> SimCLRViews:
    """The stage-1 augmentation pipeline for images of this size and channel count."""
    return SimCLRViews(image_size, channels, **asdict(cfg.augment))


__all__ = ["build_net", "build_scorer", "build_views", "load_backbone_weights"]
