"""Export a fitted detector's scorer as one pure ``nn.Module``, to TorchScript or ONNX.

:class:`ExportableScorer` maps images to (image score, fused heat-map) with no
Python-side control flow that depends on data, so tracing captures all of it:

* the Hopfield retrieval runs exactly ``memory.max_steps`` updates (Eq. 1). The Python
  model does the same unless ``memory.tol`` > 0, in which case it may stop earlier and
  the exported model's scores differ slightly;
* stage 2 is frozen into the graph as it is at export time: supervised heads (Eq. 10)
  when they are in use, else the one-class norm (Eq. 9); the per-scale standardisation
  and λ-weighted merge (Eq. 13) follow;
* φ's adaptive average pooling is a fixed (h·w → pool²) averaging matrix, and the
  heat-map smoothing a fixed Gaussian kernel with reflect padding, both computed once
  for the detector's input size (ONNX has no adaptive pooling for sizes that do not
  divide evenly).

Inputs must be float images in [0, 1] of exactly the detector's (C, H, W); the batch
size is free. ``onnx`` and ``onnxruntime`` (the ``export`` extra) are imported only here.

Outputs, by name in the ONNX graph: ``score`` (B,), higher = more anomalous, equal to
``AnoMem.anomaly_score``; ``fused_map`` (B, H, W), equal to ``AnoMem.anomaly_maps(...).fused``.
The forward returns them as a plain tuple because tracing and ONNX need one.

Symbols: B batch, C channels, H W input size, h w feature size, K stored patterns.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from anomem.checkpoint import atomic_write_bytes
from anomem.errors import ConfigError, DataError
from anomem.memory import hopfield_retrieve
from anomem.scoring import bank_distances, mix_bank

if TYPE_CHECKING:  # pragma: no cover
    from anomem.detector import AnoMem

__all__ = ["FORMATS", "ExportableScorer", "export_scorer"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


def _pool_matrix(h: int, w: int, pool: int) -> torch.Tensor:
    """The linear map of ``adaptive_avg_pool2d(·, pool)`` on an h×w grid, (h·w, pool²)."""
    basis = torch.eye(h * w).reshape(h * w, 1, h, w)  # one map per position
    return F.adaptive_avg_pool2d(basis, pool).reshape(h * w, pool * pool)


def _gaussian_kernel(sigma: float, side: int) -> torch.Tensor:
    """The 1-D kernel :func:`anomem.detector.smooth_maps` uses (via kornia), (k,)."""
    from kornia.filters import get_gaussian_kernel1d

    k = max(3, 2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * side - 1)
    return get_gaussian_kernel1d(k, sigma).reshape(-1).float()


class ExportableScorer(nn.Module):
    """Image -> (score, fused heat-map) for one fitted :class:`~anomem.AnoMem`.

    Args:
        det: a fitted detector (copied; the detector is not changed).
        sigma: heat-map smoothing σ in pixels; None = the detector's default.

    Shape:
        x (B, C, H, W) float in [0, 1] -> score (B,), fused_map (B, H, W)
    """

    def __init__(self, det: AnoMem, sigma: float | None = None) -> None:
        super().__init__()
        det._check_fitted()
        net = copy.deepcopy(det.net_).cpu().float().eval()
        scorer = copy.deepcopy(det.scorer_).cpu().float().eval()
        self.backbone = net.backbone
        self.memories = net.memories
        self.register_buffer("pixel_mean", net.pixel_mean.clone())
        self.register_buffer("pixel_std", net.pixel_std.clone())
        self.image_size = tuple(det.image_size_)
        self.in_channels = int(det.in_channels_)
        self.supervised = bool(det._use_heads())
        self.standardize = bool(scorer.standardize)
        self.heads = scorer.heads if self.supervised else nn.ModuleList()
        mean, std = (scorer.head_mean, scorer.head_std) if self.supervised else (scorer.score_mean, scorer.score_std)
        self.register_buffer("score_mean", mean.clone())
        self.register_buffer("score_std", std.clone())
        self.register_buffer("scale_weights", scorer.scale_weights.clone())
        self.register_buffer("map_mean", scorer.map_mean.clone())
        self.register_buffer("map_std", scorer.map_std.clone())
        self.use_banks = bool(scorer.has_banks and scorer.standardize)
        self.bank_k, self.bank_weight = int(scorer.bank_k), float(scorer.bank_weight)
        self.banks = nn.ParameterList(
            nn.Parameter(b.clone(), requires_grad=False) for b in (scorer.banks if self.use_banks else [])
        )
        self.register_buffer("bank_mean", scorer.bank_mean.clone())
        self.register_buffer("bank_std", scorer.bank_std.clone())
        with torch.no_grad():
            probe = torch.zeros(1, self.in_channels, *self.image_size)
            self.feature_sizes = [tuple(f.shape[2:]) for f in net.features(probe)]
        self.pools = nn.ParameterList()  # (h·w, pool²) per scale, supervised only
        if self.supervised:
            for (h, w), head in zip(self.feature_sizes, self.heads):
                self.pools.append(nn.Parameter(_pool_matrix(h, w, head.pool), requires_grad=False))
        sigma = det.map_sigma_pixels if sigma is None else float(sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        self.smooth = sigma > 0
        kernel = _gaussian_kernel(sigma, min(self.image_size)) if self.smooth else torch.ones(1)
        n, k = len(self.memories), kernel.shape[0]
        self.pad = k // 2
        self.register_buffer("kernel_x", kernel.reshape(1, 1, 1, k).repeat(n, 1, 1, 1))  # depthwise (S, 1, 1, k)
        self.register_buffer("kernel_y", kernel.reshape(1, 1, k, 1).repeat(n, 1, 1, 1))  # (S, 1, k, 1)
        for p in self.parameters():
            p.requires_grad_(False)

    def _blur(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian, reflect borders: (B, S, H, W) -> (B, S, H, W)."""
        s, p = self.kernel_x.shape[0], self.pad
        x = F.pad(maps, (p, p, p, p), mode="reflect")
        return F.conv2d(F.conv2d(x, self.kernel_x, groups=s), self.kernel_y, groups=s)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x - self.pixel_mean[:, None, None]) / self.pixel_std[:, None, None]
        per_scale, maps, near = [], [], []
        for s, (fmap, mem) in enumerate(zip(self.backbone(x), self.memories)):
            c, h, w = fmap.shape[1], self.feature_sizes[s][0], self.feature_sizes[s][1]
            query = mem.project(fmap.permute(0, 2, 3, 1).reshape(-1, c))  # ξ: (B·h·w, C)
            rec = hopfield_retrieve(query, mem.stored_patterns(), mem.beta, mem.max_steps, 0.0).recollection
            delta = (query - rec).reshape(-1, h * w, c)  # Δ (Eq. 8): (B, h·w, C)
            if self.supervised:
                pooled = (delta.transpose(1, 2) @ self.pools[s]).flatten(1)  # φ(Δ): (B, C·pool²)
                per_scale.append(self.heads[s].distance(pooled))  # Eq. 10
            else:
                per_scale.append(delta.flatten(1).norm(dim=1))  # Eq. 9
            maps.append(delta.norm(dim=2).reshape(-1, 1, h, w))  # ‖Δ_ij‖: (B, 1, h, w)
            if self.use_banks:
                near.append(bank_distances(fmap.mean((2, 3)), self.banks[s], self.bank_k))
        scores = torch.stack(per_scale, 1)  # (B, S)
        if self.standardize:
            scores = (scores - self.score_mean) / self.score_std
            if self.use_banks:
                bank = (torch.stack(near, 1) - self.bank_mean) / self.bank_std
                scores = mix_bank(scores, bank, self.bank_weight)
        weights = self.scale_weights
        score = (scores * weights).sum(1) / weights.sum()  # Eq. 13
        up = torch.cat(
            [F.interpolate(m, size=self.image_size, mode="bilinear", align_corners=False) for m in maps], 1
        )  # (B, S, H, W)
        if self.smooth:
            up = self._blur(up)
        z = (up - self.map_mean[:, None, None]) / self.map_std[:, None, None]
        fused = (z * weights[:, None, None]).sum(1) / weights.sum()  # (B, H, W)
        return score, fused


