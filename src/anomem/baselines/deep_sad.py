"""Deep SAD: deep semi-supervised anomaly detection (Ruff et al., ICLR 2020).

A re-implementation in plain torch of Ruff, Vandermeulen, Görnitz, Binder, Müller,
Müller & Kloft, "Deep Semi-Supervised Anomaly Detection", ICLR 2020 (arXiv 1906.02694),
following its official code (github.com/lukasruff/Deep-SAD-PyTorch) where the paper is
silent. With no labelled anomaly it is Deep SVDD (Ruff et al., "Deep One-Class
Classification", ICML 2018), one-class objective.

Objective (paper Eq. 4). A network phi without bias terms maps an image to a
``rep_dim``-dimensional code; c is a fixed centre. With n unlabelled/normal images x_i
and m labelled anomalies x~_j:

    L = 1/(n+m) * [ sum_i ||phi(x_i) - c||^2 + eta * sum_j (||phi(x~_j) - c||^2 + eps)^(-1) ]

(weight decay is the optimiser's L2 term). Normal images are pulled to c, labelled
anomalies pushed away (the inverse distance). The anomaly score is ||phi(x) - c||^2.
Labels are the paper's: y = 1 normal, y = 0 labelled anomaly.

Networks (paper appendix / official ``mnist_LeNet`` and ``cifar10_LeNet``). Every layer
has ``bias=False`` and every BatchNorm ``affine=False``: a bias (or BN shift) would let
the network map every input to c, the "hypersphere collapse" of Deep SVDD.

* 1 channel, 28x28: conv5x5(8) - BN - LeakyReLU - maxpool2, conv5x5(4) - BN - LeakyReLU -
  maxpool2, linear 4*7*7 -> rep_dim (default 32).
* 3 channels, 32x32: conv5x5(32), conv5x5(64), conv5x5(128), each BN - LeakyReLU -
  maxpool2, linear 128*4*4 -> rep_dim (default 128, as in the official code).

Images of any other size are resized (bilinear, antialiased) to 28x28 (1 channel) or
32x32 (3 channels) before the network, at fit and at scoring time; ``fit`` warns once.

Centre c: the mean of the initial network's outputs on the training normals (network in
eval mode, as the official code), then every coordinate with |c_k| < 0.1 is moved to
+-0.1 (keeping its sign): a zero coordinate could be matched trivially by zero weights.
Without pretraining the BatchNorm running statistics are still at their initial values
(mean 0, variance 1) at that moment, so the initial outputs are small and most
coordinates of c end up at +-0.1; we keep this official behaviour. (A variant that first
calibrated BatchNorm on the training normals measured 0.4-0.6 AUROC points lower on
Fashion-MNIST class 0, 10 epochs, at lr 1e-3 and at lr 1e-4.)

Autoencoder pretraining (``pretrain_epochs``). The official code first trains an
autoencoder (the encoder phi plus a mirrored decoder, squared reconstruction error,
all training images, labels unused) for 150 epochs, keeps its encoder weights as phi,
then trains Deep SAD for 150 epochs (its Fashion-MNIST command: lr 1e-4 for both,
weight decay 5e-7, AE weight decay 5e-4, milestone at epoch 50); about 16 minutes per
class on our 2-core CPU machines. Our default is ``pretrain_epochs=0`` (torch's default
random init): a baseline should run in about a minute per class on CPU, and pretraining
did not pay for its cost in our measurement (Fashion-MNIST class 0 vs the 10,000 test
images, 10 Deep SAD epochs at lr 1e-3: AUROC 90.8 without, 90.85 with 10 AE epochs,
which tripled the fit time). Set ``pretrain_epochs`` (e.g. 150) and
``lr_milestones=(50,)`` with ``epochs=150`` to follow the official recipe.

Speed. The networks are tiny, so on a shared CPU one intra-op thread is fastest: with
``torch.set_num_threads(1)``, 10 epochs on 6,000 Fashion-MNIST images took 22 s on our
loaded 2-core machine, against about 120 s with two threads. This class does not change
torch's thread settings; the caller decides.

Randomness. ``fit`` seeds the weight initialisation and the batch order from
``random_state`` through private generators (the global torch RNG is left as it was).
On CPU two fits with the same ``random_state`` give bit-identical scores; CUDA kernels
may differ in the last bits.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomem.baselines.base import BaseDetector, _check_number, check_random_state_seed
from anomem.errors import ConfigError

__all__ = ["DeepSAD", "LeNetDecoder", "LeNetEncoder", "init_center"]

logger = logging.getLogger(__name__)

#: eps inside the inverse-distance term for labelled anomalies (official code: 1e-6).
LOSS_EPS = 1e-6
#: coordinates of the centre closer to 0 than this are moved to +-CENTER_EPS (official: 0.1).
CENTER_EPS = 0.1

# Architecture per channel count: input side, conv channels, default rep_dim.
_ARCH: dict[int, tuple[int, tuple[int, ...], int]] = {
    1: (28, (8, 4), 32),
    3: (32, (32, 64, 128), 128),
}


class LeNetEncoder(nn.Module):
    """Bias-free LeNet-style encoder phi of Deep SAD (paper appendix; official code).

    ``len(channels)`` blocks conv5x5 (padding 2, no bias) - BatchNorm(affine=False,
    eps=1e-4) - LeakyReLU(0.01) - maxpool 2x2, then a bias-free linear map to ``rep_dim``.

    Args:
        in_channels: image channels.
        channels: output channels of the conv blocks.
        rep_dim: size of the code.
        size: input side (square images); must be divisible by 2**len(channels).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], rep_dim: int, size: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [
                nn.Conv2d(prev, ch, 5, padding=2, bias=False),
                nn.BatchNorm2d(ch, eps=1e-4, affine=False),
                nn.LeakyReLU(0.01),
                nn.MaxPool2d(2, 2),
            ]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.out_size = size // 2 ** len(channels)
        self.fc = nn.Linear(prev * self.out_size**2, rep_dim, bias=False)
        self.rep_dim = rep_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, size, size) -> (B, rep_dim)."""
        return self.fc(self.features(x).flatten(1))


class LeNetDecoder(nn.Module):
    """Mirror of :class:`LeNetEncoder` for autoencoder pretraining.

    Bias-free linear rep_dim -> channels[-1]*s*s, LeakyReLU, then per conv block in
    reverse: 2x upsampling, conv5x5 (no bias), and (except for the last) BatchNorm
    (affine=False) - LeakyReLU; a sigmoid maps to [0, 1] pixels (the official decoders
    upsample by interpolation too).
    """

    def __init__(self, out_channels: int, channels: Sequence[int], rep_dim: int, size: int):
        super().__init__()
        self.channels = tuple(channels)
        self.in_size = size // 2 ** len(channels)
        self.fc = nn.Linear(rep_dim, self.channels[-1] * self.in_size**2, bias=False)
        layers: list[nn.Module] = []
        rev = list(reversed(self.channels)) + [out_channels]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:], strict=True)):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(a, b, 5, padding=2, bias=False),
            ]
            if i < len(rev) - 2:
                layers += [nn.BatchNorm2d(b, eps=1e-4, affine=False), nn.LeakyReLU(0.01)]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, rep_dim) -> (B, C, size, size) in [0, 1]."""
        x = self.fc(z).view(z.shape[0], self.channels[-1], self.in_size, self.in_size)
        return torch.sigmoid(self.features(F.leaky_relu(x, 0.01)))


