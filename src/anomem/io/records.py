"""The record every score output shares: ``anomem score`` files, ``test_scores.csv`` and
the answers of ``anomem serve`` (docs/cli.md lists the columns)."""

from __future__ import annotations

import numpy as np

from anomem.thresholds import Threshold


def score_records(paths, scores: np.ndarray, threshold: Threshold | None = None, truth=None, heatmaps=None,
                  key: str | None = None) -> list[dict]:
    """One record per image, the columns every score file shares (docs/cli.md):

    ``path`` (``index`` when the images have no file), ``score`` (raw, higher = more
    anomalous), ``score_normalized`` (in [0, 1], 0.5 at the threshold), ``is_anomaly``
    (the 0/1 prediction at the threshold), ``threshold``; then ``truth_is_anomaly`` (the
    ground truth, where known) and ``heatmap`` (the heat-map file, with ``--maps``).
    Without a threshold the last three are None (empty in CSV, null in JSON).
    ``key`` renames the first column (``anomem serve`` calls it ``name``).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    norm = pred = None
    if threshold is not None:
        norm, pred = threshold.normalize(scores), threshold.predict(scores)
    key = key or ("path" if paths is not None else "index")
    rows = []
    for i, s in enumerate(scores):
        row = {key: str(paths[i]) if paths is not None else i, "score": float(s),
               "score_normalized": None if norm is None else float(norm[i]),
               "is_anomaly": None if pred is None else int(pred[i]),
               "threshold": None if threshold is None else float(threshold.value)}
        if truth is not None:
            row["truth_is_anomaly"] = int(bool(truth[i]))
        if heatmaps is not None:
            row["heatmap"] = str(heatmaps[i])
        rows.append(row)
    return rows


__all__ = ["score_records"]
