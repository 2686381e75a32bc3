"""Modern Hopfield memory of normal prototypes (paper Eq. 1).

Layering: :func:`hopfield_retrieve` is the math core (pure function on tensors),
:class:`HopfieldMemory` owns the learnable stored patterns X and the normalisation,
and the model applies one memory per scale to every spatial position of a feature map.

Retrieval is attention with the stored patterns as both keys and values, iterated:
ξ ← softmax(β ξ Xᵀ) X. All N queries (B·H·W positions) go through one matmul pair per
step, never a Python loop over positions.

Symbols: N queries, C channels, K stored patterns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anomem.choices import NORMALISATIONS
from anomem.errors import ConfigError


class Retrieval(NamedTuple):
    """Result of a Hopfield retrieval.

    Attributes:
        recollection: retrieved vectors ξ*, shape (N, C).
        weights: association weights softmax(β ξ Xᵀ) of the last step, shape (N, K);
            each row sums to 1.
        steps: number of update steps actually applied (<= max_steps).
    """

    recollection: torch.Tensor
    weights: torch.Tensor
    steps: int


def hopfield_energy(xi: torch.Tensor, patterns: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Energy E(ξ) = -β⁻¹ log Σ_k exp(β x_kᵀ ξ) + ½ ξᵀξ (Ramsauer et al. 2021).

    The update of Eq. 1 is a concave-convex step on E, so E never increases.

    Shape:
        xi (N, C), patterns (K, C) -> (N,)
    """
    beta = torch.as_tensor(beta, dtype=xi.dtype, device=xi.device)
    lse = torch.logsumexp(beta * xi @ patterns.T, dim=-1) / beta  # (N,)
    return -lse + 0.5 * (xi * xi).sum(-1)


def hopfield_retrieve(
    query: torch.Tensor,
    patterns: torch.Tensor,
    beta: float | torch.Tensor,
    max_steps: int = 1,
    tol: float = 0.0,
) -> Retrieval:
    """Iterate ξ ← softmax(β ξ Xᵀ) X from ξ⁽⁰⁾ = query (Eq. 1).

    Args:
        query: ξ⁽⁰⁾, shape (N, C).
        patterns: stored patterns X, shape (K, C).
        beta: inverse temperature β (float or 0-d tensor, may require grad).
        max_steps: number of updates at most.
        tol: if > 0, stop once max |ξ⁽ᵗ⁺¹⁾ - ξ⁽ᵗ⁾| < tol. The check reads a value back
            from the device, so training leaves it at 0 and runs ``max_steps`` updates.

    Shape:
        query (N, C), patterns (K, C) -> recollection (N, C), weights (N, K)
    """
    if query.ndim != 2 or patterns.ndim != 2 or query.shape[1] != patterns.shape[1]:
        raise ValueError(f"query (N, C) and patterns (K, C) must share C, got {tuple(query.shape)} and {tuple(patterns.shape)}")
    xi = query
    weights = query.new_empty(0)
    steps = 0
    for _ in range(max_steps):
        weights = torch.softmax(beta * (xi @ patterns.T), dim=-1)  # (N, K)
        new = weights @ patterns  # (N, C)
        steps += 1
        if tol > 0 and (new - xi).abs().max().item() < tol:
            xi = new
            break
        xi = new
    return Retrieval(xi, weights, steps)