@torch.no_grad()
def init_center(
    net: nn.Module, data: torch.Tensor, batch_size: int = 1024, eps: float = CENTER_EPS
) -> torch.Tensor:
    """Deep SAD centre: mean of ``net`` outputs on ``data`` in eval mode, with the eps fix.

    As the official ``init_center_c``: the network in eval mode, then coordinates with
    |c_k| < eps set to +eps (c_k >= 0) or -eps (c_k < 0).
    """
    was_training = net.training
    net.eval()
    total = None
    for start in range(0, data.shape[0], batch_size):
        out = net(data[start : start + batch_size]).sum(0)
        total = out if total is None else total + out
    net.train(was_training)
    assert total is not None
    c = total / data.shape[0]
    small = c.abs() < eps
    return torch.where(
        small, torch.where(c < 0, torch.full_like(c, -eps), torch.full_like(c, eps)), c
    )


def deep_sad_loss(
    dist: torch.Tensor, anomaly: torch.Tensor, eta: float, eps: float = LOSS_EPS
) -> torch.Tensor:
    """Per-sample Deep SAD loss (paper Eq. 4) from squared distances ``dist`` (B,).

    ``dist`` for normal/unlabelled samples, ``eta / (dist + eps)`` for labelled anomalies
    (``anomaly`` True).
    """
    return torch.where(anomaly, eta / (dist + eps), dist)


