"""Helpers of the serving tests: a model repository with reference answers, a `corepipe serve`
process started on free ports, and perf_analyzer's whereabouts."""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from conftest import compiled_chain
from graphcases import case_index_from_request, run_reference

import corepipe
from corepipe.runtime.process import module_command

TOKEN = "test-token-5f1c"


def auth() -> dict[str, str]:
    """A fresh headers dict each call: tritonclient's HTTP infer adds its binary header length to
    the dict it is given, which would then be stale for the caller's next request."""
    return {"authorization": f"Bearer {TOKEN}"}  # lower case: gRPC metadata keys must be


@dataclass
class Repo:
    """``chain``: 3 stages, output depends on input (feeds + onnxruntime answers on the whole
    model); ``gather``: 2 stages whose Gather fails on out-of-range ids (a stage error);
    ``simple``: Triton's example model (INT32 INPUT0, INPUT1 [1,16] -> their sum OUTPUT0 and
    difference OUTPUT1), which Triton's client examples call."""

    path: Path
    feeds: list[dict[str, np.ndarray]]
    refs: list[dict[str, np.ndarray]]
    gather_feeds: dict[str, np.ndarray]
    gather_ref: dict[str, np.ndarray]
    gather_bad: dict[str, np.ndarray]


def build_repo(directory: Path) -> Repo:
    path, feeds, refs = compiled_chain(directory / "build", 64 * 1024, requests=24, seed=7)
    repo = directory / "repo"
    repo.mkdir()
    shutil.copytree(path, repo / "chain")
    case = case_index_from_request()  # an index computed from the request: only its stage can check it
    corepipe.compile(case.model, repo / "gather", example_inputs=case.inputs(), num_cores=2, engine="onnxruntime")
    build_simple(repo / "simple")
    ids = next(n for n, v in case.feeds.items() if v.dtype == np.int64)
    bad = dict(case.feeds)
    bad[ids] = np.full_like(case.feeds[ids], 10**9)  # out of the table: Gather raises in stage 0
    return Repo(repo, feeds, refs, dict(case.feeds), run_reference(case.model, case.feeds), bad)


def build_simple(path: Path) -> None:
    """Triton's ``simple`` model (its client examples' model), compiled into ``path`` (2 stages)."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.INT32, [1, 16]) for n in ("INPUT0", "INPUT1")]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT32, [1, 16]) for n in ("OUTPUT0", "OUTPUT1")]
    graph = helper.make_graph([
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ], "simple", io, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = {"INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16), "INPUT1": np.ones((1, 16), np.int32)}
    corepipe.compile(model, path, example_inputs=x, num_cores=2)


def check(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """Outputs equal onnxruntime's on the whole model (fp32, the suite's tolerance)."""
    assert sorted(out) == sorted(ref)
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def _die_with_the_test_run() -> None:
    """In the child before exec: SIGTERM when the process that started it dies, so a test run
    killed before its teardown (a CI timeout, a SIGKILLed pytest) leaves no server behind; the
    server's SIGTERM path then closes its pipeline and shared memory as usual."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Server:
    """A ``corepipe serve`` process on free ports; its stdout/stderr are collected."""

    proc: subprocess.Popen[str]
    http: str = ""
    grpc: str = ""
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, path: Path, *args: str, timeout: float = 120.0) -> Server:
        argv, env = module_command("corepipe", "serve", str(path), "--http-port", "0", "--grpc-port", "0", *args)
        proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True, preexec_fn=_die_with_the_test_run)
        server = cls(proc)
        threading.Thread(target=server._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not server.grpc:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError("server did not start:\n" + "\n".join(server.lines))
            time.sleep(0.05)
        return server

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if m := re.search(r"HTTP\s+http://([\d.]+:\d+)", line):
                self.http = m.group(1)
            if m := re.search(r"gRPC\s+([\d.]+:\d+)", line):
                self.grpc = m.group(1)

    def workers(self) -> list[psutil.Process]:
        out = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "corepipe.runtime.worker" in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.Error:
                pass
        return out

    def worker_of(self, model_dir: str, stage: int) -> psutil.Process:
        """The live worker of ``stage`` of the model served from ``model_dir``."""
        for w in self.workers():
            try:
                cmd = " ".join(w.cmdline())
            except psutil.Error:  # a worker being replaced just now
                continue
            if f'/{model_dir}", "stage": {stage},' in cmd:
                return w
        raise AssertionError(f"no worker for {model_dir} stage {stage}")

    def shm(self) -> set[str]:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"corepipe_{self.proc.pid}_")}

    def stop(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def perf_analyzer() -> tuple[str | None, dict[str, str], str]:
    """perf_analyzer's path and environment, or None and why it cannot run here.

    Looked up in $COREPIPE_PERF_ANALYZER, then PATH, then /tmp/pa (shared/notes/perf_analyzer.md);
    its CUDA runtime library (which it links even on CPU-only machines) is found in its venv.
    """
    candidates = [os.environ.get("COREPIPE_PERF_ANALYZER"), shutil.which("perf_analyzer"), "/tmp/pa/bin/perf_analyzer"]
    binary = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if binary is None:
        return None, {}, ("perf_analyzer not found (set COREPIPE_PERF_ANALYZER, or install it as .ci/run "
                          "does: a venv with tritonclient[all]==2.41.0 + nvidia-cuda-runtime-cu12, apt libb64-0d)")
    env = dict(os.environ)
    venv = Path(binary).resolve().parents[1]
    libs = sorted({str(p.parent) for p in venv.rglob("libcudart.so.12")})
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    probe = subprocess.run([binary, "--version"], env=env, capture_output=True, text=True, timeout=30)
    if "error while loading shared libraries" in probe.stderr:
        return None, {}, f"perf_analyzer at {binary} cannot start: {probe.stderr.strip()}"
    return binary, env, ""


# -- requests ----------------------------------------------------------------------------------
def inputs(module, feeds, binary=True):
    """tritonclient InferInputs (``module``: tritonclient.http / .grpc or their aio) for ``feeds``."""
    out = []
    for name, arr in feeds.items():
        t = module.InferInput(name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
        if module.__name__.startswith("tritonclient.http"):
            t.set_data_from_numpy(arr, binary_data=binary)
        else:
            t.set_data_from_numpy(arr)
        out.append(t)
    return out


def outputs(result, ref):
    return {name: result.as_numpy(name) for name in ref}


def post(server, path, body, headers=None, token=True):
    conn = http.client.HTTPConnection(server.http, timeout=60)
    h = {"Content-Type": "application/json", **(auth() if token else {}), **(headers or {})}
    conn.request("POST", path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def get(server, path, token=True):
    conn = http.client.HTTPConnection(server.http, timeout=60)
    conn.request("GET", path, headers=auth() if token else {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def metric(server, series):
    """The value of one series on /metrics."""
    text = get(server, "/metrics")[1].decode()
    line = next(ln for ln in text.splitlines() if ln.startswith(series + " "))
    return float(line.rsplit(" ", 1)[1])


def json_request(feeds):
    return json.dumps({"id": "r1", "inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()} for n, a in feeds.items()]})
