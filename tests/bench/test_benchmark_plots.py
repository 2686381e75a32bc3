"""Benchmark plots: written into plots/, every axis labelled, one colour per method in
every plot (the fixed METHOD_COLOURS map). Drawn from real committed benchmark cells."""

import json
import shutil
from pathlib import Path

import matplotlib
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex

from anomem.bench import tables as benchmark_report
from anomem.bench.plan import METHODS
from anomem.bench.tables import METHOD_COLOURS, PLOTS_DIR, method_colour, summarise

matplotlib.use("Agg")
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "fashion-mnist-one-vs-all"


def test_colour_map_is_fixed_and_distinct():
    assert set(METHOD_COLOURS) == set(METHODS)
    assert len(set(METHOD_COLOURS.values())) == len(METHODS)
    assert method_colour("anomem") == METHOD_COLOURS["anomem"] and method_colour("unknown") == "#000000"


@pytest.fixture
def bench(tmp_path):
    if not (RESULTS / "cells").is_dir():
        pytest.skip("committed benchmark cells not found")
    out = tmp_path / "bench"
    (out / "cells").mkdir(parents=True)
    shutil.copy(RESULTS / "benchmark.json", out / "benchmark.json")
    for p in (RESULTS / "cells").glob("one-vs-all_c[01]_*"):  # two classes, every ratio and method
        shutil.copy(p, out / "cells" / p.name)
    return out


def test_plots_folder_labels_and_colours(bench, monkeypatch):
    figures = []
    save = benchmark_report._savefig
    monkeypatch.setattr(benchmark_report, "_savefig", lambda fig, path: (figures.append((fig, path)), save(fig, path))[1])
    files = summarise(bench)
    pngs = [p for p in files.values() if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {"cost_quality.png", "auroc_vs_ratio.png", "roc_gamma0.png", "hist_gamma0.1.png"}
    assert all(p.parent == bench / PLOTS_DIR and p.stat().st_size > 1000 for p in pngs)
    assert not list(bench.glob("*.png"))
    md = (bench / "results.md").read_text()
    assert all(f"({PLOTS_DIR}/{p.name})" in md for p in pngs)
    methods_seen = set()
    for fig, path in figures:
        for ax in fig.axes:
            if not ax.axison:
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), f"{path.name}: an axis without a label"
            for line in ax.get_lines():
                if line.get_label() in METHODS:
                    methods_seen.add(line.get_label())
                    assert to_hex(line.get_color()) == METHOD_COLOURS[line.get_label()], path.name
            for coll in ax.collections:
                if isinstance(coll, PathCollection) and coll.get_label() in METHODS:
                    assert to_hex(coll.get_facecolor()[0]) == METHOD_COLOURS[coll.get_label()], path.name
    ran = {r["method"] for r in json.loads((bench / "results.json").read_text())["rows"]}
    assert methods_seen == ran and len(ran) >= 5
