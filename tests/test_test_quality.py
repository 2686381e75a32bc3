"""Checks on the test suite itself: assertions that cannot fail.

Two patterns are looked for in every Python file under tests/ (parsed with ``ast``, so
strings and comments never match):

* ``lo <= x <= hi`` (or with ``<``, or written the other way round with ``>=``) inside an
  ``assert``, where ``lo`` and ``hi`` are numeric constants with ``lo <= 0`` and
  ``hi >= 1``. For the quantities these tests bound (AUROC, rates, recall, normalised
  scores) such a range holds for any output at all, so the assertion proves nothing. This
  includes the comparison sitting inside ``all(...)`` or one arm of an ``and``.
* an assertion-like call (a function whose name starts with ``assert``, such as
  ``torch.testing.assert_close`` or ``np.testing.assert_allclose``) used as an operand of
  ``and``/``or``. These helpers return None, so ``assert_close(a, b) and
  assert_close(c, d)`` never runs the second check; with ``or`` the second check runs only
  when the first one is falsy, which it always is.

``ALLOWED`` lists the few flagged expressions that are kept on purpose, each with its
reason; an entry that no longer matches anything fails too, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# (path relative to tests/, ast.unparse of the flagged expression) -> why it is kept.
ALLOWED: dict[tuple[str, str], str] = {}


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (``3``, ``1.0``, ``-1``), else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    return None


def _trivial_range(node: ast.Compare) -> bool:
    """True for ``lo <(=) x <(=) hi`` or ``hi >(=) x >(=) lo`` with lo <= 0 and hi >= 1."""
    if len(node.ops) != 2:
        return False
    first, third = node.left, node.comparators[1]
    if all(isinstance(op, (ast.Lt, ast.LtE)) for op in node.ops):
        lo, hi = _number(first), _number(third)
    elif all(isinstance(op, (ast.Gt, ast.GtE)) for op in node.ops):
        lo, hi = _number(third), _number(first)
    else:
        return False
    if _number(node.comparators[0]) is not None:  # constants on all three sides: not a bound on a value
        return False
    return lo is not None and hi is not None and lo <= 0 and hi >= 1


def _is_assert_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name.startswith("assert")


def find_problems(source: str) -> list[tuple[int, str, str]]:
    """``(line, kind, expression)`` for each bad pattern in ``source``; kind is "range" or "boolop"."""
    found: list[tuple[int, str, str]] = []
    for stmt in ast.walk(ast.parse(source)):
        if isinstance(stmt, ast.Assert):
            for node in ast.walk(stmt.test):
                if isinstance(node, ast.Compare) and _trivial_range(node):
                    found.append((node.lineno, "range", ast.unparse(node)))
            roots = [stmt.test]
        elif isinstance(stmt, ast.Expr):
            roots = [stmt.value]
        else:
            continue
        for root in roots:
            for node in ast.walk(root):
                if isinstance(node, ast.BoolOp) and any(_is_assert_call(v) for v in node.values):
                    found.append((node.lineno, "boolop", ast.unparse(node)))
    return sorted(found)


# --- the checker on hand-written snippets ---------------------------------------------

@pytest.mark.parametrize("source", [
    "assert 0 <= auroc <= 1",
    "assert 0.0 < auroc < 1.0",
    "assert -1 <= corr <= 1",
    "assert 1.0 >= fpr >= 0.0",
    "assert 0 <= r['fpr'] <= 1 and r['seed'] == 0",
    "assert len(a) == 3 and all(0.0 <= v <= 1.0 for v in a)",
    "assert all(0 <= float(v) <= 100 for r in rows for v in r[1:])",
    "def test():\n    if ok:\n        assert 0 <= x <= 1\n",
])
def test_checker_flags_ranges_that_cannot_fail(source):
    kinds = [kind for _, kind, _ in find_problems(source)]
    assert kinds == ["range"], source


@pytest.mark.parametrize("source", [
    "assert 0.6 <= auroc <= 1",       # a real floor
    "assert 0 <= x <= 0.5",           # the upper bound can fail
    "assert 0.1 < fpr < 1",           # so can the lower one
    "assert 1 <= steps < 50",
    "assert lo <= x <= hi",           # bounds are not constants
    "assert 0 <= x",                  # not a range
    "assert 0 <= x < 1 < y",          # three comparisons
    "assert 0 <= x >= 1",             # mixed directions
    "assert 0 < 0.5 < 1",             # no value in between
    "ok = 0 <= x <= 1",               # not an assertion
    "assert True <= x <= 1",          # bool is not a numeric literal here
    "s = 'assert 0 <= auroc <= 1'",   # text, not code
])
def test_checker_passes_ranges_that_can_fail(source):
    assert find_problems(source) == []


@pytest.mark.parametrize("source", [
    "torch.testing.assert_close(a, b) and torch.testing.assert_close(c, d)",
    "np.testing.assert_allclose(a, b) or np.testing.assert_array_equal(c, d)",
    "assert_close(a, b) and assert_close(c, d)",
    "assert assert_close(a, b) and x == 1",
    "self.assertEqual(a, b) and self.assertTrue(c)",
    "ok or (assert_close(a, b) and assert_close(c, d))",
])
def test_checker_flags_assertion_calls_joined_by_and_or(source):
    found = find_problems(source)
    assert found and all(kind == "boolop" for _, kind, _ in found), source


@pytest.mark.parametrize("source", [
    "torch.testing.assert_close(a, b)\ntorch.testing.assert_close(c, d)",
    "assert a == 1 and b == 2",
    "assert is_close(a, b) and is_close(c, d)",
    "check(a) and check(b)",
    "x = assert_close(a, b)",
])
def test_checker_passes_separate_or_non_assertion_calls(source):
    assert find_problems(source) == []


def test_checker_reports_each_line():
    source = "x = 1\nassert 0 <= a <= 1\nassert 0.2 < b\nassert_close(a, b) and assert_close(c, d)\n"
    assert [(line, kind) for line, kind, _ in find_problems(source)] == [(2, "range"), (4, "boolop")]


# --- the checker on the suite ---------------------------------------------------------

def _suite_problems() -> list[tuple[str, int, str, str]]:
    out = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        for line, kind, expr in find_problems(path.read_text(encoding="utf-8")):
            out.append((rel, line, kind, expr))
    return out


def test_no_assertion_in_the_suite_that_cannot_fail():
    assert len(list(TESTS.rglob("test_*.py"))) > 50  # the walk found the suite
    problems = _suite_problems()
    bad = [f"tests/{rel}:{line}: {kind}: {expr}" for rel, line, kind, expr in problems if (rel, expr) not in ALLOWED]
    assert not bad, "assertions that cannot fail:\n" + "\n".join(bad)


def test_allow_list_entries_still_match():
    seen = {(rel, expr) for rel, _, _, expr in _suite_problems()}
    assert not [key for key in ALLOWED if key not in seen]
    assert all(reason.strip() for reason in ALLOWED.values())
