"""The package stays lint-clean (ruff) and type-clean (mypy), as style.md asks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is a dev extra")
def test_ruff_clean():
    res = subprocess.run(["ruff", "check", "corepipe", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean():
    pytest.importorskip("mypy")
    res = subprocess.run([sys.executable, "-m", "mypy", "corepipe"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
