"""Heat-map smoothing shared by every map the library draws (pure torch + kornia)."""

from __future__ import annotations

import math

import torch


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of heat-maps, σ in pixels (below 0.05 = unchanged), reflect borders.

    The kernel spans ±3σ (odd size ``2·ceil(3σ) + 1``, at least 3, and below twice the
    shorter side, which reflect padding needs).

    Shape:
        maps (B, S, H, W) -> (B, S, H, W)
    """
    if sigma < 0.05:  # the neighbours' weights exp(-1/2σ²) < 1e-86 vanish: the blur is the identity
        return maps
    from kornia.filters import gaussian_blur2d

    k = max(3, 2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * int(min(maps.shape[-2:])) - 1)  # an int also while tracing (export)
    if k < 3:  # a 1-pixel side: nothing to smooth
        return maps
    return gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type="reflect")


__all__ = ["smooth_maps"]
