"""Shared test fixtures.

``require_realdata`` guards tests that read real datasets installed on the machine: they
skip when the data is absent, except in CI (``CI=true``), where absence is a failure so
a broken data install cannot turn the real-data tests silently green.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def require_realdata() -> Callable[[str | Path, str], Path]:
    """A function ``(path, what) -> Path``: skip (locally) or fail (CI) if ``path`` is missing."""

    def require(path: str | Path, what: str) -> Path:
        path = Path(path)
        if path.exists():
            return path
        message = f"{what} not found at {path}"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: real data must be installed)")
        pytest.skip(message)

    return require
