"""AnoMem: anomaly detection via multi-scale contrasted Hopfield memory.

Implements Jezequel et al., "Anomaly Detection via Multi-Scale Contrasted Memory"
(arXiv 2211.09041): stage 1 learns an encoder and per-scale memories of normal
prototypes with a contrastive loss; stage 2 scores images by their deviation from
the recalled prototypes, one-class or with a few labelled anomalies.
"""

from __future__ import annotations

from anomem._version import __version__
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError, NotFittedError

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
