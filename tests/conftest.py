"""Shared test fixtures.

``require_realdata`` guards tests that read real datasets installed on the machine: they
skip when the data is absent, except in CI (``CI=true``), where absence is a failure so
a broken data install cannot turn the real-data tests silently green.

oneDNN is held to AVX2 (see below), so that float32 scores are the same on every x86 CPU.

Hypothesis runs derandomized by default: each property test draws the same examples on
every machine and every run, so a clean clone is green or red for a reason, never by
luck. Cases it has found are pinned with ``@example`` next to their test. To search for
new cases, run with ``HYPOTHESIS_PROFILE=explore`` (random draws, the example database
kept under .hypothesis/, and the reproducing blob printed on a failure).
"""

from __future__ import annotations

import os

# One instruction set for oneDNN's kernels in every test process, whatever the CPU: a
# convolution's float32 result moves by ~3e-5 between its AVX2 and AVX-512 kernels, more
# than the 1e-5 the migration tests hold old files to (their values were recorded under
# AVX2, tests/fixtures/record.py). Set before torch runs its first convolution.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("derandomized", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


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


@pytest.fixture(autouse=True)
def _sigint_handler_restored():
    """Each test leaves Ctrl-C as it found it: a handler left ignoring SIGINT in this process
    is inherited by every child a later test starts, whose Ctrl-C then does nothing."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    if signal.getsignal(signal.SIGINT) is not before:
        signal.signal(signal.SIGINT, before)
