"""AnoMem: anomaly detection via multi-scale contrasted Hopfield memory.

Implements Jezequel et al., "Anomaly Detection via Multi-Scale Contrasted Memory"
(arXiv 2211.09041): stage 1 learns an encoder and per-scale memories of normal
prototypes with a contrastive loss; stage 2 scores images by their deviation from
the recalled prototypes, one-class or with a few labelled anomalies.
"""

__version__ = "0.1.0"

from anomem.config import AnoMemConfig, load_config  # noqa: E402
from anomem.detector import AnomalyMaps, AnoMem  # noqa: E402
from anomem.errors import AnoMemError, CheckpointError, ConfigError, DataError, NotFittedError  # noqa: E402

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
