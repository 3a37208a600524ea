"""Per-request accounting of the hot path (COREPIPE_PHASES) and the workers' opt-in huge-page heap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import corepipe
from corepipe import zoo
from corepipe.runtime.phases import ENV, Phases, phases_from_env
from corepipe.runtime.process import HUGEPAGES_ENV, huge_pages_env

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_phases_off_unless_asked(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert phases_from_env("client", ("a",)) is None


def test_phases_laps_and_adds(tmp_path):
    ph = Phases("stage0", ("one", "two"), str(tmp_path), process_cpu=True)
    ph.lap(0)
    ph.lap(1)
    ph.lap(1)
    ph.add(0, 5, 3)
    ph.thread_done("worker")
    ph.dump()
    (path,) = tmp_path.glob("stage0-*.json")
    data = json.loads(path.read_text())
    assert data["phases"]["one"]["count"] == 2 and data["phases"]["two"]["count"] == 2
    assert data["phases"]["one"]["wall_ns"] >= 5 and "process_cpu_ns" in data["phases"]["two"]
    assert set(data["threads_cpu_ns"]) == {"worker"}


def test_every_request_counted_once_per_phase(tmp_path, monkeypatch):
    """With COREPIPE_PHASES set, the client and every worker write their counters at close:
    one submit, feed and collect per request, one engine run per request per stage."""
    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    out_dir = tmp_path / "phases"
    monkeypatch.setenv(ENV, str(out_dir))
    n = 7
    with corepipe.load(cm.path) as pipe:
        outs = [f.result(timeout=60) for f in [pipe.submit(feeds) for _ in range(n)]]
    assert all(set(o) == set(outs[0]) for o in outs)
    files = {p.name.split("-")[0]: json.loads(p.read_text()) for p in out_dir.glob("*.json")}
    assert set(files) == {"client", "stage0", "stage1"}
    client = files["client"]["phases"]
    assert client["submit"]["count"] == client["feed"]["count"] == client["collect"]["count"] == n
    for k in ("stage0", "stage1"):
        phases = files[k]["phases"]
        assert phases["engine"]["count"] == phases["publish"]["count"] == n, (k, phases)
        assert phases["engine"]["process_cpu_ns"] > 0
        assert files[k]["threads_cpu_ns"].keys() == {"worker"}


def test_phases_change_no_answer(tmp_path, monkeypatch):
    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    with corepipe.load(cm.path) as pipe:
        plain = pipe.run(feeds)
    monkeypatch.setenv(ENV, str(tmp_path / "phases"))
    with corepipe.load(cm.path) as pipe:
        counted = pipe.run(feeds)
    for name, value in plain.items():
        np.testing.assert_array_equal(counted[name], value)


def test_huge_pages_env_only_when_asked_and_keeps_user_tunables():
    assert "GLIBC_TUNABLES" not in huge_pages_env({})  # off by default
    assert "GLIBC_TUNABLES" not in huge_pages_env({HUGEPAGES_ENV: "0"})
    on = {HUGEPAGES_ENV: "1"}
    assert huge_pages_env(dict(on))["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert huge_pages_env({**on, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert huge_pages_env({**on, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


@pytest.mark.parametrize("switch,expected", [(None, False), ("0", False), ("1", True)])
def test_workers_start_with_huge_pages_only_when_asked(tmp_path, monkeypatch, switch, expected):
    model, feeds = zoo.get("mlp")
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, num_cores=2)
    if switch is None:
        monkeypatch.delenv(HUGEPAGES_ENV, raising=False)
    else:
        monkeypatch.setenv(HUGEPAGES_ENV, switch)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with corepipe.load(cm.path) as pipe:
        pipe.run(feeds)
        for pid in pipe.worker_pids():  # type: ignore[attr-defined]
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert (b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in env) is expected
