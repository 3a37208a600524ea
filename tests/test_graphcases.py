"""Tests of the graph-case library itself: every case is a valid model that onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphcases import CASES, GraphCase, all_cases, big_weight_model, broken_models, run_reference


@pytest.fixture(params=CASES, ids=lambda make: make.__name__.removeprefix("case_"))
def case(request: pytest.FixtureRequest) -> GraphCase:
    return request.param()


def test_case_passes_full_checker(case: GraphCase) -> None:
    onnx.checker.check_model(case.model, full_check=True)
    assert 3 <= len(case.model.graph.node) <= 25


def test_case_runs_in_onnxruntime(case: GraphCase) -> None:
    outputs = run_reference(case.model, case.feeds)
    assert list(outputs) == [o.name for o in case.model.graph.output]
    for name, value in outputs.items():
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_case_feeds_match_graph_inputs(case: GraphCase) -> None:
    graph = case.model.graph
    initializers = {t.name for t in graph.initializer}
    declared = [i.name for i in graph.input if i.name not in initializers]
    assert list(case.feeds) == declared
    assert set(case.inputs()) == set(declared)


@pytest.mark.parametrize("make", CASES, ids=lambda make: make.__name__.removeprefix("case_"))
def test_case_is_deterministic(make) -> None:
    case, again = make(), make()
    assert again.model.SerializeToString() == case.model.SerializeToString()
    for name, value in case.feeds.items():
        np.testing.assert_array_equal(value, again.feeds[name])


def test_case_names_are_unique() -> None:
    names = [c.name for c in all_cases()]
    assert len(names) == len(set(names))
    assert [make.__name__ for make in CASES] == [f"case_{n}" for n in names]


@pytest.mark.parametrize("name", sorted(broken_models()))
def test_broken_model_fails_checker(name: str) -> None:
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(broken_models()[name], full_check=True)


def test_big_weight_model_sizes_and_runs() -> None:
    mib = 1 << 20
    requested = [4 * mib, 4 * mib, 9 * mib, 1000]
    case = big_weight_model(requested)
    onnx.checker.check_model(case.model, full_check=True)
    sizes = [onnx.numpy_helper.to_array(t).nbytes for t in case.model.graph.initializer]
    assert sizes[:3] == requested[:3]
    assert abs(sizes[3] - requested[3]) <= 2 * 64
    (y,) = run_reference(case.model, case.feeds).values()
    assert y.shape == (1, 64) and np.isfinite(y).all()
