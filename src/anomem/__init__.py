"""AnoMem: anomaly detection via multi-scale contrasted Hopfield memory.

Implements Jezequel et al., "Anomaly Detection via Multi-Scale Contrasted Memory"
(arXiv 2211.09041): stage 1 learns an encoder and per-scale memories of normal
prototypes with a contrastive loss; stage 2 scores images by their deviation from
the recalled prototypes, one-class or with a few labelled anomalies.
"""

from __future__ import annotations

import os

from anomem._version import __version__
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError, NotFittedError


def _cap_onednn_on_amd_avx512() -> None:
    """torch 2.14.1's oneDNN crashes (SIGSEGV) in the backward pass of channels-last
    convolutions on AMD CPUs with AVX-512 (an AMD EPYC here: stage-1 training on 48-px
    photographs; docs/reliability.md). Cap oneDNN at AVX2 there, before its first use,
    unless the user set ``ONEDNN_MAX_CPU_ISA``; channels-last training still pays under
    the cap (``benchmarks/onednn_isa.py``, docs/decisions.md Decision 12)."""
    if "ONEDNN_MAX_CPU_ISA" in os.environ:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            head = f.read(8192)
    except OSError:
        return
    if "AuthenticAMD" in head and "avx512" in head:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"


_cap_onednn_on_amd_avx512()

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: the command starts sooner
if TYPE_CHECKING:  # pragma: no cover
    from anomem.config import AnoMemConfig, load_config
    from anomem.detector import AnomalyMaps, AnoMem

# Imported on first use (PEP 562), so that `import anomem` (and the `anomem` command's
# start, where Ctrl-C must stop cleanly) does not wait for torch.
_LAZY = {"AnoMem": "anomem.detector", "AnomalyMaps": "anomem.detector", "AnoMemConfig": "anomem.config",
         "load_config": "anomem.config"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'anomem' has no attribute {name!r}")


__all__ = [
    "AnoMem",
    "AnoMemConfig",
    "AnoMemError",
    "AnomalyMaps",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "NotFittedError",
    "__version__",
    "load_config",
]
