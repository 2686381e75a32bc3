"""What throughput.py and scaling.py measure: stage-1 steps of the real trainer, AnoMem's
scoring path and the encoder alone (a kNN baseline's forward), on images already on the
device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anomem.config import AnoMemConfig
from anomem.engine import Stage1Trainer
from anomem.factory import build_net, build_scorer
from anomem.inference import AnoMemModel
from anomem.inputs import to_float
from anomem.model.net import AnoMemNet
from anomem.stage2.scorer import Scorer

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from measure import count_flops

IMAGE_SHAPE = (3, 32, 32)  # the presets' natural input: CIFAR-sized colour images


class StepRunner:
    """Calls a trainer's step on a fixed batch of indices, advancing the step number."""

    def __init__(self, trainer: Stage1Trainer, idx: torch.Tensor) -> None:
        self.trainer, self.idx, self.step = trainer, idx, 0

    def __call__(self) -> None:
        self.trainer.step_fn(self.idx, self.step)  # torch.compile'd with train.compile=true
        self.step += 1

    def eager(self) -> None:
        """The same step, never compiled (FlopCounterMode needs to see every op)."""
        self.trainer._step(self.idx, self.step)
        self.step += 1


def make_trainer(
    cfg: AnoMemConfig, images: torch.Tensor, device: torch.device, seed: int
) -> Stage1Trainer:
    torch.manual_seed(seed)  # same initial weights and augmentation stream for A and B
    net = build_net(cfg, images.shape[1])
    return Stage1Trainer(net, cfg, images, torch.ones(images.shape[0], dtype=torch.bool), device)


def make_scorer(net: AnoMemNet, cfg: AnoMemConfig, device: torch.device) -> Scorer:
    """A stage-2 scorer of the preset's shape (untrained: its cost does not depend on training)."""
    return build_scorer(cfg, net.backbone.tap_channels).to(device)


@torch.inference_mode()
def anomem_scores(
    net: AnoMemNet, scorer: Scorer, images: torch.Tensor, device: torch.device, batch: int
) -> torch.Tensor:
    """One-class anomaly scores (N,) on the host, the path of ``AnoMem.anomaly_score``."""
    model = AnoMemModel(net, scorer, tuple(images.shape[2:]), 0.0, "one-class").to(device)
    out = [model.score(r) for r in model.readings(images, batch)]  # Eq. 9 + 13
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def pooled_features(
    net: AnoMemNet, images: torch.Tensor, device: torch.device, batch: int
) -> torch.Tensor:
    """Global-average-pooled deepest-tap features (N, C) on ``device``: a kNN bank's rows."""
    net.eval()
    out = []
    for i in range(0, images.shape[0], batch):
        x = to_float(images[i : i + batch].to(device))  # (b, C_in, H, W)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(net.features(x)[-1].float().mean((2, 3)))  # (b, C)
    return torch.cat(out)


def warm_up(runs: Sequence[StepRunner], n: int) -> list[int]:
    """``n`` warm-up steps of each run, in turn; the first one is FLOP-counted. Returns the FLOPs."""
    flops = [count_flops(run.eager) for run in runs]
    for _ in range(n - 1):
        for run in runs:
            run()
    return flops
