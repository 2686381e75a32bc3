"""Fitting stage 2 from a config, on a trained and frozen stage 1: :mod:`.stage2` (every
signal's state, the heads, the calibration bank) and :mod:`.fusion` (the ``image`` and
``map`` splits, chosen on held-out normals against pseudo-anomalies)."""
