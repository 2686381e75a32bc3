"""Pictures and reports of a detector's results: heat-map figures, HTML and Markdown.

* :func:`heatmap_figure` / :func:`save_heatmap_png` — one image, its fused heat-map as an
  overlay, and each scale's ‖Δ^(s)‖ map side by side, score (and label) in the title.
* :func:`evaluate` — scores, maps and metrics of a labelled test set
  (image AUROC and AP; pixel AUROC and AUPRO when masks are given; the confusion
  matrix at the detector's threshold when it has one).
* :func:`write_report` — a self-contained HTML page (every figure embedded as base64
  PNG, no external file or script) and a Markdown page with its figures next to it.

Matplotlib runs on the non-interactive Agg backend; figures are closed after saving.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from anomem.errors import DataError
from anomem.io.checkpoint import atomic_write_bytes, atomic_write_text
from anomem.metrics import aupro, average_precision, confusion_metrics, image_auroc, pixel_auroc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from anomem.detector import AnoMem

__all__ = [
    "Evaluation",
    "ReportFiles",
    "evaluate",
    "heatmap_figure",
    "map_range",
    "heatmap_rgb",
    "save_heatmap_map",
    "save_heatmap_png",
    "write_report",
]

HEAT_CMAP = "inferno"
SCALE_CMAP = "viridis"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _as_display(image: Any) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (H, W) uint8/float image -> an array imshow takes, and a cmap."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    return np.clip(a, 0, 1), ("gray" if a.ndim == 2 else None)


def map_range(fused: np.ndarray) -> tuple[float, float]:
    """Colour range shared by a set of fused maps: 0 (the training-normal mean) to the
    99.5th percentile, at least 3 (standardised units)."""
    return 0.0, max(3.0, float(np.percentile(fused, 99.5)))


def _fig_to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def heatmap_figure(
    image: Any,
    fused: np.ndarray,
    per_scale: np.ndarray,
    title: str,
    scale_names: Sequence[str] | None = None,
    vrange: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> Figure:
    """Image | fused heat-map overlay | one panel per scale, in one row.

    Args:
        image: (C, H, W) or (H, W), uint8 or float in [0, 1].
        fused: (H, W) fused map (standardised units).
        per_scale: (S, H, W) ‖Δ^(s)‖ maps.
        title: figure title (put the score and label here).
        scale_names: a name per scale (the backbone taps).
        vrange: colour range of the fused map; default :func:`map_range` of ``fused``.
        mask: optional (H, W) ground truth, drawn as a cyan contour on the overlay.
    """
    plt = _plt()
    img, cmap = _as_display(image)
    n_scales = per_scale.shape[0]
    names = list(scale_names) if scale_names is not None else [f"scale {s + 1}" for s in range(n_scales)]
    lo, hi = vrange if vrange is not None else map_range(fused)
    fig, axes = plt.subplots(1, 2 + n_scales, figsize=(2.6 * (2 + n_scales), 2.9))
    axes[0].imshow(img, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(img, cmap=cmap, vmin=0, vmax=1)
    im = axes[1].imshow(fused, cmap=HEAT_CMAP, alpha=0.55, vmin=lo, vmax=hi)
    if mask is not None and np.any(mask):
        axes[1].contour(np.asarray(mask) > 0, levels=[0.5], colors="cyan", linewidths=1.0)
    axes[1].set_title("fused heat-map", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    for s in range(n_scales):
        ax = axes[2 + s]
        ims = ax.imshow(per_scale[s], cmap=SCALE_CMAP)
        ax.set_title(f"{names[s]} ‖Δ‖", fontsize=9)
        fig.colorbar(ims, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10, parse_math=False, usetex=False)  # a file name is text, never mathtext/TeX
    fig.tight_layout()
    return fig


def save_heatmap_png(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """:func:`heatmap_figure` written to ``path`` as PNG (atomically)."""
    png = _fig_to_png(heatmap_figure(*args, **kwargs))
    atomic_write_bytes(path, lambda f: f.write(png))
    return Path(path)


def heatmap_rgb(fused: np.ndarray, vrange: tuple[float, float] | None = None) -> np.ndarray:
    """The fused map (H, W) coloured with :data:`HEAT_CMAP` over ``vrange`` (default
    :func:`map_range` of ``fused``; values outside are clipped) -> (H, W, 3) uint8."""
    from matplotlib import colormaps

    lo, hi = vrange if vrange is not None else map_range(fused)
    t = (np.asarray(fused, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    return colormaps[HEAT_CMAP](np.clip(t, 0.0, 1.0), bytes=True)[..., :3]


def heatmap_png(fused: np.ndarray, vrange: tuple[float, float] | None = None) -> bytes:
    """The fused map (H, W) coloured by :func:`heatmap_rgb`, as the bytes of an 8-bit RGB PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(heatmap_rgb(fused, vrange), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def save_heatmap_map(path: str | Path, fused: np.ndarray, fmt: str = "png",
                     vrange: tuple[float, float] | None = None) -> Path:
    """Write the raw fused map at the image's resolution, no figure (fast, for many images):
    ``png`` the map coloured by :func:`heatmap_rgb`, ``npy`` the float32 values themselves."""
    if fmt == "npy":
        arr = np.asarray(fused, dtype=np.float32)
        atomic_write_bytes(path, lambda f: np.save(f, arr))
    elif fmt == "png":
        png = heatmap_png(fused, vrange)
        atomic_write_bytes(path, lambda f: f.write(png))
    else:
        raise DataError(f"heat-map format must be 'png' or 'npy', got {fmt!r}")
    return Path(path)


class Evaluation(NamedTuple):
    """A detector's results on one labelled test set.

    Attributes:
        scores: (N,) raw anomaly scores.
        is_anomaly: (N,) bool ground truth.
        fused: (N, H, W) fused heat-maps.
        per_scale: (N, S, H, W) per-scale maps.
        masks: (N, H, W) bool ground-truth masks, or None.
        predicted: (N,) 0/1 at the threshold, or None without one.
        metrics: name -> value (see :func:`evaluate`).
        names: a label per image (file path or index).
    """

    scores: np.ndarray
    is_anomaly: np.ndarray
    fused: np.ndarray
    per_scale: np.ndarray
    masks: np.ndarray | None
    predicted: np.ndarray | None
    metrics: dict[str, Any]
    names: list[str]


def evaluate(
    det: AnoMem,
    images: Any,
    is_anomaly: Any,
    masks: Any = None,
    names: Sequence[str] | None = None,
    batch_size: int = 128,
    types: Sequence[str] | None = None,
) -> Evaluation:
    """Score and map ``images`` and compute every metric the labels allow.

    Metrics: ``n_normal``, ``n_anomaly``, ``image_auroc``, ``average_precision``; with
    masks holding at least one anomalous pixel, ``pixel_auroc`` and ``aupro`` (FPR
    ≤ 0.3); with a threshold, ``threshold`` and at it ``accuracy``, ``precision``,
    ``recall``, ``fpr``, ``f1`` and the confusion counts ``tp fp tn fn``. With ``types``
    (each anomaly's kind, "" for normals) naming two kinds or more, ``per_type``: per kind
    its count, AUROC against all the normals and recall at the threshold, hardest first.

    Shape:
        images (N, C, H, W), is_anomaly (N,), masks (N, 1, H, W) or (N, H, W)
    """
    y = np.asarray(is_anomaly.cpu() if isinstance(is_anomaly, torch.Tensor) else is_anomaly).astype(bool).reshape(-1)
    maps = det.anomaly_maps(images, batch_size=batch_size)
    n = maps.scores.shape[0]
    if y.shape[0] != n:
        raise DataError(f"is_anomaly has {y.shape[0]} entries for {n} images")
    gt = None
    if masks is not None:
        g = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        g = g[:, 0] if g.ndim == 4 else g
        if g.shape != maps.fused.shape:
            raise DataError(f"masks have shape {g.shape}, expected {maps.fused.shape} (the detector's input size)")
        gt = g != 0
    m: dict[str, Any] = {"n_normal": int((~y).sum()), "n_anomaly": int(y.sum())}
    if y.any() and (~y).any():
        m["image_auroc"] = image_auroc(y, maps.scores)
        m["average_precision"] = average_precision(y, maps.scores)
    if gt is not None and gt.any():
        m["pixel_auroc"] = pixel_auroc(gt, maps.fused)
        m["aupro"] = aupro(gt, maps.fused)
    predicted = None
    if det.threshold_ is not None:
        predicted = det.threshold_.predict(maps.scores)
        p = predicted.astype(bool)
        m.update(threshold=det.threshold_.value, threshold_method=det.threshold_.method, **confusion_metrics(y, p))
    if types is not None:
        per_type = _per_type(y, maps.scores, predicted, list(types))
        if per_type:
            m["per_type"] = per_type
    labels = list(names) if names is not None else [f"#{i}" for i in range(n)]
    return Evaluation(maps.scores, y, maps.fused, maps.per_scale, gt, predicted, m, labels)


def _per_type(y: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None, types: list[str]) -> list[dict]:
    """Per anomaly kind: n, AUROC against every normal, recall at the threshold (hardest first);
    empty unless there are normals and two kinds or more."""
    if len(types) != y.shape[0]:
        raise DataError(f"types has {len(types)} entries for {y.shape[0]} images")
    kinds = sorted({t for t, a in zip(types, y) if a})
    if len(kinds) < 2 or not (~y).any():
        return []
    kind = np.array(types, dtype=object)
    rows = []
    for k in kinds:
        sel = y & (kind == k)
        both = sel | ~y
        row = {"type": k, "n": int(sel.sum()), "image_auroc": image_auroc(sel[both], scores[both])}
        if predicted is not None:
            row["recall"] = float(predicted[sel].astype(bool).mean())
        rows.append(row)
    return sorted(rows, key=lambda r: (r["image_auroc"], r["type"]))


class ReportFiles(NamedTuple):
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    metrics: Path


_METRIC_NAMES = [
    ("image_auroc", "Image AUROC"),
    ("average_precision", "Average precision (AP)"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO (FPR ≤ 0.3)"),
    ("threshold", "Threshold (raw score)"),
    ("accuracy", "Accuracy at threshold"),
    ("precision", "Precision at threshold"),
    ("recall", "Recall at threshold"),
    ("fpr", "False-positive rate at threshold"),
    ("f1", "F1 at threshold"),
    ("n_normal", "Normal test images"),
    ("n_anomaly", "Anomalous test images"),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _curves_png(ev: Evaluation) -> bytes | None:
    if not (ev.is_anomaly.any() and (~ev.is_anomaly).any()):
        return None
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(ev.is_anomaly, ev.scores)
    prec, rec, _ = precision_recall_curve(ev.is_anomaly, ev.scores)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot(fpr, tpr, color="C0", lw=2, label=f"AUROC {ev.metrics['image_auroc']:.3f}")
    a.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    b.plot(rec, prec, color="C1", lw=2, label=f"AP {ev.metrics['average_precision']:.3f}")
    b.axhline(ev.is_anomaly.mean(), color="0.6", ls="--", lw=1)
    if "fpr" in ev.metrics and ev.metrics["fpr"] is not None and ev.metrics["recall"] is not None:
        a.plot([ev.metrics["fpr"]], [ev.metrics["recall"]], "o", color="C3", label="threshold")
        if ev.metrics["precision"] is not None:
            b.plot([ev.metrics["recall"]], [ev.metrics["precision"]], "o", color="C3", label="threshold")
    a.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    b.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    a.legend(loc="lower right")
    b.legend(loc="lower left")
    fig.tight_layout()
    return _fig_to_png(fig)


def _histogram_png(ev: Evaluation, threshold: float | None) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    bins = np.histogram_bin_edges(ev.scores, bins=40)
    for cls, name, colour in ((False, "normal", "C0"), (True, "anomaly", "C3")):
        sel = ev.scores[ev.is_anomaly == cls]
        if sel.size:
            ax.hist(sel, bins=bins, alpha=0.55, color=colour, label=f"{name} ({sel.size})", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="anomaly score (raw)", ylabel="density", title="score histogram by class")
    ax.legend()
    fig.tight_layout()
    return _fig_to_png(fig)


def _grid_png(ev: Evaluation, images: torch.Tensor, idx: Sequence[int], title: str, vrange: tuple[float, float]) -> bytes:
    plt = _plt()
    cols = len(idx)
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.3), squeeze=False)
    for c, i in enumerate(idx):
        img, cmap = _as_display(images[i])
        truth = "anomaly" if ev.is_anomaly[i] else "normal"
        pred = "" if ev.predicted is None else (" → A" if ev.predicted[i] else " → N")
        axes[0, c].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[0, c].set_title(f"{ev.scores[i]:.3g}\n{truth}{pred}", fontsize=8)
        axes[1, c].imshow(img, cmap=cmap, vmin=0, vmax=1)
        axes[1, c].imshow(ev.fused[i], cmap=HEAT_CMAP, alpha=0.55, vmin=vrange[0], vmax=vrange[1])
        if ev.masks is not None and ev.masks[i].any():
            axes[1, c].contour(ev.masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
        for r in range(2):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    fig.suptitle(title, fontsize=10, parse_math=False, usetex=False)  # a file name is text, never mathtext/TeX
    fig.tight_layout()
    return _fig_to_png(fig)


def _template(name: str):
    """A template of ``anomem/templates`` (HTML ones auto-escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("anomem", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), keep_trailing_newline=True)
    return env.get_template(name)


def write_report(
    ev: Evaluation,
    images: Any,
    out_dir: str | Path,
    title: str = "AnoMem evaluation",
    details: dict[str, Any] | None = None,
    grid_size: int = 8,
) -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.md`` (+ ``figures/``) and
    ``metrics.json`` into ``out_dir`` (created if needed).

    Args:
        ev: from :func:`evaluate`.
        images: the (N, C, H, W) images that were evaluated, for the grids.
        title: page title.
        details: extra key/values shown under the title (data, checkpoint, ...).
        grid_size: images in each of the "most" and "least anomalous" grids.
    """
    from anomem.inputs import as_images

    out = Path(out_dir)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create report directory {str(out)!r}: {e.strerror or e}") from None
    imgs = as_images(images, "images")
    if imgs.shape[2:] != ev.fused.shape[1:]:
        from anomem.inputs import match_geometry

        imgs = match_geometry(imgs, imgs.shape[1], tuple(ev.fused.shape[1:]))
    m = ev.metrics
    threshold = m.get("threshold")
    vrange = map_range(ev.fused)
    order = np.argsort(-ev.scores, kind="stable")
    k = min(grid_size, len(order))
    figures: list[tuple[str, str, bytes]] = []  # (file stem, caption, png)
    curves = _curves_png(ev)
    if curves is not None:
        figures.append(("curves", "ROC and precision-recall curves (dot: the threshold)", curves))
    figures.append(("histogram", "Anomaly scores of each class (dashed: the threshold)", _histogram_png(ev, threshold)))
    figures.append(("most_anomalous", f"The {k} most anomalous test images (score, truth → prediction) with their fused heat-maps", _grid_png(ev, imgs, order[:k].tolist(), "most anomalous", vrange)))
    figures.append(("least_anomalous", f"The {k} least anomalous test images with their fused heat-maps", _grid_png(ev, imgs, order[::-1][:k].tolist(), "least anomalous", vrange)))

    rows = [(label, _fmt(m[key])) for key, label in _METRIC_NAMES if key in m]
    info = dict(details or {})
    info["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    confusion = None
    if "tp" in m:
        confusion = [("actual normal", m["tn"], m["fp"]), ("actual anomaly", m["fn"], m["tp"])]
    for stem, _, png in figures:
        atomic_write_bytes(out / "figures" / f"{stem}.png", lambda f, png=png: f.write(png))
    figs = [{"stem": stem, "caption": caption, "b64": base64.b64encode(png).decode("ascii")}
            for stem, caption, png in figures]
    per_type = [(r["type"], r["n"], _fmt(r["image_auroc"]), _fmt(r.get("recall"))) for r in m.get("per_type", [])]
    page = {"title": title, "info": info, "rows": rows, "confusion": confusion, "figures": figs, "per_type": per_type}
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, _template("report.md.j2").render(page))
    atomic_write_text(html_path, _template("report.html.j2").render(page))

    metrics_path = out / "metrics.json"
    atomic_write_text(metrics_path, json.dumps({"metrics": m, "details": info}, indent=2, default=str))
    return ReportFiles(html_path, md_path, metrics_path)
