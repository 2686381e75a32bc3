"""The verbs that use a fitted detector: ``score``, ``threshold``, ``evaluate``, ``export``, ``refit``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from anomem import __version__
from anomem.cli.common import (
    _load_detector,
    _warn_inverted,
    folder_layout,
    format_records,
    report_conversions,
    score_records,
    summary_stream,
    threshold_line,
)
from anomem.cli.flags import FOLDER_LAYOUT
from anomem.cli.train import (
    _existing,
)
from anomem.errors import DataError
from anomem.inputs import check_batch_size, check_int_range
from anomem.io.checkpoint import atomic_write_text
from anomem.io.outputs import (
    check_claimable,
    check_file_target,
    check_outputs,
    real,
    unique_names,
)
from anomem.io.staging import StagedDir, deferred_interrupts
from anomem.limits import check_seed


def cmd_score(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images

    check_batch_size(args.batch_size, "--batch-size")
    check_outputs([("--out", args.out), ("--maps", args.maps)],
                  [("checkpoint", args.checkpoint), *(("path", p) for p in args.inputs)])
    fmt = args.format or _format_of(args.out)
    out = args.out or "-"  # stdout
    check_file_target("--out", out, ("text",))
    if args.maps is not None:
        check_claimable("--maps", args.maps, "score --maps")
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    imgs = load_images(args.inputs, image_size=det.image_size_, channels=det.in_channels_, skip_invalid=args.skip_invalid)
    report_conversions(imgs.meta.get("conversions"), det, args.strict)
    _report_skipped(imgs)
    th = det.threshold_
    if args.maps is None:
        scores = det.anomaly_score(imgs.images, batch_size=args.batch_size)
        atomic_write_text(out, format_records(score_records(imgs.paths, scores, th), fmt))
    else:  # filled beside the target and put in place whole: never half a folder, never mixed
        with StagedDir("--maps", args.maps, "score --maps") as staged:
            maps = det.anomaly_maps(imgs.images, batch_size=args.batch_size)
            scores = maps.scores
            heatmaps = [str(staged.final(f)) for f in _write_heatmaps(det, staged.path, imgs, maps, th, args.maps_format)]
            text = format_records(score_records(imgs.paths, scores, th, heatmaps=heatmaps), fmt)
            # the folder and the score file that points into it land together: a Ctrl-C
            # between the two would leave new maps beside an old (or no) score file
            with deferred_interrupts():
                staged.commit()
                atomic_write_text(out, text)
        print(f"heat-maps: {len(heatmaps)} {args.maps_format} files in {staged.target}", file=sys.stderr)
    if args.out is not None:  # on stdout's stream (`-`, /dev/stdout) the summary would join the scores
        print(f"scored {len(scores)} images -> {out}" + ("" if th is None else f" ({threshold_line(th)})"),
              file=summary_stream(out))
    if th is None:
        print("anomem: this detector has no threshold: the is_anomaly column is empty (set one with "
              "`anomem threshold`)", file=sys.stderr)
    return 0


def _format_of(out: str | None) -> str:
    """The score file's format from its suffix: .json a JSON list, .jsonl JSON lines, else CSV."""
    suffix = "" if out is None else Path(out).suffix.lower()
    return {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "csv")


def _load_matching(load_images, paths, det):
    """Images for ``det`` (threshold, refit), saying on stderr what was converted to fit it."""
    imgs = load_images(paths, image_size=det.image_size_, channels=det.in_channels_)
    report_conversions(imgs.meta.get("conversions"), det, strict=False)
    return imgs.images


def _report_skipped(imgs) -> None:
    skipped = imgs.meta.get("skipped") or []
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        print(f"anomem: skipped {len(skipped)} invalid file(s): {shown}", file=sys.stderr)


MAP_SUFFIX = {"figure": ".png", "png": ".png", "npy": ".npy"}


