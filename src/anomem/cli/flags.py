"""Flags that conflict or would do nothing are refused, not ignored.

An option the command would ignore (``--maps-format`` without ``--maps``, ``--epochs``
on ``train --resume``, a folder-layout flag with a named dataset) means the user
expects an effect they will not get. :func:`given_flags` tells which options were
typed (not merely defaulted), :func:`check_flags` refuses those that do not apply, in
one table per command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from anomem.errors import DataError

_UNSET = object()
FOLDER_LAYOUT = ("normal_dir", "abnormal_dir", "mask_dir", "normal_split_ratio", "normal_test_dir")


def given_flags(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv`` (parsed again with no defaults)."""
    ap = build_parser()
    parsers, appended = [ap], set()
    while parsers:
        p = parsers.pop()
        for action in p._actions:  # argparse keeps its actions private; reading them is stable since 3.2
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif isinstance(action, argparse._AppendAction):  # appends to its default: None when not typed
                action.default = None
                appended.add(action.dest)
            elif action.option_strings and action.default is not argparse.SUPPRESS:
                action.default = _UNSET
    ns = ap.parse_args(argv)
    return {k for k, v in vars(ns).items() if v is not _UNSET and not (k in appended and v is None)}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _refuse(given: set[str], dests: tuple[str, ...] | list[str], why: str) -> None:
    typed = [_flag(d) for d in dests if d in given]
    if typed:
        raise DataError(f"{', '.join(typed)} {'does' if len(typed) == 1 else 'do'} nothing {why}; drop "
                        f"{'it' if len(typed) == 1 else 'them'}")


def _is_folder(spec: str | None) -> bool:
    return spec is not None and Path(spec).is_dir()


def check_flags(args: argparse.Namespace, given: set[str]) -> None:
    """Raise DataError naming the first option that conflicts or does nothing."""
    cmd = args.command
    if cmd == "score":
        if args.maps is None:
            _refuse(given, ("maps_format",), "without --maps")
        implied = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(
            Path(args.out or "").suffix.lower())
        if "format" in given and implied is not None and implied != args.format:
            raise DataError(f"--format {args.format} conflicts with --out {args.out!r} (a .{implied} name); "
                            "give one or make them agree")
    elif cmd == "benchmark":
        if args.protocol != "deep-sad":
            _refuse(given, ("pollution",), f"with --protocol {args.protocol} (γ_p is the deep-sad protocol's)")
        if args.protocol != "ood":
            _refuse(given, ("ood",), f"with --protocol {args.protocol} (it names the ood protocol's test set)")
    elif cmd == "threshold":
        if args.value is not None:
            _refuse(given, ("fpr", "method", "recall"), "with --value (the threshold is set by hand)")
        if args.method != "recall":
            _refuse(given, ("recall",), "without --method recall")
    elif cmd == "evaluate":
        if _is_folder(args.data):
            _refuse(given, ("normal_class", "defects", "data_root", "max_images"),
                    f"with the dataset folder {args.data!r} (they apply to named datasets)")
        else:
            _refuse(given, FOLDER_LAYOUT, f"with the named dataset {args.data!r} (they describe dataset folders)")
    elif cmd == "train":
        if args.resume:
            _refuse(given, ("data", "data_root", "normal_class", "ratio", "channels", "image_size", "out", "preset",
                            "config", "set", "seed", "epochs", "device", *FOLDER_LAYOUT),
                    "with --resume (a run continues with the arguments it was started with, from args.json)")
        elif _is_folder(args.data):
            _refuse(given, ("normal_class", "ratio", "data_root"),
                    f"with the dataset folder {args.data!r} (its anomalies are the ones in its folders)")
        elif args.data is not None:
            _refuse(given, ("channels", "image_size", *FOLDER_LAYOUT),
                    f"with the named dataset {args.data!r} (they describe dataset folders)")
