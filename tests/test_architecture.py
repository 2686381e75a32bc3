"""The layering of docs/architecture.md, checked on the source: who may import whom.

Imports are read from the syntax tree of every module under src/anomem (including
imports inside functions; those under ``if TYPE_CHECKING:`` are only for type hints
and do not run, so they are left out).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "anomem"

# The pure-torch floor: tensors in, tensors out; built from plain arguments: stage 1
# (``model``), stage 2 (``stage2``), the two joined (``inference``) and the one smoothing.
PURE = ("model", "stage2", "inference", "maps")
# What the floor must never reach: configs, fitting, training, the estimator and its files, the CLI.
UPPER = ("config", "fit", "engine", "factory", "calibration", "io", "detector", "cli", "bench", "explain", "serve")
# What reading a config may import: no torch, no model (tests/config checks the modules loaded).
CONFIG_MAY_IMPORT = ("config", "errors", "choices")
MAX_LINES = 450
MAX_TOP_LEVEL = 24  # modules side by side at the package's top level


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    """anomem-internal modules imported at run time, as dotted names under anomem."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    mods = {m[len("anomem."):] for m in found if m.startswith("anomem.")}
    return {m for m in mods if m in MODULES}


FILES = sorted(SRC.rglob("*.py"))
MODULES = {_module_name(p): p for p in FILES}
TREES = {name: ast.parse(p.read_text(encoding="utf-8")) for name, p in MODULES.items()}


def _package(name: str) -> str:
    return "anomem." + name if MODULES[name].name == "__init__.py" else "anomem." + name.rpartition(".")[0]


GRAPH = {name: _imports(tree, _package(name)) - {name} for name, tree in TREES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _pure(name: str) -> bool:
    return _top(name) in PURE


def _upper(name: str) -> bool:
    return _top(name) in UPPER


def _unit(name: str) -> str:
    """What the package-level cycle check collapses a module to: its top-level package
    or module (``stage2.*`` is one unit, ``model.*`` another, ``inference`` a third)."""
    return _top(name)


def test_no_import_cycles():
    """Depth-first search for a back edge; the package ``__init__`` re-exports are the
    public surface and may import anything, so edges INTO a package __init__ from its
    own submodules are not followed (they are the submodule asking for a sibling)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if MODULES[nxt].name == "__init__.py" and node.startswith(nxt + ".") or nxt == "":
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name and name not in state:
            dfs(name)


@pytest.mark.parametrize("name", [m for m in sorted(MODULES) if _pure(m)])
def test_pure_floor_imports_nothing_above_it(name):
    bad = sorted(m for m in GRAPH[name] if _upper(m))
    assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("name", [m for m in sorted(MODULES) if _top(m) == "model"])
def test_stage_1_imports_nothing_of_stage_2(name):
    bad = sorted(m for m in GRAPH[name] if _top(m) in ("stage2", "inference", "fit"))
    assert not bad, f"{name} imports {bad}"


@pytest.mark.parametrize("name", [m for m in sorted(MODULES) if _top(m) == "config"])
def test_config_imports_no_model(name):
    bad = sorted(m for m in GRAPH[name] if _top(m) not in CONFIG_MAY_IMPORT)
    assert not bad, f"{name} imports {bad}"


def test_the_cycle_checks_see_a_cycle():
    """Both cycle checks fail on a graph with one (so that passing means something)."""
    graph = {"a.x": {"b.y"}, "b.y": {"a.z"}, "a.z": set()}
    assert _unit_cycle(graph) == ["a", "b", "a"] and _unit_cycle({"a.x": {"b.y"}, "b.y": set()}) is None


def test_factory_is_where_config_meets_the_pure_floor():
    """The pure modules take plain arguments; the factory builds them from a config."""
    assert "config" in GRAPH["factory"] and {"model.net", "stage2.scorer", "model.augment"} <= GRAPH["factory"]
    assert not any(_top(m) == "config" for m in GRAPH if _pure(m) for m in GRAPH[m])


@pytest.mark.parametrize("name", ["io.export", "explain"])
def test_export_and_explain_go_through_the_inference_module(name):
    names = {n.id for n in ast.walk(TREES[name]) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(TREES[name]) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "hopfield_retrieve" not in names
    private = sorted({n.attr for n in ast.walk(TREES[name]) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "det" and n.attr.startswith("_")})
    assert not private, f"{name} reaches into the estimator's private {private}"


def test_inference_does_not_run_through_the_training_engine():
    users = sorted(m for m, deps in GRAPH.items() if "engine" in deps)
    assert "inference" not in users and "io.export" not in users and "explain" not in users, users


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(SRC)} has {lines} lines (> {MAX_LINES}); split it"


def _unit_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle between units (top-level packages or modules) of ``graph``, or None."""
    units: dict[str, set[str]] = {}
    for name, deps in graph.items():
        if name:
            units.setdefault(_unit(name), set()).update(_unit(d) for d in deps if d and _unit(d) != _unit(name))
    state: dict[str, int] = {}

    def dfs(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(units.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for u in sorted(units):
        if u not in state and (found := dfs(u, [u])):
            return found
    return None


def test_no_cycles_between_packages():
    """Collapsed to units (``data.*`` is one, ``stage2.*`` another, ``inference`` a third),
    the import graph has no cycle either (e.g. stage2 <-> inference, detector <-> io)."""
    cycle = _unit_cycle(GRAPH)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_top_level_shows_the_architecture():
    """At most MAX_TOP_LEVEL modules side by side; the rest live in packages."""
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} top-level modules: {top}"
    for pkg in ("model", "stage2", "fit", "io", "bench", "config", "data", "cli", "baselines"):
        assert (SRC / pkg / "__init__.py").is_file(), pkg


def test_tests_mirror_the_packages():
    """A test folder per package, and a test file for scoring, inference and persistence."""
    tests = Path(__file__).resolve().parent
    for pkg in ("model", "stage2", "io", "bench", "config", "data", "baselines"):
        assert any((tests / pkg).glob("test_*.py")), f"tests/{pkg}/ holds no test file"
    for f in ("stage2/test_scoring.py", "test_inference.py", "io/test_persistence.py", "io/test_migration.py"):
        assert (tests / f).is_file(), f