class DeepSAD(BaseDetector):
    """Deep SAD (Ruff et al., "Deep Semi-Supervised Anomaly Detection", ICLR 2020).

    See the module docstring for the objective, networks and our defaults. Labelled
    anomalies (``y == 0``) ARE used: they are pushed away from the centre. Without
    labels (``y=None``) this is one-class Deep SVDD.

    Args:
        eta: weight of the labelled-anomaly term (paper: eta = 1).
        rep_dim: code size; ``None`` = 32 for 1-channel and 128 for 3-channel images
            (the official ``mnist_LeNet`` / ``cifar10_LeNet``).
        epochs: Deep SAD training epochs. Official 150 (after 150 AE epochs); ours 30:
            Fashion-MNIST class 0, lr 1e-4, no pretraining: AUROC 91.6 at 10 epochs,
            92.1 at 30 (the official code, 150 + 150 epochs: 86.0).
        batch_size: mini-batch size (official: 128).
        lr: Adam learning rate. 1e-4 as in the official Fashion-MNIST command (its
            script default is 1e-3); measured on Fashion-MNIST class 0, 10 epochs:
            AUROC 91.6 at 1e-4 vs 90.8 at 1e-3.
        weight_decay: Adam weight decay, L2 (official Fashion-MNIST setting 5e-7).
        lr_milestones: epochs after which the learning rate is multiplied by 0.1.
        pretrain_epochs: autoencoder pretraining epochs; 0 (default) = no pretraining,
            the network starts from a random init (the official code pretrains).
        pretrain_lr: Adam learning rate of the autoencoder (official command 1e-4).
        pretrain_weight_decay: Adam weight decay of the autoencoder (official 5e-4).
        device: ``"auto"`` (CUDA if available, else CPU), or a torch device string.
        random_state: seed of the initialisation and batch order (``None``: drawn from
            NumPy's global random state).

    Attributes:
        net_: the trained encoder phi (:class:`LeNetEncoder`), in eval mode.
        c_: the centre, tensor (rep_dim,) on ``device_``.
        device_: the torch device used.
        net_input_size_: side of the square network input (28 or 32).
        loss_history_: mean Deep SAD loss of each training epoch.
        pretrain_loss_history_: mean reconstruction loss of each pretraining epoch.
        n_labelled_anomalies_: number of ``y == 0`` training images used.
        input_shape_: (C, H, W) of the training images.
    """

    def __init__(
        self,
        eta: float = 1.0,
        rep_dim: int | None = None,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-4,
        weight_decay: float = 5e-7,
        lr_milestones: Sequence[int] = (),
        pretrain_epochs: int = 0,
        pretrain_lr: float = 1e-4,
        pretrain_weight_decay: float = 5e-4,
        device: str = "auto",
        random_state: int | None = None,
    ):
        self.eta = eta
        self.rep_dim = rep_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_milestones = lr_milestones
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.pretrain_weight_decay = pretrain_weight_decay
        self.device = device
        self.random_state = random_state

    # --- checks -----------------------------------------------------------------------

    def _check_params(self) -> None:
        name = type(self).__name__
        _check_number(name, "eta", self.eta, low=0.0, low_open=True)
        if self.rep_dim is not None:
            _check_number(name, "rep_dim", self.rep_dim, kind=int, low=1)
        _check_number(name, "epochs", self.epochs, kind=int, low=0)
        _check_number(name, "batch_size", self.batch_size, kind=int, low=1)
        _check_number(name, "lr", self.lr, low=0.0, low_open=True)
        _check_number(name, "weight_decay", self.weight_decay, low=0.0)
        _check_number(name, "pretrain_epochs", self.pretrain_epochs, kind=int, low=0)
        _check_number(name, "pretrain_lr", self.pretrain_lr, low=0.0, low_open=True)
        _check_number(name, "pretrain_weight_decay", self.pretrain_weight_decay, low=0.0)
        try:
            ms = [int(m) for m in self.lr_milestones]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name}: lr_milestones must be a sequence of ints, got {self.lr_milestones!r}"
            ) from None
        if any(m < 1 for m in ms) or ms != sorted(set(ms)):
            raise ConfigError(
                f"{name}: lr_milestones must be increasing positive ints, got {self.lr_milestones!r}"
            )
        self._resolve_device()
        if self.random_state is not None:
            check_random_state_seed(self.random_state)

    def _resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"DeepSAD: invalid device {self.device!r} ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"DeepSAD: device {self.device!r} requested but CUDA is not available"
            )
        return dev

    # --- fit ----------------------------------------------------------------------------

    def _prepare(self, images: torch.Tensor, size: int) -> torch.Tensor:
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 1)

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:
        seed = check_random_state_seed(self.random_state)
        device = self._resolve_device()
        c_in = images.shape[1]
        size, channels, default_rep = _ARCH[c_in]
        rep_dim = int(self.rep_dim) if self.rep_dim is not None else default_rep
        if images.shape[-2:] != (size, size):
            warnings.warn(
                f"DeepSAD: resizing {images.shape[-2]}x{images.shape[-1]} images to {size}x{size} "
                f"(its {c_in}-channel network expects {size}x{size})",
                UserWarning,
                stacklevel=3,
            )
        data = self._prepare(images, size).to(device)
        anomaly = torch.from_numpy(~normal).to(device)

        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            net = LeNetEncoder(c_in, channels, rep_dim, size)
            decoder = (
                LeNetDecoder(c_in, channels, rep_dim, size) if self.pretrain_epochs > 0 else None
            )
        net = net.to(device)

        pre_hist: list[float] = []
        if decoder is not None:
            pre_hist = self._pretrain(net, decoder.to(device), data, gen)

        c = init_center(net, data[anomaly.logical_not()])
        hist = self._train(net, c, data, anomaly, gen)
        net.eval()

        self.net_ = net
        self.c_ = c
        self.device_ = device
        self.net_input_size_ = size
        self.loss_history_ = hist
        self.pretrain_loss_history_ = pre_hist
        self.n_labelled_anomalies_ = int((~normal).sum())

    def _batches(self, n: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(n, generator=gen)
        bs = int(self.batch_size)
        for start in range(0, n, bs):
            yield perm[start : start + bs]

    def _pretrain(
        self, enc: nn.Module, dec: nn.Module, data: torch.Tensor, gen: torch.Generator
    ) -> list[float]:
        """Autoencoder pretraining on all training images (labels unused, as official)."""
        params = list(enc.parameters()) + list(dec.parameters())
        opt = torch.optim.Adam(
            params, lr=float(self.pretrain_lr), weight_decay=float(self.pretrain_weight_decay)
        )
        enc.train()
        dec.train()
        hist = []
        for epoch in range(int(self.pretrain_epochs)):
            total, count = 0.0, 0
            for idx in self._batches(data.shape[0], gen):
                x = data[idx.to(data.device)]
                rec = dec(enc(x))
                loss = ((rec - x) ** 2).flatten(1).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * x.shape[0]
                count += x.shape[0]
            hist.append(total / max(count, 1))
            logger.info(
                "DeepSAD pretrain epoch %d/%d: reconstruction loss %.6f",
                epoch + 1,
                self.pretrain_epochs,
                hist[-1],
            )
        return hist

    def _train(
        self,
        net: nn.Module,
        c: torch.Tensor,
        data: torch.Tensor,
        anomaly: torch.Tensor,
        gen: torch.Generator,
    ) -> list[float]:
        opt = torch.optim.Adam(
            net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay)
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(m) for m in self.lr_milestones], gamma=0.1
        )
        net.train()
        hist = []
        for epoch in range(int(self.epochs)):
            total, count = 0.0, 0
            for idx in self._batches(data.shape[0], gen):
                idx = idx.to(data.device)
                dist = ((net(data[idx]) - c) ** 2).sum(1)
                loss = deep_sad_loss(dist, anomaly[idx], float(self.eta)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * idx.numel()
                count += idx.numel()
            sched.step()
            hist.append(total / max(count, 1))
            logger.info("DeepSAD epoch %d/%d: loss %.6f", epoch + 1, self.epochs, hist[-1])
        return hist

    # --- score --------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, images.shape[0], 1024):
            x = self._prepare(images[start : start + 1024], self.net_input_size_).to(self.device_)
            out.append(((self.net_(x) - self.c_) ** 2).sum(1).cpu())
        return torch.cat(out).double().numpy()
