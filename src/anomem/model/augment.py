"""SimCLR views (paper §4.2), batched and per-sample random, on the data's device.

Built on kornia's augmentation modules, which draw every parameter per sample and run
as tensor ops on whatever device the batch is on, so no per-image Python runs on the
hot path. Randomness comes from torch's global generator, which the engine seeds.

Shape:
    (B, C, H, W) float in [0, 1] -> (B, C, H, W) float in [0, 1]
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class SimCLRViews(nn.Module):
    """Random resized crop, flip, colour jitter, Gaussian blur and noise.

    Saturation jitter needs colour, so it is skipped for 1-channel images
    ("grayscale-aware"); everything else applies to both. The keyword arguments are the
    fields of the config's ``augment`` section (``SimCLRViews(size, c, **asdict(cfg.augment))``).
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        channels: int,
        *,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        noise_p: float = 0.5,
        noise_std: float = 0.03,
    ) -> None:
        super().__init__()
        h, w = image_size
        k = max(3, (min(h, w) // 10) | 1)  # odd blur kernel, ~10% of the side like SimCLR
        saturation = saturation if channels == 3 else 0.0
        self.ops = nn.Sequential(
            K.RandomResizedCrop((h, w), scale=tuple(crop_scale)),
            K.RandomHorizontalFlip(p=flip_p),
            K.ColorJitter(brightness, contrast, saturation, 0.0, p=jitter_p),
            K.RandomGaussianBlur((k, k), tuple(blur_sigma), p=blur_p),
            K.RandomGaussianNoise(std=noise_std, p=noise_p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x).clamp_(0.0, 1.0)
