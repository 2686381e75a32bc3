"""AnoMem: anomaly detection via multi-scale contrasted Hopfield memory.

Implements Jezequel et al., "Anomaly Detection via Multi-Scale Contrasted Memory"
(arXiv 2211.09041): stage 1 learns an encoder and per-scale memories of normal
prototypes with a contrastive loss; stage 2 scores images by their deviation from
the recalled prototypes, one-class or with a few labelled anomalies.
"""

from anomem._version import __version__
from anomem.config import AnoMemConfig, load_config
from anomem.detector import AnomalyMaps, AnoMem
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError, NotFittedError

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