def export_scorer(det: AnoMem, path: str | Path, format: str = "onnx", sigma: float | None = None) -> Path:
    """Write the detector's scorer to ``path`` as TorchScript or ONNX.

    Args:
        det: a fitted detector.
        path: output file (its directory must exist).
        format: ``"onnx"`` (opset 17, dynamic batch, needs the ``onnx`` package) or
            ``"torchscript"`` (``torch.jit.load``-able).
        sigma: heat-map smoothing σ in pixels; None = the detector's default.

    Returns:
        the path written.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    module = ExportableScorer(det, sigma).eval()
    example = torch.rand(2, module.in_channels, *module.image_size)
    if format == "torchscript":
        with torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(module, example, check_trace=False)
        atomic_write_bytes(path, lambda f: torch.jit.save(traced, f))
        return path
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the 'onnx' package: pip install 'anomem[export]'") from None
    buf = io.BytesIO()  # exported and checked in memory, then written atomically
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["image"],
            output_names=["score", "fused_map"],
            dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "fused_map": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript dependency
        )
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return path


class _quiet_tracing(warnings.catch_warnings):
    """Silence what tracing says about this module that does not apply to it: the
    shape checks in :func:`~anomem.memory.hopfield_retrieve` become constants (the
    shapes are fixed); and torch's notices that ``torch.jit`` and the TorchScript-based
    ONNX exporter are deprecated (the torch.export-based one needs ``onnxscript``)."""

    def __enter__(self):  # type: ignore[override]
        out = super().__enter__()
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX", category=DeprecationWarning)
        return out