class HopfieldMemory(nn.Module):
    """A Hopfield layer HF of size K holding learnable normal prototypes.

    Queries and stored patterns are mapped into a common space before retrieval:
    ``none`` (raw features), ``l2`` (unit vectors, so β scales cosine similarities),
    ``centered-l2`` (each vector minus its channel mean, then unit length: β scales
    Pearson correlations; post-ReLU features all lie in the positive orthant, where
    every pair has a high cosine and the softmax cannot single out a pattern) or
    ``layernorm`` (zero mean, unit variance per vector, no affine). The output lives
    in that space, and so does the deviation Δ = norm(z) - HF(norm(z)) (Eq. 8).

    Args:
        num_patterns: K (N_mem in the paper).
        dim: C, the channel count of the scale it serves.
        beta: inverse temperature β (paper: 2; the library's default is in the config).
        normalize: one of :data:`NORMALISATIONS`.
        max_steps, tol: see :func:`hopfield_retrieve`.
        learn_beta: make log β a parameter.

    The defaults that matter (β, normalisation, steps) have none here: they live once,
    in :class:`anomem.config.MemoryConfig`, and :func:`anomem.factory.build_net` passes them.

    Shape:
        input (N, C) -> Retrieval with recollection (N, C), weights (N, K)
    """

    def __init__(
        self,
        num_patterns: int,
        dim: int,
        *,
        beta: float,
        normalize: str,
        max_steps: int,
        learn_beta: bool = False,
        tol: float = 0.0,
    ) -> None:
        super().__init__()
        if normalize not in NORMALISATIONS:
            raise ConfigError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
        if num_patterns < 1 or dim < 1:
            raise ConfigError(f"a memory needs K >= 1 patterns of dim >= 1, got K={num_patterns}, dim={dim}")
        self.normalize = normalize
        self.max_steps = max_steps
        self.tol = tol
        # Unit-variance init: after l2/layernorm the scale does not matter; for "none"
        # it puts patterns at the typical norm of standardised features.
        self.patterns = nn.Parameter(torch.randn(num_patterns, dim))  # X: (K, C)
        log_beta = torch.tensor(float(beta)).log()
        if learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)
        self.last_steps = 0

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Map vectors (…, C) into the memory's space."""
        if self.normalize == "l2":
            return F.normalize(x, dim=-1)
        if self.normalize == "centered-l2":
            return F.normalize(x - x.mean(-1, keepdim=True), dim=-1)
        if self.normalize == "layernorm":
            return F.layer_norm(x, x.shape[-1:])
        return x

    def stored_patterns(self) -> torch.Tensor:
        """X in the memory's space, shape (K, C)."""
        return self.project(self.patterns)

    def forward(self, z: torch.Tensor) -> Retrieval:
        return self.recall(self.project(z))

    def recall(self, query: torch.Tensor) -> Retrieval:
        """Retrieve from an already projected query ξ⁽⁰⁾ = project(z), shape (N, C)."""
        patterns = self.stored_patterns().to(query.dtype)  # (K, C)
        out = hopfield_retrieve(query, patterns, self.beta.to(query.dtype), self.max_steps, self.tol)
        self.last_steps = out.steps
        return out

    def extra_repr(self) -> str:
        k, c = self.patterns.shape
        return f"K={k}, C={c}, normalize={self.normalize}, max_steps={self.max_steps}, tol={self.tol}"


class MapRetrieval(NamedTuple):
    """A memory applied at every position of a feature map (:func:`retrieve_map`).

    Attributes:
        query: projected features ξ = project(z), (B, C, H, W).
        recollection: HF(z) at every position, (B, C, H, W); Δ = query - recollection.
        weights: association weights of the last retrieval step, (B, H, W, K).
    """

    query: torch.Tensor
    recollection: torch.Tensor
    weights: torch.Tensor


def retrieve_map(memory: HopfieldMemory, fmap: torch.Tensor) -> MapRetrieval:
    """Apply a memory at every position of a feature map: (HF(z))_ij = HF(z_ij).

    Shape:
        fmap (B, C, H, W) -> query, recollection (B, C, H, W), weights (B, H, W, K)
    """
    b, c, h, w = fmap.shape
    flat = fmap.permute(0, 2, 3, 1).reshape(b * h * w, c)  # (B·H·W, C)
    query = memory.project(flat)
    out = memory.recall(query)  # recollection (B·H·W, C), weights (B·H·W, K)
    to_map = lambda t: t.reshape(b, h, w, c).permute(0, 3, 1, 2)  # noqa: E731  (B, C, H, W)
    return MapRetrieval(to_map(query), to_map(out.recollection), out.weights.reshape(b, h, w, -1))


__all__ = ["HopfieldMemory", "MapRetrieval", "Retrieval", "hopfield_energy", "hopfield_retrieve", "retrieve_map"]
