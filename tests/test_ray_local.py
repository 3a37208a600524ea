"""The ``ray`` backend on a private Ray instance it starts itself (``address=None``), its command
line, and the pieces that need no Ray at all: placement checks, shipped-stage verification,
message checks and option errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest
from conftest import wait_gone
from graphcases import all_cases, big_weight_model, run_reference

import corepipe
from corepipe.artifact.transfer import manifest_sha256, open_stage, receive_stage, stage_payload
from corepipe.runtime.process import module_command

pytestmark = pytest.mark.usefixtures("no_leaks")

_RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "default_worker", "dashboard", "runtime_env")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    case = next(c for c in all_cases() if c.name == "skip_far")
    path = tmp_path_factory.mktemp("art") / "a"
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=2)
    return path, case


def _ray_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(name in " ".join(p.cmdline()) for name in _RAY_PROCESSES):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _listening(procs: list[psutil.Process]) -> set[str]:
    """Addresses the live ones among ``procs`` listen on; Ray starts and ends short-lived
    helpers on its own, so one may exit between the listing and the look at its sockets."""
    out = set()
    for p in procs:
        try:
            out |= {c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    return out


# -- a private instance -------------------------------------------------------------------------
@pytest.mark.slow
def test_private_instance_is_transparent_on_the_loopback_and_gone_after_close(art):
    ray = pytest.importorskip("ray")
    path, case = art
    rng = np.random.default_rng(5)
    feeds = []
    for _ in range(12):
        f = {k: (rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
             for k, v in case.feeds.items()}
        feeds.append(f)
    assert not ray.is_initialized()
    with corepipe.load(path, backend="ray") as pipe:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        listening = _listening(_ray_children())
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
        assert all(w["module"] == os.path.dirname(corepipe.__file__) for w in pipe.placement())
        outs = list(pipe.map(feeds))
        st = pipe.stats()
        pids = [p.pid for p in _ray_children()]
    for out, f in zip(outs, feeds):
        ref = run_reference(case.model, f)
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)
    assert st.completed == 12 and [s.requests for s in st.stages] == [12, 12]
    assert pipe.stats() == st or pipe.stats().completed == 12  # kept after close
    assert not ray.is_initialized()
    assert wait_gone(pids, timeout=15) == []


@pytest.mark.slow
def test_replicas_on_ray_are_one_actor_per_stage_and_replica(art):
    """load(replicas=2) on ray: 2 placement groups of 2 actors each, results in order."""
    ray = pytest.importorskip("ray")
    path, case = art
    rng = np.random.default_rng(9)
    feeds = [{k: (rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
              for k, v in case.feeds.items()} for _ in range(12)]
    with pytest.raises(corepipe.DeploymentError, match=r"cores=2 .* ray backend .* threads_per_stage"):
        corepipe.load(path, backend="ray", cores=2)
    with corepipe.load(path, backend="ray", replicas=2) as pipe:
        assert pipe.replicas == 2 and pipe.backend == "ray"
        assert len({pipe.replica(r).placement_group.id for r in range(2)}) == 2
        assert len({w["pid"] for r in range(2) for w in pipe.replica(r).placement()}) == 4
        outs = list(pipe.map(feeds))
        st = pipe.stats()
        pids = [p.pid for p in _ray_children()]
    for out, f in zip(outs, feeds):
        ref = run_reference(case.model, f)
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)
    assert st.replicas == 2 and st.completed == 12
    assert sorted((s.replica, s.index) for s in st.stages) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(s.requests for s in st.stages if s.index == 0) == 12
    assert {b.replica for b in st.boundaries} == {0, 1}
    assert not ray.is_initialized()
    assert wait_gone(pids, timeout=15) == []


@pytest.mark.slow
def test_cli_run_on_ray_without_the_loopback_switch(art):
    path, _ = art
    argv, env = module_command("corepipe", "run", str(path), "--backend", "ray", "--requests", "20")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the backend keeps a private instance local itself
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ray backend" in out.stdout and "hand-off per boundary" in out.stdout
    assert out.stdout.count("127.0.0.1 node") == 2


def test_cli_refuses_ray_flags_for_other_backends(art):
    path, _ = art
    argv, env = module_command("corepipe", "run", str(path), "--address", "auto")
    out = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--address" in out.stderr and "--backend ray" in out.stderr


# -- options refused before any Ray process starts ---------------------------------------------
@pytest.mark.parametrize("options,match", [
    ({"placement_strategy": "ANYWHERE"}, "placement_strategy"),
    ({"stage_source": "ftp"}, "stage_source"),
    ({"data_path": "carrier-pigeon"}, "data_path must be one of"),
    ({"threads_per_stage": 0}, "threads_per_stage"),
    ({"threads_per_stage": [1, 1, 1]}, "one per stage"),
    ({"stage_resources": [{"gpu_node": 1}]}, "one dict per stage"),
    ({"stage_resources": [{"x": -1}, {}]}, "positive amount"),
])
def test_bad_options_are_refused_before_ray_starts(art, options, match):
    path, _ = art
    with pytest.raises(corepipe.CorepipeError, match=match):
        corepipe.load(path, backend="ray", **options)
    if "ray" in sys.modules:
        assert not sys.modules["ray"].is_initialized()


# -- placement checks ---------------------------------------------------------------------------
def test_placement_feasibility_names_what_is_missing():
    from corepipe.runtime.ray.cluster import bundles_for, check_feasible

    nodes = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 1.0, "memory": 1e9, "gpu_box": 1.0}]
    b = bundles_for([1, 1], [2**30, 0], None)
    assert b == [{"CPU": 1.0, "memory": float(2**30)}, {"CPU": 1.0}]
    check_feasible(b, "PACK", nodes)
    check_feasible(b, "STRICT_SPREAD", nodes)
    with pytest.raises(corepipe.CorepipeError, match=r"stage 0 needs \{CPU: 4"):
        check_feasible(bundles_for([4, 1], [0, 0], None), "PACK", nodes)
    with pytest.raises(corepipe.CorepipeError, match=r"3 stages .* 2 nodes"):
        check_feasible(bundles_for([1, 1, 1], [0] * 3, None), "STRICT_SPREAD", nodes)
    with pytest.raises(corepipe.CorepipeError, match=r"STRICT_PACK .* no node"):
        check_feasible(bundles_for([2, 1], [0] * 2, None), "STRICT_PACK", nodes)
    with pytest.raises(corepipe.CorepipeError, match=r"memory: 9536\.7 MiB"):
        check_feasible(bundles_for([1], [10**10], None), "PACK", nodes)
    pinned = bundles_for([1, 1], [0, 0], [{}, {"gpu_box": 1}])
    check_feasible(pinned, "SPREAD", nodes)
    with pytest.raises(corepipe.CorepipeError, match="gpu_box"):
        check_feasible(bundles_for([1], [0], [{"gpu_box": 2}]), "PACK", nodes)


# -- shipped stages -----------------------------------------------------------------------------
def test_shipped_stage_is_verified_on_arrival(tmp_path):
    case = big_weight_model([64 * 1024] * 4)
    cm = corepipe.compile(case.model, tmp_path / "a", example_inputs=case.inputs(), num_cores=2)
    art = corepipe.artifact.open_artifact(cm.path)
    digest = manifest_sha256(cm.path)
    payload = stage_payload(art, 1)
    assert sorted(payload) == sorted(["manifest.json", "stage_001.onnx", "stage_001.weights"])
    (tmp_path / "ok").mkdir()
    got = receive_stage(payload, 1, tmp_path / "ok", digest)
    assert got.plan == art.plan and (got.root / "stage_001.weights").read_bytes() == payload["stage_001.weights"]

    tries = iter(range(100))

    def refused(bad, match, expect=digest):
        dest = tmp_path / f"try{next(tries)}"
        dest.mkdir()
        with pytest.raises(corepipe.ArtifactError, match=match):
            receive_stage(bad, 1, dest, expect)

    flipped = bytearray(payload["stage_001.weights"])
    flipped[100] ^= 1
    refused({**payload, "stage_001.weights": bytes(flipped)}, "does not match its sha256")
    refused(payload, "manifest does not match", expect="0" * 64)
    refused({k: v for k, v in payload.items() if k != "stage_001.onnx"}, "lacks its file")
    refused({**payload, "stage_000.onnx": payload["stage_001.onnx"]}, "does not need")
    refused({**payload, "manifest.json": payload["manifest.json"] + b" "}, "manifest does not match")
    refused({k: str(v) for k, v in payload.items()}, "file names to bytes")  # type: ignore[misc]
    # The directory itself: another manifest there is not the artifact the driver verified.
    with pytest.raises(corepipe.ArtifactError, match="not the one the pipeline verified"):
        open_stage(cm.path, 1, "0" * 64)
    assert open_stage(cm.path, 1, digest).plan == art.plan


def test_messages_are_checked_against_the_boundary():
    from corepipe.artifact.plan import TensorSpec
    from corepipe.runtime.ray.actor import check_arrays

    specs = [TensorSpec("x", "float32", (1, 4)), TensorSpec("n", "int64", (3,), dynamic=True)]
    ok = [np.zeros((1, 4), np.float32), np.zeros((2,), np.int64)]
    assert check_arrays(specs, ok, "here") == ok
    for bad, match in [
        (ok[:1], "expected 2 arrays"),
        ({"x": ok[0]}, "expected 2 arrays"),
        ([ok[0].astype(np.float64), ok[1]], r"'x' should be float32\[1,4\], got float64"),
        ([np.zeros((4, 1), np.float32), ok[1]], r"got shape \[4, 1\]"),
        ([ok[0], np.zeros((4,), np.int64)], r"got shape \[4\]"),  # dynamic: at most the compiled size
        ([ok[0].tolist(), ok[1]], "got list"),
    ]:
        with pytest.raises(corepipe.CorepipeError, match=match):
            check_arrays(specs, bad, "here")
    assert json.dumps([s.to_dict() for s in specs])  # specs travel to actors as plain dicts


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_read_only_boundary_arrays_run_on_every_engine(tmp_path, engine):
    """Ray's object store hands each stage read-only arrays (0-d ones included); every engine
    must take them."""
    from test_reliability import _slow_on_demand_model

    from corepipe.artifact import open_artifact
    from corepipe.engines import StageRunner

    model = _slow_on_demand_model()  # x -> ... -> Loop(n) -> ...: a 0-d int64 crosses the cut
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32),
             "n": np.array(7, np.int64)}
    cm = corepipe.compile(model, tmp_path / "a", example_inputs=feeds, cuts=[2], engine=engine)
    assert [s.engine for s in cm.stages] == [engine, engine]
    art = open_artifact(cm.path)

    def frozen(a: np.ndarray) -> np.ndarray:  # read-only memory, as the object store maps it
        return np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)

    mid = StageRunner(art, 0).run({k: frozen(v) for k, v in feeds.items()})
    out = StageRunner(art, 1).run({k: frozen(v) for k, v in mid.items()})
    ref = run_reference(model, feeds)
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_serve_passes_the_ray_backend_through(tmp_path, art):
    """`corepipe serve --backend ray`: a KServe v2 request answered by Ray actors, then SIGTERM."""
    from serving import Server, json_request

    path, case = art
    feeds = {k: v for k, v in case.feeds.items()}
    if any(v.dtype != np.float32 for v in feeds.values()):
        pytest.skip("the JSON helper sends FP32 tensors only")
    server = Server.start(path, "--backend", "ray")
    try:
        import http.client

        conn = http.client.HTTPConnection(server.http, timeout=60)
        conn.request("POST", f"/v2/models/{path.name}/infer", body=json_request(feeds),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, body
        ref = run_reference(case.model, feeds)
        for out in body["outputs"]:
            np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]),
                                       ref[out["name"]], rtol=1e-5, atol=1e-5)
        assert server.stop() == 0
    finally:
        server.kill()