def _write_heatmaps(det, out: Path, imgs, maps, th, fmt: str) -> list[Path]:
    """One file per image, named after it (unique, see outputs.unique_names); returns the paths.

    ``figure``: image, fused overlay, per-scale maps, score (+ prediction) in the title;
    ``png``: the fused map alone, coloured, at the detector's input size; ``npy``: its float32 values.
    Colours share one range over the whole set (report.map_range).
    """
    from anomem.bench.report import map_range, save_heatmap_map, save_heatmap_png

    vrange = map_range(maps.fused)
    pred = None if th is None else th.predict(maps.scores)
    files = [out / name for name in unique_names(imgs.paths, MAP_SUFFIX[fmt])]
    for i, path in enumerate(imgs.paths):
        if fmt != "figure":
            save_heatmap_map(files[i], maps.fused[i], fmt, vrange=vrange)
            continue
        label = "" if pred is None else f" ({'anomaly' if pred[i] else 'normal'})"
        name = Path(path).name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")  # any file name draws
        title = f"{name}: score {float(maps.scores[i]):.4g}{label}"
        save_heatmap_png(files[i], imgs.images[i], maps.fused[i], maps.per_scale[i], title,
                         scale_names=det.config_.backbone.taps, vrange=vrange)
    return files


def cmd_threshold(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images

    _check_checkpoint_out(args, [("--normals", p) for p in args.normals or ()] + [("--labelled", args.labelled)])
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    load = lambda p: _load_matching(load_images, p, det)  # noqa: E731
    given = [name for name in ("value", "normals", "labelled") if getattr(args, name) is not None]
    if len(given) > 1:
        raise DataError(f"give at most one of --value, --normals, --labelled (got {', '.join('--' + g for g in given)})")
    if args.value is not None:
        det.set_threshold(args.value)
    elif args.labelled is not None:
        root = Path(args.labelled)
        if not (root / "normal").is_dir() or not (root / "anomaly").is_dir():
            raise DataError(f"--labelled {root}: expected folders {root}/normal and {root}/anomaly")
        if args.fpr is not None:
            raise DataError("--fpr sets a threshold from normals only; with --labelled use --method f1 or recall")
        det.calibrate_threshold(load(root / "normal"), load(root / "anomaly"), method=args.method or "f1", recall=args.recall)
    else:
        if args.method not in (None, "fpr"):
            raise DataError(f"--method {args.method} needs labelled anomalies (--labelled DIR)")
        normals = None if args.normals is None else load(args.normals)
        det.calibrate_threshold(normals, fpr=args.fpr)
    out = args.out or args.checkpoint
    det.save(out, meta=det.meta_)
    print(f"{threshold_line(det.threshold_)} -> {out}", file=summary_stream(out))
    return 0


class _EvaluationSet(NamedTuple):
    """What `anomem evaluate` scores; ``conversions`` counts what is changed to fit the
    detector's input (see report_conversions); ``types`` names each anomaly's kind ("" for normals)."""

    images: torch.Tensor
    is_anomaly: torch.Tensor
    masks: torch.Tensor | None
    names: list[str] | None
    description: str
    conversions: dict | None
    types: list[str] | None = None


def _evaluation_set(args: argparse.Namespace, det) -> _EvaluationSet:
    from anomem.data.folder import folder_splits, load_folder

    spec = args.data
    if Path(spec).is_dir():
        layout = folder_layout(args)
        if "test" not in folder_splits(spec, layout):
            raise DataError(f"{spec!r} has no test split (expected test/normal, test/anomaly, optional test/masks; "
                            "or a flat layout with held-out normals or an abnormal folder)")
        test = load_folder(spec, "test", image_size=det.image_size_, channels=det.in_channels_, layout=layout)
        return _EvaluationSet(test.images, test.anomaly, test.masks, list(test.paths),
                              f"folder {spec} (test split, {test.meta['layout']} layout)", test.meta.get("conversions"),
                              list(test.anomaly_types))
    if Path(spec).exists():
        raise DataError(f"{spec!r} is not a dataset folder with test/")
    from anomem.data.registry import load_dataset, validate_class_index

    if args.normal_class is None:
        raise DataError(f"--normal-class is required with the named dataset {spec!r}")
    from anomem.inputs import geometry_conversions, match_geometry

    test = load_dataset(spec, "test", root=args.data_root)
    cls = args.normal_class
    c = validate_class_index(test.class_names, int(cls) if cls.lstrip("-").isdigit() else cls)
    split = det.meta_.get("split") if isinstance(det.meta_, dict) else None
    if isinstance(split, dict) and split.get("data") == spec and split.get("normal_class") not in (None, c):
        raise DataError(f"--normal-class {cls} differs from the normal class {args.checkpoint} was trained with "
                        f"({split['normal_class']}): its scores would rank the wrong class as normal")
    gen = torch.Generator().manual_seed(args.seed)
    if args.defects:
        from anomem.data.defects import add_defects

        normals = test.images[test.targets == c]
        if args.max_images is not None:
            normals = normals[torch.randperm(normals.shape[0], generator=gen)[: max(1, args.max_images // 2)]]
        converted = geometry_conversions(normals, det.in_channels_, det.image_size_)
        normals = match_geometry(normals, det.in_channels_, det.image_size_)  # masks at the detector's size
        bad = add_defects(normals, seed=args.seed)
        if normals.dtype != torch.uint8:
            normals = (normals * 255).round().to(torch.uint8)
        images = torch.cat([normals, bad.images])
        is_anomaly = torch.cat([torch.zeros(normals.shape[0], dtype=torch.bool), torch.ones(normals.shape[0], dtype=torch.bool)])
        masks = torch.cat([torch.zeros_like(bad.masks), bad.masks])
        desc = (f"{spec} test split, class {c} ({test.class_names[c]}): {normals.shape[0]} normal images and the same "
                f"images with generated local defects (seed {args.seed})")
        return _EvaluationSet(images, is_anomaly, masks, None, desc, converted,
                              [""] * normals.shape[0] + list(bad.kinds))
    images, is_anomaly, targets = test.images, test.targets != c, test.targets
    if args.max_images is not None and args.max_images < images.shape[0]:
        keep = torch.randperm(images.shape[0], generator=gen)[: args.max_images].sort().values
        images, is_anomaly, targets = images[keep], is_anomaly[keep], targets[keep]
    desc = f"{spec} test split, one-vs-all, normal class {c} ({test.class_names[c]})"
    types = ["" if t == c else test.class_names[t] for t in targets.tolist()]
    return _EvaluationSet(images, is_anomaly, None, None, desc,
                          geometry_conversions(images, det.in_channels_, det.image_size_), types)


def _use_recorded_split(args: argparse.Namespace, det) -> None:
    """On the dataset folder a model was trained on, evaluate with the split it was
    trained with (``meta["split"]``, written by `anomem train`): flags left out take the
    recorded values, flags that differ are refused (their test set holds training images)."""
    split = det.meta_.get("split") if isinstance(det.meta_, dict) else None
    if not isinstance(split, dict) or not Path(args.data).is_dir() or real(args.data) != real(str(split.get("data"))):
        return
    for key in FOLDER_LAYOUT:
        given, recorded = getattr(args, key, None), split.get(key)
        if given is None:
            setattr(args, key, recorded)
        elif (list(given) if key == "abnormal_dir" else given) != recorded:
            flag = "--" + key.replace("_", "-")
            raise DataError(f"{flag} {given!r} differs from the split {args.checkpoint} was trained with "
                            f"({key}={recorded!r}): its test images would include training images; drop {flag} "
                            "to evaluate on the recorded split")


def _without_training_images(data: _EvaluationSet, det) -> _EvaluationSet:
    """``data`` less the images ``det`` was trained on (same pixels), said on stderr."""
    from anomem.inputs import image_digests, to_float

    seen = [t for t in (det.training_digests_ or {}).values() if t.numel()]
    if not seen:
        return data
    test = data.images if data.images.dtype == torch.uint8 else to_float(data.images)
    known = torch.isin(image_digests(test), torch.cat(seen))
    if not bool(known.any()):
        return data
    keep = ~known
    if not bool(keep.any()):
        raise DataError(f"every test image of {data.description} is an image the model was trained on; "
                        "evaluate on images it has not seen")
    print(f"anomem: left out {int(known.sum())} of {known.numel()} test images: the model was trained on them "
          "(identical pixels)", file=sys.stderr)
    pick = lambda v: None if v is None else [x for x, k in zip(v, keep.tolist()) if k]  # noqa: E731
    return data._replace(images=data.images[keep], is_anomaly=data.is_anomaly[keep],
                         masks=None if data.masks is None else data.masks[keep], names=pick(data.names),
                         types=pick(data.types))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from anomem.bench.report import evaluate, write_report

    check_batch_size(args.batch_size, "--batch-size")
    check_seed("--seed", args.seed)
    if args.max_images is not None:
        check_int_range("--max-images", args.max_images, 2 if args.defects else 1, 10_000_000)
    check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint), ("--data", _existing(args.data)),
                                          ("--data-root", _existing(args.data_root))])
    check_claimable("--out", args.out, "evaluate", legacy=("report.html",))
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    _use_recorded_split(args, det)
    data = _without_training_images(_evaluation_set(args, det), det)
    images, desc = data.images, data.description
    report_conversions(data.conversions, det, args.strict)
    with StagedDir("--out", args.out, "evaluate", legacy=("report.html",)) as staged:
        ev = evaluate(det, images, data.is_anomaly, data.masks, data.names, batch_size=args.batch_size, types=data.types)
        details = {"checkpoint": str(args.checkpoint), "data": desc, "anomem": __version__,
                   "threshold": "none" if det.threshold_ is None else det.threshold_.describe()}
        files = write_report(ev, images, staged.path, title=args.title, details=details)
        staged.commit()
    shown = ", ".join(f"{k} {ev.metrics[k]:.4f}" for k in ("image_auroc", "pixel_auroc", "aupro") if k in ev.metrics)
    print(f"{desc}: {shown or 'no ranking metric (one class only)'}")
    for key in ("image_auroc", "pixel_auroc"):
        _warn_inverted(ev.metrics.get(key), key.replace("_", " "))
    print(f"report: {staged.final(files.html)} (and {files.markdown.name}, {files.metrics.name})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from anomem.io.export import export_scorer

    check_outputs([("--out", args.out)], [("checkpoint", args.checkpoint)])
    check_file_target("--out", args.out, (args.format,))
    det = _load_detector(args.checkpoint, device="cpu")
    path = export_scorer(det, args.out, args.format, sigma=args.sigma)
    c, (h, w) = det.in_channels_, det.image_size_
    print(f"exported {args.format} scorer -> {path}: input 'image' float [0, 1] (B, {c}, {h}, {w}); "
          f"outputs 'score' (B,), 'fused_map' (B, {h}, {w})", file=summary_stream(args.out))
    return 0


def _check_checkpoint_out(args: argparse.Namespace, image_inputs: list[tuple[str, str | None]]) -> None:
    """refit/threshold rewrite the checkpoint in place by default; another --out may only
    replace a checkpoint, and never lands on or inside the images they read."""
    out = args.out or args.checkpoint
    inputs = list(image_inputs)
    elsewhere = args.out is not None and real(args.out) != real(args.checkpoint)
    if elsewhere:
        inputs.append(("checkpoint", args.checkpoint))
    check_outputs([("--out", out)], inputs)
    if elsewhere:  # in place, the input itself is replaced once it has loaded as a checkpoint
        check_file_target("--out", out, ("checkpoint",))


def cmd_refit(args: argparse.Namespace) -> int:
    from anomem.data.folder import load_images

    _check_checkpoint_out(args, [("--anomalies", p) for p in args.anomalies] + [("--normals", p) for p in args.normals or ()])
    det = _load_detector(args.checkpoint, device=args.device or "cpu")
    load = lambda p: _load_matching(load_images, p, det)  # noqa: E731
    t0 = time.time()
    det.refit_scorer(load(args.anomalies), normals=None if args.normals is None else load(args.normals),
                     keep_previous=not args.replace)
    out = args.out or args.checkpoint
    det.save(out, meta=det.meta_)
    print(f"refitted stage 2 on {det.anomaly_bank_[0].shape[0]} anomalies in {time.time() - t0:.1f} s -> {out}",
          file=summary_stream(out))
    print(threshold_line(det.threshold_) if det.threshold_ is not None
          else "no threshold stored (no held-out normals): set one with `anomem threshold`", file=summary_stream(out))
    return 0
