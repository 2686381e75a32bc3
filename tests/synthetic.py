"""Generated image sets for end-to-end tests: stripes that differ in orientation."""

from __future__ import annotations

import torch


def stripes(n: int, vertical: bool, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) uint8 images of 1-3 bars with random position, width, contrast."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.zeros(n, size, size)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            pos = int(torch.randint(0, size - 3, (1,), generator=g))
            w = int(torch.randint(2, 4, (1,), generator=g))
            val = 0.5 + 0.5 * float(torch.rand(1, generator=g))
            if vertical:
                imgs[i, :, pos : pos + w] = val
            else:
                imgs[i, pos : pos + w, :] = val
    imgs += 0.05 * torch.randn(imgs.shape, generator=g)
    return (imgs.clamp(0, 1) * 255).round().to(torch.uint8)[:, None]
