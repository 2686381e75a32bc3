"""The estimator contract shared by every baseline detector, and its input checks.

The contract follows scikit-learn's estimator conventions (Buitinck et al., "API design
for machine learning software: experiences from the scikit-learn project", 2013) as
PyOD applies them to outlier detection (Zhao et al., "PyOD: A Python Toolbox for
Scalable Outlier Detection", JMLR 2019):

* ``__init__`` only stores its arguments, unchanged, under the same names; parameters
  are checked when ``fit`` runs, and a bad one raises :class:`~anomem.errors.ConfigError`.
* ``fit(X, y=None)`` checks its input, learns, and returns ``self``. Everything learned
  lives in attributes whose names end with ``_`` (so an unfitted detector has none).
* ``anomaly_score(X)`` returns a float64 array of shape (N,) where HIGHER = MORE
  ANOMALOUS. It never changes the detector.
* Randomness comes only from the ``random_state`` argument (an int, or ``None`` for
  scikit-learn's meaning: draw from NumPy's global random state).

Images. ``X`` is a NumPy array or a torch tensor of shape (N, H, W) (read as one
channel) or (N, C, H, W) with C in {1, 3}: uint8 (or any integer type) with pixel values
0..255, or floating point already scaled to [0, 1]. Both are turned into float32 pixels
in [0, 1]; anything else (NaN or infinite values, floats outside [0, 1], channels-last
arrays, booleans) raises :class:`~anomem.errors.DataError` with the reason.

Labels. ``y`` uses the paper's convention: 1 = normal, 0 = labelled anomaly; ``None``
means every training image is normal (the one-class setting).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from anomem.errors import ConfigError, DataError, NotFittedError
from anomem.inputs import as_images, binary_values, to_float

__all__ = ["BaseDetector", "check_images", "check_labels", "check_random_state_seed"]


def check_images(X: Any, *, name: str = "X") -> torch.Tensor:
    """Validate images and return them as a float32 CPU tensor (N, C, H, W) in [0, 1].

    The same checks as the detector (:func:`anomem.inputs.as_images`): (N, H, W) or
    (N, C, H, W) with C in {1, 3}; integer pixels 0..255 or floats in [0, 1].

    Raises:
        DataError: wrong type, shape, dtype or value range, NaN/inf, or no images.
    """
    return to_float(as_images(X, name).cpu()).contiguous()


def check_labels(y: Any, n: int, *, name: str = "y") -> np.ndarray:
    """Validate training labels and return the boolean mask of normal images.

    Args:
        y: ``None`` (all normal) or a 1-D array/tensor of length ``n`` holding only
            1 (normal) and 0 (labelled anomaly); booleans are read the same way.
        n: number of training images.
        name: the argument's name, used in error messages.

    Raises:
        DataError: wrong length or shape, a value other than 0/1, or no normal image.
    """
    if y is None:
        return np.ones(n, dtype=bool)
    normal = binary_values(y, n, name, "0 (anomaly) or 1 (normal)")
    if not normal.any():
        raise DataError(
            f"{name} labels no image as normal (1); at least one normal image is needed"
        )
    return normal


def check_random_state_seed(random_state: Any) -> int:
    """Turn ``random_state`` into an int seed.

    ``None`` draws a seed from NumPy's global random state (scikit-learn's meaning, so
    ``np.random.seed`` makes it reproducible); an int is used as is.

    Raises:
        ConfigError: anything other than ``None`` or a non-negative int.
    """
    if random_state is None:
        return int(np.random.randint(0, 2**31 - 1))
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(
        random_state, (int, np.integer)
    ):
        raise ConfigError(f"random_state must be None or an int, got {random_state!r}")
    if random_state < 0:
        raise ConfigError(f"random_state must be non-negative, got {random_state}")
    return int(random_state)


class BaseDetector:
    """Base class of the baselines: input checks, fitted-state checks, parameters.

    Subclasses implement ``_check_params()`` (raise ConfigError on bad arguments),
    ``_fit(images, normal)`` and ``_score(images) -> np.ndarray``; this class does the
    validation around them. ``images`` is a float32 CPU tensor (N, C, H, W) in [0, 1],
    ``normal`` a bool array (N,) with True for normal (y == 1) rows.
    """

    # --- parameters (scikit-learn style) -------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, by name (scikit-learn ``get_params``)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> BaseDetector:
        """Set constructor arguments by name; returns ``self``.

        Raises:
            ConfigError: a name that is not a constructor argument.
        """
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(
                    f"{type(self).__name__} has no parameter {key!r}; valid: {', '.join(valid)}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- the contract ---------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> BaseDetector:
        """Learn from training images ``X`` (and optional labels ``y``); returns ``self``.

        Args:
            X: (N, H, W) or (N, C, H, W) images, uint8 0..255 or float in [0, 1].
            y: optional (N,) labels, 1 = normal, 0 = labelled anomaly. Detectors that
                cannot use labels fit on the normal rows only (see each class).

        Raises:
            ConfigError: a constructor argument is invalid.
            DataError: ``X`` or ``y`` is invalid.
        """
        self._check_params()
        images = check_images(X)
        normal = check_labels(y, images.shape[0])
        self._fit(images, normal)
        self.input_shape_ = tuple(int(s) for s in images.shape[1:])
        return self

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Anomaly score of each image in ``X``: float64 array (N,), higher = more anomalous.

        Raises:
            NotFittedError: ``fit`` has not been called.
            DataError: ``X`` is invalid or its (C, H, W) differs from the training images.
        """
        self._check_is_fitted()
        images = check_images(X)
        shape = tuple(int(s) for s in images.shape[1:])
        if shape != self.input_shape_:
            raise DataError(
                f"X has images of shape (C, H, W) = {shape}, but {type(self).__name__} was "
                f"fitted on {self.input_shape_}"
            )
        return np.asarray(self._score(images), dtype=np.float64).reshape(images.shape[0])

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "input_shape_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) before anomaly_score"
            )

    # --- hooks ------------------------------------------------------------------------

    def _check_params(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fit(self, images: torch.Tensor, normal: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _score(self, images: torch.Tensor) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Raise ConfigError unless ``value`` is a number of ``kind`` in the given range."""
    ok_type = (int, np.integer) if kind is int else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok_type):
        raise ConfigError(
            f"{owner}: {name} must be {'an int' if kind is int else 'a number'}, got {value!r}"
        )
    if not np.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(
            f"{owner}: {name} must be {'>' if low_open else '>='} {low:g}, got {value!r}"
        )
    if high is not None and value > high:
        raise ConfigError(f"{owner}: {name} must be <= {high:g}, got {value!r}")
