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

from anomem.config import AugmentConfig


class SimCLRViews(nn.Module):
    """Random resized crop, flip, colour jitter, Gaussian blur and noise.

    Saturation jitter needs colour, so it is skipped for 1-channel images
    ("grayscale-aware"); everything else applies to both.
    """

    def __init__(self, cfg: AugmentConfig, image_size: tuple[int, int], channels: int) -> None:
        super().__init__()
        h, w = image_size
        k = max(3, (min(h, w) // 10) | 1)  # odd blur kernel, ~10% of the side like SimCLR
        saturation = cfg.saturation if channels == 3 else 0.0
        self.ops = nn.Sequential(
            K.RandomResizedCrop((h, w), scale=cfg.crop_scale),
            K.RandomHorizontalFlip(p=cfg.flip_p),
            K.ColorJitter(cfg.brightness, cfg.contrast, saturation, 0.0, p=cfg.jitter_p),
            K.RandomGaussianBlur((k, k), cfg.blur_sigma, p=cfg.blur_p),
            K.RandomGaussianNoise(std=cfg.noise_std, p=cfg.noise_p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x).clamp_(0.0, 1.0)
