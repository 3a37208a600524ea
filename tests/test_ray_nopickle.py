""""Nothing on a request's way is a pickle" (README, the ``ray`` backend's stream data path),
tested: two real `StageActor` objects (the class Ray runs as actors, here in this process) load a
compiled 2-stage model and are wired as the pipeline wires them on the stream (client outlet ->
stage 0 -> stage 1 -> client inlet, real TCP connections, real reader/compute/sender threads).
While requests run, every pickle load and dump this process can make (`pickle`, `_pickle`'s
Unpickler/Pickler, Ray's cloudpickle) fails the test. The answers equal onnxruntime's."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from graphcases import big_weight_model, run_reference

import corepipe
from corepipe.artifact.manifest import open_artifact
from corepipe.artifact.transfer import manifest_sha256
from corepipe.runtime.ray.framing import Frame, Framing
from corepipe.runtime.shm import OK

ray = pytest.importorskip("ray")
from corepipe.runtime.ray.actor import StageActor
from corepipe.runtime.ray.stream import Inlet, Outlet

TOKEN = b"n" * 16


class _Results:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.cv = threading.Condition()

    def __call__(self, frame: Frame) -> None:
        with self.cv:
            self.frames.append(frame)
            self.cv.notify_all()

    def wait(self, n: int, timeout: float = 30) -> list[Frame]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.frames) >= n, timeout), f"{len(self.frames)} of {n} results"
            return list(self.frames)


def _no_pickles(monkeypatch, calls: list[str]) -> None:
    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called on a request's way")
        return call

    import _pickle

    from ray import cloudpickle

    for module, names in ((pickle, ("loads", "load", "dumps", "dump", "Unpickler", "Pickler")),
                          (_pickle, ("loads", "load", "dumps", "dump", "Unpickler", "Pickler")),
                          (cloudpickle, ("loads", "load", "dumps", "dump"))):
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))


def test_nothing_on_a_requests_way_is_a_pickle(tmp_path, monkeypatch):
    case = big_weight_model([16 * 1024] * 4)
    path = tmp_path / "a"
    corepipe.compile(case.model, path, example_inputs=case.inputs(), num_cores=2, engine="onnxruntime")
    plan = open_artifact(path).plan
    n = plan.num_cores
    actors = [StageActor(k, n, [t.to_dict() for t in plan.boundaries[k]], [t.to_dict() for t in plan.boundaries[k + 1]],
                         1, TOKEN) for k in range(n)]
    results = _Results()
    inlet = Inlet("127.0.0.1", TOKEN, Framing(plan.boundaries[n], n, n), results, "test-client")
    outlet = Outlet(TOKEN, 0, "test-client")
    try:
        for a in actors:
            a.load(str(path), manifest_sha256(path), None)
        inlet.reset(0)
        ends = [list(actors[1]._inlet.address), list(inlet.address)]
        assert [a.reset(0, ends[k], True) for k, a in enumerate(actors)] == ["", ""]
        outlet.reset(0, actors[0]._inlet.address)
        assert outlet.connect(5.0) == ""
        rng = np.random.default_rng(0)
        feeds = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(12)]
        names = [t.name for t in plan.boundaries[0]]
        framing = Framing(plan.boundaries[0], n, 0)
        calls: list[str] = []
        _no_pickles(monkeypatch, calls)
        for i, f in enumerate(feeds):
            outlet.send(0, framing.parts(epoch=0, seq=i, rid=i, status=OK, error=None,
                                         arrays=[f[name] for name in names], stamps=[]))
        frames = results.wait(len(feeds))
        monkeypatch.undo()
        assert calls == []
        assert [fr.rid for fr in frames] == list(range(len(feeds))) and all(fr.status == OK for fr in frames)
        out_names = [t.name for t in plan.boundaries[n]]
        for fr, f in zip(frames, feeds):
            ref = run_reference(case.model, f)
            for name, arr in zip(out_names, fr.arrays):
                np.testing.assert_allclose(arr, ref[name], rtol=1e-5, atol=1e-5)
        assert [a.ping()["requests"] for a in actors] == [len(feeds)] * n
    finally:
        monkeypatch.undo()
        for a in actors:
            a.stop()
        inlet.close()
        outlet.close()
