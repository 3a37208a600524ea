"""With ``CI=true`` nothing the README promises skips (`conftest.skip_unless_ci` and the hook on
"could not import" skips); without it, the same tests skip and say why. Checked on a throwaway
test module run by a pytest of its own, with this suite's conftest, and on the export corpus'
optimum entries, whose environment .ci/run makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

_MODULE = '''
import pytest
from conftest import skip_unless_ci


def test_needs_a_tool():
    skip_unless_ci("the tool is not installed here")


def test_needs_a_package():
    pytest.importorskip("corepipe_no_such_package")


def test_skips_for_a_reason_of_its_own():
    pytest.skip("needs 16 cores")
'''


def _run(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "test_policy_probe.py").write_text(_MODULE)
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_locally_a_missing_tool_or_package_skips_saying_why(tmp_path: Path) -> None:
    out = _run(tmp_path, None)
    assert "3 skipped" in out and "failed" not in out, out
    assert "the tool is not installed here" in out and "corepipe_no_such_package" in out, out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_tool_or_package_fails(tmp_path: Path, ci: str) -> None:
    out = _run(tmp_path, ci)
    assert "2 failed" in out and "1 skipped" in out, out
    assert "CI=true, and this must run in CI: the tool is not installed here" in out, out
    assert "CI=true, and the dev extra must provide this" in out, out
    # A skip with a reason of its own (hardware, a README block marked with why) stays a skip.
    assert "SKIPPED" in out and "needs 16 cores" in out, out


def test_optimum_entries_without_their_environment_raise_what_ci_fails(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimum entry without optimum's python is `OptimumMissing` (a skip locally, a failure
    with CI=true in tests/test_corpus.py), never a silent skip of an export that failed."""
    from corpus.optimum_export import OptimumMissing, export

    monkeypatch.setenv("COREPIPE_OPTIMUM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(OptimumMissing, match=r"optimum-onnx.s python not found at .*no-python"):
        export("bert", tmp_path / "bert.onnx")
