"""``anomem serve``: a trained detector behind HTTP (:mod:`anomem.serve`)."""

from __future__ import annotations

import argparse
import math
import sys

from anomem.cli.common import _load_detector
from anomem.errors import DataError
from anomem.inputs import check_int_range

MIB = 2**20


def _mebibytes(name: str, value: float) -> int:
    if not (math.isfinite(value) and 0 < value <= 2**20):
        raise DataError(f"{name} must be a number of MiB in (0, 1048576], got {value}")
    return max(1, int(value * MIB))


def _count(name: str, value: float) -> int:
    if not (math.isfinite(value) and value == int(value) and 1 <= value <= 2**40):
        raise DataError(f"{name} must be a whole number in [1, 2^40], got {value}")
    return int(value)


def _seconds(name: str, value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise DataError(f"{name} must be a number of seconds in (0, 86400], got {value}")
    return float(value)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from anomem.serve import ServeLimits, create_app, run_server
    except ImportError as e:  # starlette, uvicorn or python-multipart not installed
        raise DataError(f"anomem serve needs the serve extra: pip install 'anomem[serve]' ({e})") from None

    check_int_range("--port", args.port, 0, 65535)
    limits = ServeLimits(max_files=check_int_range("--max-files", args.max_files, 1, 100_000),
                         max_file_bytes=_mebibytes("--max-file-mb", args.max_file_mb),
                         max_request_bytes=_mebibytes("--max-request-mb", args.max_request_mb),
                         max_batch=check_int_range("--max-batch", args.max_batch, 1, 65536),
                         max_pixels=_count("--max-pixels", args.max_pixels),
                         decode_budget=_mebibytes("--decode-budget-mb", args.decode_budget_mb),
                         request_timeout=_seconds("--request-timeout", args.request_timeout),
                         shutdown_timeout=_seconds("--shutdown-timeout", args.shutdown_timeout),
                         max_connections=None if args.max_connections is None else
                         check_int_range("--max-connections", args.max_connections, 1, 1 << 20))
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    det.inference_model  # noqa: B018 - refuse a detector that cannot score now, not at the first request
    h, w = det.image_size_
    what = f"preset {det.config_.preset}, {w}x{h} {'grey' if det.in_channels_ == 1 else 'RGB'}"

    def announce(url: str) -> None:
        print(f"anomem: serving {args.checkpoint} ({what}) on {url}; stop with SIGTERM or Ctrl-C",
              file=sys.stderr, flush=True)

    run_server(create_app(det, str(args.checkpoint), limits), args.host, args.port, announce)
    print("anomem: server stopped", file=sys.stderr, flush=True)
    return 0
