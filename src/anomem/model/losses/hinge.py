"""Double-hinge anomaly-distance loss (paper Eq. 11).

    ℓ(d, y) = y · max(d - 1/M, 0) + (1 - y) · max(M - d, 0)

Normal samples (y = 1) are pulled inside the ball of radius 1/M, anomalies (y = 0)
pushed beyond M, and neither is rewarded past its margin, so anomalies are not sent to
infinity. Eq. 12 averages it over samples and scales.

Shape:
    d: (B,) distances, y: (B,) labels in {0, 1} (1 = normal) -> (B,)
"""

from __future__ import annotations

import torch


def double_hinge(d: torch.Tensor, y: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Elementwise ℓ_dist of Eq. 11 with margin M = ``margin`` (> 1)."""
    y = y.to(d.dtype)
    return y * torch.relu(d - 1.0 / margin) + (1 - y) * torch.relu(margin - d)
