"""The ``anomem`` command: turns arguments into a config and calls the library.

One module per group of verbs (``train``, ``score`` and the verbs on a fitted detector,
``bench``), the shared helpers in ``common`` and the parser in ``parser``.

Every user mistake (bad path, bad value, corrupt file) ends with a one-line
``anomem: error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

from anomem.errors import AnoMemError


def one_line(e: BaseException) -> str:
    """An error message on one line (YAML and torch errors span several; the CLI promises one)."""
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip())


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    """Warnings from the command read like its errors: one line, no source location."""
    return f"anomem: warning: {one_line(Warning(message))}\n"


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl-C at any moment, imports included, ends with one line and exit code 130
        return _main(argv)
    except KeyboardInterrupt:
        print("anomem: interrupted", file=sys.stderr)
        if argv is None:  # the command itself, not a caller's in-process main([...])
            _exit_interrupted()
        return 130
    except BrokenPipeError:  # the reader went away (`anomem score … | head`): stop quietly, as Unix tools do
        try:  # and keep Python's own flush at exit from failing on the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass  # not a real stream (a test's capture)
        return 141  # 128 + SIGPIPE, what a shell reports for such a pipe


def _exit_interrupted() -> None:
    """Leave with 130 at once. A Ctrl-C that passed through code run by ``PyRun_*`` during an
    import (torch's, say) leaves CPython 3.11 marked "interrupted", and the interpreter then
    kills itself with SIGINT at exit (return code -2) although the command handled it.
    Every output is already whole or removed (staging and ``finally`` blocks ran)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def _main(argv: list[str] | None) -> int:
    from anomem.cli.common import threshold_warnings_at_end
    from anomem.cli.flags import check_flags, given_flags
    from anomem.cli.parser import build_parser

    warnings.formatwarning = _one_line_warning
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:  # file names that are not UTF-8 print as their own bytes, not a traceback
        reconfigure(errors="surrogateescape")
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
        check_flags(args, given_flags(build_parser, sys.argv[1:] if argv is None else argv))
        if getattr(args, "checkpoint", None) is not None:  # a run directory means its model.ckpt
            from anomem.io.checkpoint import resolve_checkpoint_path

            args.checkpoint = str(resolve_checkpoint_path(args.checkpoint))
        with threshold_warnings_at_end():
            return args.func(args)
    except AnoMemError as e:
        print(f"anomem: error: {one_line(e)}", file=sys.stderr)
        return 2


def __getattr__(name: str):
    if name == "build_parser":  # imported on use: it pulls in torch
        from anomem.cli.parser import build_parser

        return build_parser
    raise AttributeError(f"module 'anomem.cli' has no attribute {name!r}")


__all__ = ["build_parser", "main", "one_line"]
