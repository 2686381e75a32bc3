"""Training engine: the only module that knows optimisers, schedules, devices and AMP.

Stage 1 (paper Alg. 1): encoder and memories learn jointly with L_COM-MS (Eq. 7).
Stage 2: heads g^(s) learn on frozen deviation maps with the double hinge (Eq. 12).
Both use SGD with Nesterov momentum and cosine annealing (paper §4.2).

The dataset stays one tensor (uint8 or float) on the training device; each step indexes
a batch, converts it to float and augments it there, so no per-image Python runs inside
the loop and nothing is read back to the host except the logged loss once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from anomem.config import AnoMemConfig
from anomem.distributed import (
    convert_batchnorm,
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)
from anomem.errors import AnoMemError, ConfigError
from anomem.factory import build_views
from anomem.inputs import to_float
from anomem.model.losses import (
    ContrastedMemoryLoss,
    LossTerms,
    ScalePairs,
    make_objective,
)
from anomem.model.net import AnoMemNet
from anomem.model.pseudo import twin_defects
from anomem.model.schedule import cosine_with_warmup


class TrainingDivergedError(AnoMemError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


BATCH_PIXELS = 128 * 128 * 128  # a stage-1 batch holds at most this many input pixels (per view)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return dev


@dataclass(frozen=True)
class EpochLog:
    """What one stage-1 epoch did (written to metrics and the log)."""

    epoch: int
    loss: float
    contrastive: float
    variance: float
    lr: float
    seconds: float
    images_per_s: float
    retrieval_steps: tuple[int, ...]


class Stage1Trainer:
    """Runs stage 1 on an in-memory dataset.

    Under torchrun (a process group is initialised) every rank holds the whole dataset,
    draws the same global permutation and Ω (generators seeded by seed, epoch and step),
    trains on its slice of each global batch of ``train.batch_size`` images, and gathers
    both branches before the loss so negatives span the global batch. BatchNorm uses
    global-batch statistics, so a step equals the single-process step on the same batch.

    Args:
        net: the network (moved to ``device``).
        cfg: full config (train, loss, augment, memory sections are used).
        images: (N, C, H, W) uint8 or float in [0, 1].
        normal: (N,) bool, True for normal images (y = 1).
        device: where to train.
    """

    def __init__(self, net: AnoMemNet, cfg: AnoMemConfig, images: torch.Tensor, normal: torch.Tensor, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.net = net.to(device)
        if cfg.train.channels_last:  # faster convolutions on CUDA and on CPU (benchmarks/cpu_budget.py)
            self.net = self.net.to(memory_format=torch.channels_last)
        self.world, self.rank = world_size(), rank()
        if cfg.memory.init == "data":  # before DDP wraps the net, which broadcasts rank 0's weights
            self._init_memories(images, normal)
        self.model: nn.Module = self.net
        if is_distributed():
            convert_batchnorm(self.net)
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            torch.manual_seed(cfg.train.seed + 1000 * self.rank)  # different augmentations per rank
        self.images = images.to(device)
        self.normal = normal.to(device)
        n = images.shape[0]
        # Global batch; drop the ragged last one: NT-Xent needs negatives, BatchNorm a full batch.
        # Memory bounded whatever the image size: at most BATCH_PIXELS input pixels a batch.
        cap = max(2 * self.world, BATCH_PIXELS // (int(images.shape[-2]) * int(images.shape[-1])))
        self.batch_size = min(cfg.train.batch_size, n, cap) // self.world * self.world
        if self.batch_size < 2 * self.world:
            raise ConfigError(f"stage 1 needs at least {2 * self.world} training images, got {n}")
        self.local_batch = self.batch_size // self.world
        self.steps_per_epoch = max(1, n // self.batch_size)
        # Training is measured in optimizer steps: a small set gets more epochs, so that
        # at least train.min_steps are taken whatever the number of images.
        self.epochs = max(cfg.train.epochs, math.ceil(cfg.train.min_steps / self.steps_per_epoch))
        self.total_steps = self.epochs * self.steps_per_epoch
        self.views = build_views(cfg, tuple(images.shape[2:]), images.shape[1]).to(device)
        self.loss_fn = ContrastedMemoryLoss(
            make_objective(cfg.loss.objective, cfg.loss.temperature, cfg.loss.barlow_lambda),
            cfg.weights.settings(net.num_scales)["scales"],
            cfg.loss.variance_weight,
            cfg.loss.variance_eps,
            cfg.loss.local_weight,
            cfg.loss.local_margins,
        )
        lr = cfg.train.lr * self.batch_size / 256
        self.net.backbone.freeze(cfg.backbone.freeze)  # backbone.freeze: those stages take no step
        params = [p for p in self.net.parameters() if p.requires_grad]
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.SGD(
            params, lr=lr, momentum=cfg.train.momentum, nesterov=True, weight_decay=cfg.train.weight_decay, **fused
        )
        warm = cfg.train.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, self.total_steps, warm)
        )
        self.epoch = 0
        self.amp = device.type == "cuda" and cfg.train.amp
        self.step_fn: Callable[[torch.Tensor, int], LossTerms] = self._step
        if cfg.train.compile:
            self.step_fn = torch.compile(self._step)

    def _init_memories(self, images: torch.Tensor, normal: torch.Tensor) -> None:
        """Seed the memories with features of up to 512 random training normals."""
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        pool = normal.nonzero().flatten().cpu()
        pick = pool[torch.randperm(pool.numel(), generator=g)[:512]].to(self.device)
        gen = torch.Generator(self.device).manual_seed(self.cfg.train.seed)
        self.net.init_memories_from(to_float(images.to(self.device)[pick]), gen)

    def _generator(self, *key: int) -> torch.Generator:
        """A generator seeded by (seed, *key): equal on every rank, independent of history."""
        g = torch.Generator(self.device)
        mixed = self.cfg.train.seed
        for k in key:
            mixed = (mixed * 1_000_003 + k + 1) % (2**63)
        return g.manual_seed(mixed)

    def loss_on_views(self, x1: torch.Tensor, x2: torch.Tensor, normal: torch.Tensor, step: int,
                      altered: torch.Tensor | None = None) -> LossTerms:
        """L_COM-MS (Eq. 7) for this rank's slice of two augmented views; ``altered`` marks
        the pixels of local defects drawn on both (:meth:`local_negatives`).

        Shape:
            x1, x2 (b, C, H, W) float, normal (b,) bool, altered (b, 1, H, W) bool -> scalar terms
        """
        if self.cfg.train.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            pairs = self.model(x1, x2, normal, self.cfg.memory.sample_ratios, self._generator(1, step), altered,
                               self.cfg.loss.local_cover)
        # Global batch for the negatives: (P, b, C) -> (P, W·b, C), gradients kept.
        pairs = [ScalePairs(gather_with_grad(p.mem.float(), 1), gather_with_grad(p.other.float(), 1),
                            None if p.normal is None else gather_no_grad(p.normal.to(torch.uint8), 1).bool(),
                            None if p.deviation is None else gather_with_grad(p.deviation.float(), 1),
                            None if p.partial is None else gather_no_grad(p.partial.to(torch.uint8), 1).bool())
                 for p in pairs]
        return self.loss_fn(pairs, gather_no_grad(normal.to(torch.uint8)).bool())

    def local_negatives(self, x1: torch.Tensor, x2: torch.Tensor, normal: torch.Tensor, step: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A share ``pseudo.local`` of the normals get one local defect, the same on both
        views (:func:`anomem.model.pseudo.twin_defects`); returns the views and the mask of
        changed pixels (None when the share is 0). Drawn from (seed, step, rank): a resumed
        run draws the same defects.

        Shape:
            x1, x2 (b, C, H, W), normal (b,) -> x1', x2' (b, C, H, W), mask (b, 1, H, W) bool
        """
        p = self.cfg.pseudo
        if not (p.enabled and p.local > 0):
            return x1, x2, None
        gen = self._generator(2, step, self.rank)
        pick = ((torch.rand(x1.shape[0], generator=gen, device=x1.device) < p.local) & normal).nonzero().flatten()
        mask = torch.zeros(x1.shape[0], 1, *x1.shape[2:], dtype=torch.bool, device=x1.device)
        if pick.numel():
            x1, x2 = x1.clone(), x2.clone()
            x1[pick], x2[pick], mask[pick] = twin_defects(x1[pick], x2[pick], p.defects, p.defect_size, gen)
        return x1, x2, mask

    def _step(self, idx: torch.Tensor, step: int) -> LossTerms:
        """One optimiser step on the images ``idx``; the loss terms, detached."""
        x = to_float(self.images[idx])  # (b, C, H, W)
        normal = self.normal[idx]
        with torch.no_grad():
            x1, x2 = self.views(x), self.views(x)  # t(X), t'(X): independent per-sample draws
            x1, x2, altered = self.local_negatives(x1, x2, normal, step)
        terms = self.loss_on_views(x1, x2, normal, step, altered)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return LossTerms(terms.total.detach(), terms.contrastive.detach(), terms.variance.detach())

    def run_epoch(self) -> EpochLog:
        """One pass over a fresh random permutation of the data."""
        self.net.train()
        t0 = time.perf_counter()
        n = self.images.shape[0]
        perm = torch.randperm(n, generator=self._generator(0, self.epoch), device="cpu").to(self.device)
        sums = torch.zeros(3, device=self.device)
        for i in range(self.steps_per_epoch):
            start = i * self.batch_size + self.rank * self.local_batch
            idx = perm[start : start + self.local_batch]  # this rank's slice of the global batch
            sums += torch.stack(self.step_fn(idx, self.epoch * self.steps_per_epoch + i))
        # A finite loss can still be followed by a step that overflows the weights, and the
        # caller checkpoints after this returns: check both, in the one host sync per epoch.
        state = [t for t in self.net.state_dict().values() if t.is_floating_point()]
        weights_ok = torch.stack([torch.isfinite(t).all() for t in state]).all()
        *means, weights_ok = torch.cat([sums / self.steps_per_epoch, weights_ok[None].to(sums.dtype)]).tolist()
        if not (all(math.isfinite(v) for v in means) and weights_ok):
            what = "loss" if not all(math.isfinite(v) for v in means) else "weights"
            raise TrainingDivergedError(
                f"stage-1 {what} became non-finite at epoch {self.epoch + 1} (loss {means[0]}); "
                "lower train.lr or check the input images; the last checkpoint (if any) holds the last good epoch"
            )
        self.epoch += 1
        dt = time.perf_counter() - t0
        return EpochLog(
            epoch=self.epoch,
            loss=means[0],
            contrastive=means[1],
            variance=means[2],
            lr=self.scheduler.get_last_lr()[0],
            seconds=dt,
            images_per_s=self.steps_per_epoch * self.batch_size / dt,
            retrieval_steps=tuple(m.last_steps for m in self.net.memories),
        )

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper once training is over.

        DDP holds a reference to the process group; while it lives, the group's gloo
        worker threads stay up, and if they are still releasing a finished collective
        when the interpreter shuts down the process aborts ("terminate called without an
        active exception"). Call this before ``torch.distributed.destroy_process_group``.
        """
        self.model = self.net

    def state_dict(self) -> dict:
        """Optimizer, schedule, epoch and RNG state, for resuming.

        Call it at an epoch boundary (after :meth:`run_epoch`): the global RNG state
        captured here is what the next epoch's augmentations (kornia) draw from, so a
        resumed run repeats the uninterrupted one exactly on CPU. The data order and Ω
        come from generators seeded by (seed, epoch, step) and need no state.
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "rng_cpu": torch.get_rng_state(),
            # This process's device only: a resume may see a different number of GPUs.
            "rng_cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [],
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state(state["rng_cuda"][0], self.device)
        if self.rank > 0:
            # The checkpoint holds rank 0's generators; other ranks need streams of their own
            # (as at the start), so their augmentations are not copies of rank 0's.
            torch.manual_seed(self.cfg.train.seed + 1000 * self.rank + 7919 * self.epoch)


__all__ = [
    "EpochLog",
    "Stage1Trainer",
    "TrainingDivergedError",
    "cosine_with_warmup",
    "resolve_device",
]
