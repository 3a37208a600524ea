"""The README's multi-host command, run as it is written there (we are root: ``sudo`` is dropped):
``python tests/hosts.py 3 --gbit 10 -- corepipe run ART --backend ray --address auto --placement
STRICT_SPREAD`` builds 3 namespace hosts, runs the pipeline from host 0 with each stage on its own
host, and tears the rig down. On a small model (zoo:tiny_cnn for the README's ResNet-50, to keep it
cheap); the command line itself is read from README.md, so a change there is tested here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI
from hosts import PREFIX, missing

pytest.importorskip("ray")

if why := missing():
    if IN_CI:
        pytest.fail(f"CI must run the multi-host tests, but {why}", pytrace=False)
    pytest.skip(f"the multi-host rig cannot run here: {why}", allow_module_level=True)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _readme_lines() -> tuple[str, str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    rig = next(ln for ln in lines if ln.startswith("sudo python tests/hosts.py "))
    build = lines[lines.index(rig) - 1]
    return build, rig


def test_the_readme_rig_command_runs_a_strict_spread_pipeline_across_hosts(tmp_path):
    build, rig = _readme_lines()
    assert build == "corepipe compile zoo:resnet50 -o resnet_hosts/ --num-cores 2", build
    compiled = [sys.executable, "-m", "corepipe"] + [
        "zoo:tiny_cnn" if w == "zoo:resnet50" else w for w in build.split()[1:]]
    made = subprocess.run(compiled, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert made.returncode == 0, made.stdout + made.stderr
    argv = rig.split()
    assert argv[:3] == ["sudo", "python", "tests/hosts.py"] and "--" in argv, rig
    cut = argv.index("--")
    command = [sys.executable, "-m", "corepipe"] + [
        str(tmp_path / "resnet_hosts") if a == "resnet_hosts/" else a for a in argv[cut + 2:]]
    assert argv[cut + 1] == "corepipe" and "--placement" in command and "STRICT_SPREAD" in command
    before = _namespaces()
    run = subprocess.run([sys.executable, "tests/hosts.py", *argv[3:cut], "--", *command, "--requests", "30"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "3 hosts up" in out and "30 requests in " in out and "(ray backend, 2 stages)" in out, out[-4000:]
    rows = re.findall(r"^\s+(\d)\s+\d+\s+(10\.213\.0\.\d+) node \S+\s+(\d+)", out, re.M)
    assert [(stage, n) for stage, _, n in rows] == [("0", "30"), ("1", "30")], out[-4000:]  # every request, both stages
    hosts = {ip for _, ip, _ in rows}
    assert len(hosts) == 2, out[-4000:]  # STRICT_SPREAD: each of the 2 stages on its own host
    assert _namespaces() <= before, "the rig's namespaces were left behind"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {ln.split(" ")[0] for ln in out.splitlines() if ln.startswith(PREFIX)}
