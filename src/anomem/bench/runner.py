"""The ``anomem benchmark`` runner: protocols x classes x ratios x seeds x methods.

Every (protocol, class, ratio, seed, method group) is one *cell*. A cell builds its
split (:mod:`anomem.bench.protocols`, seeded), trains one model, scores the test set and
writes ``cells/<key>.json`` (metrics, wall time) and ``cells/<key>.npz`` (test scores
and labels, for plots) atomically. A rerun into the same directory skips finished
cells, so an interrupted benchmark resumes where it stopped; a rerun with different
settings is refused rather than mixing results. :func:`summarise` then writes
``results.json``, ``results.csv``, ``results.md`` and the plots from the cells on disk.

Method groups share one training where the paper's baselines do:

=====================  ==================================================================
group                  methods (columns of the table)
=====================  ==================================================================
anomem                 ``anomem``: the detector with the chosen preset
anomem-paper           ``anomem-paper``: the paper's method exactly on the same preset and
                       budget: no pseudo-anomalies, no normal bank (Eq. 9 / Eq. 10 only)
anomem-single-scale    ``anomem-single-scale``: the same, deepest tap only (paper Tab. 5)
simclr                 ``simclr-knn``, ``simclr-kmeans``: the same encoder trained with the
                       memory disabled (plain multi-scale SimCLR), scored by kNN distance
                       or distance to k-means centroids of the normal features (paper's
                       "contrastive + k-means" ablation); labelled anomalies unused
deepsad                ``deepsad``: Deep SAD (Ruff et al. 2020), uses labelled anomalies
knn, ocsvm, iforest    raw-pixel scikit-learn baselines (normals only)
patch-knn              raw-pixel patch nearest neighbours (local defects; normals only)
=====================  ==================================================================
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anomem.bench.feature_eval import (
    feature_kmeans_scores,
    feature_knn_scores,
    linear_evaluation,
    linear_probe,
)
from anomem.bench.plan import (
    GROUPS,
    LABEL_FREE,
    METHODS,
    PROTOCOLS,
    BenchmarkSettings,
    Cell,
    fingerprint,
)
from anomem.bench.tables import load_rows, markdown_table, summarise
from anomem.errors import ConfigError, DataError
from anomem.io.checkpoint import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from anomem.config import AnoMemConfig

__all__ = [
    "GROUPS",
    "LABEL_FREE",
    "feature_kmeans_scores",
    "feature_knn_scores",
    "linear_evaluation",
    "linear_probe",
    "load_rows",
    "markdown_table",
    "METHODS",
    "PROTOCOLS",
    "BenchmarkSettings",
    "Cell",
    "anomaly_types",
    "plan_cells",
    "run_benchmark",
    "summarise",
]

# -- planning -------------------------------------------------------------------------
def _is_folder(ds) -> bool:
    """User folders label images normal/anomaly (with anomaly types), not by class."""
    return ds.anomaly is not None


def anomaly_types(test) -> list[str]:
    """The anomaly types of a folder's test split, sorted (the cross-type protocol's units)."""
    return sorted({t for t, a in zip(test.anomaly_types or (), test.anomaly.tolist()) if a})


def _validate(s: BenchmarkSettings, n_classes: int, folder: bool = False) -> None:
    if s.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {s.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    bad = sorted(set(s.groups) - set(GROUPS))
    if bad:
        raise ConfigError(f"unknown method(s) {', '.join(map(repr, bad))}; choose from {', '.join(GROUPS)} or 'all'")
    if s.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {s.seeds}")
    for c in s.classes:
        if not 0 <= c < n_classes:
            raise DataError(f"class {c} does not exist; {s.data} has classes 0..{n_classes - 1}")
    for r in s.ratios:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"anomaly ratio γ must lie in [0, 1), got {r}")
    if s.protocol in ("deep-sad", "cross-type") and n_classes < 3 and not folder:
        raise DataError(f"the {s.protocol} protocol needs at least 3 classes, {s.data} has {n_classes}")
    if s.protocol == "cross-type" and 0.0 in s.ratios:
        raise ConfigError("the cross-type protocol trains on labelled anomalies: every ratio must be > 0")
    if s.protocol == "ood" and not s.ood:
        raise ConfigError("the ood protocol needs --ood DATASET (the out-of-distribution test set)")
    if s.max_train is not None and s.max_train < 4:
        raise ConfigError(f"--max-train must be at least 4, got {s.max_train}")


def plan_cells(s: BenchmarkSettings, n_classes: int, types: Sequence[str] | None = None) -> list[Cell]:
    """All cells of a benchmark, in run order (cheap groups of a split together).

    deep-sad and cross-type need a second class per split (the known anomaly class, the
    held-out type); seed ``i`` of normal class ``c`` takes the ``i``-th other class in
    turn, so ``--seeds 9`` covers every pair once (as Ruff et al. average over them).
    For a user folder (``types`` = its test anomaly types) the only normal class is 0
    and cross-type holds out type ``types[i]`` in turn.
    """
    if types is not None:
        if s.protocol not in ("one-vs-all", "cross-type"):
            raise ConfigError(f"a user folder supports the one-vs-all and cross-type protocols, not {s.protocol!r}")
        if tuple(s.classes) != (0,):
            raise ConfigError("a user folder has one normal class: use --classes 0")
        if s.protocol == "cross-type" and len(types) < 2:
            raise DataError(f"cross-type needs at least 2 anomaly types under test/anomaly/<type>, found {list(types)}")
    _validate(s, n_classes, folder=types is not None)
    if s.protocol == "ood":
        return [Cell("ood", -1, 0.0, seed, g) for seed in range(s.seeds) for g in s.groups]
    cells = []
    for r in s.ratios:
        for c in s.classes:
            others = list(range(len(types))) if types is not None else [k for k in range(n_classes) if k != c]
            for seed in range(s.seeds):
                other = others[seed % len(others)] if s.protocol in ("deep-sad", "cross-type") else None
                cells += [Cell(s.protocol, c, r, seed, g, other) for g in s.groups]
    return cells


# -- splits -----------------------------------------------------------------------------
@dataclass
class Split:
    normals: torch.Tensor
    anomalies: torch.Tensor
    test_images: torch.Tensor
    test_is_anomaly: np.ndarray
    test_class: np.ndarray  # class (or -1 for OoD) of each test image, for per-type metrics


_DATA_CACHE: dict[tuple[str, str | None, str], Any] = {}


def _load(name: str, root: str | None, split: str):
    from anomem.data.registry import load_dataset

    key = (name, root, split)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(name, split, root=root)
    return _DATA_CACHE[key]


def _cap_test(images: torch.Tensor, classes: np.ndarray, is_anomaly: np.ndarray, cap: int | None):
    if cap is None or cap >= images.shape[0]:
        return images, classes, is_anomaly
    # the same subset for every seed and method, stratified by class
    rng = np.random.default_rng(0)
    keep = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        keep.append(rng.choice(idx, size=max(1, round(cap * idx.size / classes.size)), replace=False))
    keep = np.sort(np.concatenate(keep))
    return images[torch.from_numpy(keep)], classes[keep], is_anomaly[keep]


def build_split(s: BenchmarkSettings, cell: Cell) -> Split:
    """The seeded training/test split of ``cell`` (identical for every method group)."""
    from anomem.bench import protocols

    train, test = _load(s.data, s.data_root, "train"), _load(s.data, s.data_root, "test")
    if _is_folder(train):
        return _folder_split(s, cell, train, test)
    test_cls = test.targets.numpy()
    if cell.protocol == "ood":
        from anomem.inputs import match_geometry

        ood = _load(s.ood, None, "test")
        c, size = train.images.shape[1], tuple(train.images.shape[2:])
        ood_x = match_geometry(ood.images, c, size, "OoD images")  # uint8 unless resized (then float [0, 1])
        if ood_x.dtype != torch.uint8:
            ood_x = (ood_x * 255).round().to(torch.uint8)
        normals = train.images
        if s.max_train is not None and s.max_train < normals.shape[0]:
            g = torch.Generator().manual_seed(cell.seed)
            normals = normals[torch.randperm(normals.shape[0], generator=g)[: s.max_train].sort().values]
        x = torch.cat([test.images, ood_x])
        cls = np.concatenate([test_cls, np.full(ood_x.shape[0], -1)])
        x, cls, an = _cap_test(x, cls, cls == -1, s.max_test)
        return Split(normals, normals[:0], x, an, cls)
    if cell.protocol == "one-vs-all" or cell.protocol == "cross-type":
        exclude = () if cell.protocol == "one-vs-all" else (cell.other,)
        sp = protocols.one_vs_all(train, test, cell.normal_class, cell.ratio, cell.seed,
                                  max_normals=s.max_train, exclude_classes=exclude)
        an = sp.test_is_anomaly.numpy()
        x, cls = sp.test_images, test_cls
        if cell.protocol == "cross-type":  # test: normals vs the held-out type only
            keep = torch.from_numpy((test_cls == cell.normal_class) | (test_cls == cell.other))
            x, cls, an = x[keep], test_cls[keep.numpy()], an[keep.numpy()]
        x, cls, an = _cap_test(x, cls, an, s.max_test)
        return Split(sp.normals, sp.anomalies, x, an, cls)
    sp = protocols.deep_sad_split(train, test, cell.normal_class, cell.other, cell.ratio, s.pollution, cell.seed,
                                  max_normals=s.max_train)
    x, cls, an = _cap_test(sp.test_images, test_cls, sp.test_is_anomaly.numpy(), s.max_test)
    return Split(sp.normals, sp.anomalies, x, an, cls)


def _folder_split(s: BenchmarkSettings, cell: Cell, train, test) -> Split:
    """A user folder: normals = train/normal; γ of the training set drawn from
    train/anomaly (cross-type: minus the held-out type); test = test/ (cross-type:
    normals and the held-out type only). ``test_class``: 0 normal, 1 + type index."""
    types = anomaly_types(test)
    gen = torch.Generator().manual_seed(cell.seed)
    normal_idx = (~train.anomaly).nonzero().flatten()
    if s.max_train is not None and s.max_train < normal_idx.numel():
        normal_idx = normal_idx[torch.randperm(normal_idx.numel(), generator=gen)[: s.max_train].sort().values]
    held = types[cell.other] if cell.protocol == "cross-type" else None
    pool = [i for i, (a, t) in enumerate(zip(train.anomaly.tolist(), train.anomaly_types)) if a and t != held]
    m = round(cell.ratio * normal_idx.numel() / (1.0 - cell.ratio))
    if m > len(pool):
        raise DataError(f"γ={cell.ratio} needs {m} labelled anomalies but train/anomaly holds {len(pool)}"
                        + (f" besides the held-out type {held!r}" if held else ""))
    pick = torch.tensor(pool, dtype=torch.long)[torch.randperm(len(pool), generator=gen)[:m]].sort().values
    an = test.anomaly.numpy()
    cls = np.array([0 if not a else 1 + types.index(t) for a, t in zip(an, test.anomaly_types)])
    keep = np.ones(an.size, bool) if held is None else (~an) | (cls == 1 + types.index(held))
    if not an[keep].any() or an[keep].all():
        raise DataError(f"{s.data}: the test split needs both normal and anomalous images")
    k = torch.from_numpy(keep)
    return Split(train.images[normal_idx], train.images[pick], test.images[k], an[keep], cls[keep])


# -- methods ----------------------------------------------------------------------------
def _anomem_config(s: BenchmarkSettings, seed: int, group: str = "anomem") -> AnoMemConfig:
    """The config a group trains with: the preset with the settings' overrides and the
    cell's seed, then the group's variant as a config edit (never re-parsed strings)."""
    from anomem.config import AnoMemConfig, load_config, paper_literal

    base = AnoMemConfig.from_dict(s.config) if s.config is not None else load_config(s.preset, None, list(s.overrides))
    cfg = replace(base, train=replace(base.train, seed=seed))
    b, m = cfg.backbone, cfg.memory
    if group == "anomem-paper":  # the paper's method read literally (anomem.config.PAPER_LITERAL)
        return paper_literal(cfg)
    if group == "anomem-single-scale":  # the deepest tap only (paper Tab. 5)
        return replace(cfg, backbone=replace(b, taps=b.taps[-1:]),
                       memory=replace(m, sizes=m.sizes[-1:], sample_ratios=m.sample_ratios[-1:]),
                       weights=replace(cfg.weights, scales=None))
    if group == "simclr":  # the same encoder and training with the memory disabled
        return replace(cfg, memory=replace(m, enabled=False))
    return cfg


def run_group(s: BenchmarkSettings, cell: Cell, split: Split) -> dict[str, np.ndarray]:
    """Train ``cell.group`` on the split; the test scores of each method of the group."""
    from anomem.baselines import make_baseline
    from anomem.detector import AnoMem

    has_anom = split.anomalies.shape[0] > 0
    g = cell.group
    if g in ("anomem", "anomem-paper", "anomem-single-scale"):
        cfg = _anomem_config(s, cell.seed, g)
        det = AnoMem(cfg, progress=False).fit(split.normals, split.anomalies if has_anom else None)
        return {g: det.anomaly_score(split.test_images)}
    if g == "simclr":
        cfg = _anomem_config(s, cell.seed, g)
        det = AnoMem(cfg, progress=False).fit(split.normals)
        tr, te = det.embed(split.normals), det.embed(split.test_images)
        return {"simclr-knn": feature_knn_scores(tr, te),
                "simclr-kmeans": feature_kmeans_scores(tr, te, cfg.memory.sizes[-1], cell.seed)}
    x = torch.cat([split.normals, split.anomalies])
    y = np.r_[np.ones(split.normals.shape[0]), np.zeros(split.anomalies.shape[0])].astype(int)
    det = make_baseline(g, random_state=cell.seed).fit(x, y)
    return {g: det.anomaly_score(split.test_images)}


def run_cell(s: BenchmarkSettings, cell: Cell, threads: int | None = None) -> dict[str, Any]:
    """Build the split, train and score one cell; its record (metrics per method) and scores."""
    from anomem.metrics import average_precision, image_auroc

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(cell.seed)
        split = build_split(s, cell)
        t0 = time.perf_counter()
        scores = run_group(s, cell, split)
        seconds = time.perf_counter() - t0
    finally:  # in-process cells (jobs=1) must not leave the caller's thread count changed
        torch.set_num_threads(before)
    rows = []
    for method, sc in scores.items():
        sc = np.asarray(sc, np.float64)
        if not np.isfinite(sc).all():
            raise RuntimeError(f"{method} returned non-finite scores on {cell.key}")
        rows.append({**asdict(cell), "method": method, "auroc": image_auroc(split.test_is_anomaly, sc),
                     "ap": average_precision(split.test_is_anomaly, sc), "seconds": round(seconds, 2),
                     "n_train_normals": int(split.normals.shape[0]),
                     "n_train_anomalies": int(split.anomalies.shape[0]),
                     "n_test": int(split.test_images.shape[0])})
    return {"rows": rows, "scores": {k: np.asarray(v, np.float32) for k, v in scores.items()},
            "is_anomaly": split.test_is_anomaly.astype(bool), "test_class": split.test_class.astype(np.int16)}


def _save_cell(out: Path, cell: Cell, result: dict[str, Any]) -> None:
    cells = out / "cells"
    arrays = {"is_anomaly": result["is_anomaly"], "test_class": result["test_class"],
              **{f"score__{k}": v for k, v in result["scores"].items()}}
    atomic_write_bytes(cells / f"{cell.key}.npz", lambda f: np.savez_compressed(f, **arrays))
    # the json last: its presence marks the cell finished
    atomic_write_text(cells / f"{cell.key}.json", json.dumps(result["rows"], indent=1))


def _prepare_out(out: Path, s: BenchmarkSettings) -> None:
    meta = out / "benchmark.json"
    if meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except ValueError as e:
            raise DataError(f"{str(meta)!r} is unreadable ({e}); use a new --out directory") from None
        if fingerprint(old.get("settings") or {}) != s.fingerprint():
            diff = sorted(k for k, v in asdict(s).items() if json.dumps(old.get("settings", {}).get(k)) != json.dumps(v))
            raise ConfigError(f"{str(out)!r} holds a benchmark with other settings (differs in {', '.join(diff)}); "
                              "use a new --out directory, or the same settings to resume")
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write to output directory {str(out)!r}: {e.strerror or e}") from None
    atomic_write_text(meta, json.dumps({"fingerprint": s.fingerprint(), "settings": asdict(s)}, indent=2))


def run_benchmark(
    s: BenchmarkSettings, out: str | Path, jobs: int = 1, threads: int | None = None, progress: bool = True,
    on_cell: Callable[[Cell, dict], None] | None = None,
) -> Path:
    """Run every unfinished cell (``jobs`` processes with ``threads`` torch threads each),
    then :func:`summarise`. Returns the output directory."""
    out = Path(out)
    train = _load(s.data, s.data_root, "train")
    types = anomaly_types(_load(s.data, s.data_root, "test")) if _is_folder(train) else None
    cells = plan_cells(s, len(train.class_names), types)
    _prepare_out(out, s)
    todo = [c for c in cells if not (out / "cells" / f"{c.key}.json").is_file()]
    finished = len(cells) - len(todo)
    copies: dict[Cell, list[Cell]] = {}
    for c in todo:
        copies.setdefault(c.source, []).append(c)
    todo = list(copies)  # each source once, in plan order
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=finished, desc="benchmark cells", unit="cell")
    if jobs <= 1:
        for cell in todo:
            _finish(out, copies[cell], run_cell(s, cell, threads), bar, on_cell)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            # settings and cells are frozen dataclasses: they pickle to the workers as they are
            cell_of = {pool.submit(run_cell, s, c, threads): c for c in todo}
            pending = set(cell_of)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    _finish(out, copies[cell_of[fut]], fut.result(), bar, on_cell)
    if bar is not None:
        bar.close()
    summarise(out)
    return out


def _finish(out: Path, cells: list[Cell], result: dict, bar, on_cell) -> None:
    """Save ``result`` under every cell that shares it, and report progress."""
    for cell in cells:
        res = {**result, "rows": [{**r, "ratio": cell.ratio} for r in result["rows"]]}
        _save_cell(out, cell, res)
        if on_cell is not None:
            on_cell(cell, res)
    from anomem.metrics import inverted_warning

    for r in result["rows"]:
        msg = inverted_warning(r["auroc"], f"{r['method']} AUROC on {cells[0].key}")
        if msg:
            import sys

            (bar.write if bar is not None else print)(msg, file=sys.stderr)
    if bar is not None:
        bar.update(len(cells))
        bar.set_postfix_str(", ".join(f"{r['method']} {r['auroc']:.3f}" for r in result["rows"]))
