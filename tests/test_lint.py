"""The package stays lint-clean (ruff) and type-clean (mypy), as style.md asks, and no test asserts
a duration (the guide: performance is measured in benchmarks, never a threshold in a unit test).

ruff and mypy run as ``sys.executable -m ...``: the interpreter running the tests has them (the
dev extra) whether or not its virtual environment is activated. Missing, they skip saying so;
with ``CI=true`` they fail (`conftest.skip_unless_ci`).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import skip_unless_ci

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        skip_unless_ci(f"{module} is not installed for {sys.executable} (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          check=False)


def test_ruff_clean() -> None:
    res = _run_module("ruff", "check", "corepipe", "tests", "benchmarks", "tools")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean() -> None:
    res = _run_module("mypy", "corepipe")
    assert res.returncode == 0, res.stdout + res.stderr


# --- no durations in tests ------------------------------------------------------------------------

#: Clock reads: a comparison with one of these in it is a timing threshold.
CLOCKS = {"monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "time", "time_ns", "process_time"}


def _reads_a_clock(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in CLOCKS:
                return True
        if isinstance(sub, ast.Name) and sub.id in ("elapsed", "duration", "took", "t0"):
            return True
    return False


def _is_threshold(cmp: ast.Compare) -> bool:
    """A comparison of a clock reading with a bound, other than a wait's ``deadline`` (a loop that
    waits for a condition may give up after a generous bound, as pytest-timeout would: it bounds
    the wait, not how long the thing under test took)."""
    if not any(isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)) for op in cmp.ops):
        return False
    sides = [cmp.left, *cmp.comparators]
    if any(isinstance(s, ast.Name) and s.id == "deadline" for s in sides):
        return False
    return _reads_a_clock(cmp)


def duration_asserts(source: str, filename: str = "<test>") -> list[str]:
    """``file:line`` of each timing threshold in ``source``: an ``assert`` that compares a clock
    reading (or a variable named ``t0``, ``elapsed``...), or a hypothesis ``deadline=`` that is not
    None."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Assert):
            if any(_is_threshold(n) for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
                found.append(f"{filename}:{node.lineno}")
        elif (isinstance(node, ast.keyword) and node.arg == "deadline"
              and not (isinstance(node.value, ast.Constant) and node.value.value is None)):
            found.append(f"{filename}:{node.value.lineno} (hypothesis deadline)")
    return found


def test_the_duration_check_finds_thresholds() -> None:
    bad = ("import time\nt0 = time.monotonic()\nassert time.monotonic() - t0 < 5\n"
           "assert elapsed <= 2.0, 'slow'\n@settings(deadline=2000)\ndef f(): pass\n")
    assert duration_asserts(bad) == ["<test>:3", "<test>:4", "<test>:5 (hypothesis deadline)"]
    fine = ("deadline = time.monotonic() + 10\nwhile time.monotonic() < deadline: pass\n"
            "assert time.monotonic() < deadline, 'condition not reached in time'\n"
            "assert st.latency_p50_s > 0\n@settings(deadline=None)\ndef f(): pass\n")
    assert duration_asserts(fine) == []


def test_no_test_asserts_a_duration() -> None:
    found = [hit for path in sorted(TESTS.rglob("*.py"))
             for hit in duration_asserts(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], f"timing thresholds in tests (assert behaviour instead): {found}"
