"""The ``anomem`` command: turns arguments into a config and calls the library.

One module per group of verbs (``train``, ``score`` and the verbs on a fitted detector,
``bench``), the shared helpers in ``common`` and the parser in ``parser``.

Every user mistake (bad path, bad value, corrupt file) ends with a one-line
``anomem: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
import warnings

from anomem.cli.common import threshold_warnings_at_end
from anomem.cli.parser import build_parser
from anomem.errors import AnoMemError


def one_line(e: BaseException) -> str:
    """An error message on one line (YAML and torch errors span several; the CLI promises one)."""
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip())


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    """Warnings from the command read like its errors: one line, no source location."""
    return f"anomem: warning: {one_line(Warning(message))}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.command == "train":
        args.preset_given = args.preset is not None
        if args.preset is None:
            args.preset = "cpu-small"
        if not args.resume and not args.data:
            ap.error("train: --data is required (or --resume RUN_DIR)")
        if args.out is None:
            args.out = args.resume or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
        if not (0.0 <= args.ratio < 1.0):
            ap.error(f"--ratio must lie in [0, 1), got {args.ratio}")
    try:
        with threshold_warnings_at_end():
            return args.func(args)
    except AnoMemError as e:
        print(f"anomem: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomem: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main", "one_line"]
