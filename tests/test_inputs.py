"""Requests are checked against the compiled signature before they enter the pipeline: every
bad one is an `InputError` saying what was expected and what came."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from graphcases import run_reference
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import corepipe
from corepipe import InputError

SPECS = {"x": ("float32", (1, 4)), "ids": ("int64", (1, 3)), "s": ("float32", ())}


def signature_model() -> onnx.ModelProto:
    """x float32[1,4], ids int64[1,3] and a 0-d scale s -> y float32[1,4] and the 0-d
    s_neg (a 0-d output shows whether a 0-d input stayed 0-d), over 6 nodes."""
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["a"], name="mul"),
        helper.make_node("Cast", ["ids"], ["idf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["idf"], ["r"], name="sum", keepdims=1),
        helper.make_node("Add", ["a", "r"], ["b"], name="add"),
        helper.make_node("Tanh", ["b"], ["y"], name="tanh"),
        helper.make_node("Neg", ["s"], ["s_neg"], name="neg"),
    ]
    graph = helper.make_graph(
        nodes, "signature",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("s_neg", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def good_feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((1, 4)).astype(np.float32),
        "ids": rng.integers(0, 5, size=(1, 3), dtype=np.int64),
        "s": np.array(0.5, dtype=np.float32),
    }


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("inputs") / "art"
    corepipe.compile(signature_model(), out, cuts=[2])
    with corepipe.load(out, backend="inline") as p:
        yield p


def assert_matches_reference(got: dict[str, np.ndarray], feeds: dict[str, Any]) -> None:
    want = run_reference(signature_model(), {k: np.asarray(v) for k, v in feeds.items()})
    assert list(got) == list(want)
    for name, ref in want.items():
        assert (got[name].dtype, got[name].shape) == (ref.dtype, ref.shape), name
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6)


def rejects(pipe: corepipe.Pipeline, feeds: Any) -> str:
    """The InputError message for ``feeds``, from both `run` and `submit`; nothing is queued."""
    before = pipe.stats()
    with pytest.raises(InputError) as info:
        pipe.run(feeds)
    with pytest.raises(InputError):
        pipe.submit(feeds)
    after = pipe.stats()
    assert (after.completed, after.failed) == (before.completed, before.failed)
    assert [s.requests for s in after.stages] == [s.requests for s in before.stages]
    return str(info.value)


def test_good_request_matches_reference(pipe: corepipe.Pipeline) -> None:
    feeds = good_feeds()
    assert_matches_reference(pipe.run(feeds), feeds)


def test_scalar_input_as_numpy_scalar_or_0d_array(pipe: corepipe.Pipeline) -> None:
    # A 0-d input must stay 0-d on its way in (np.ascontiguousarray would make it [1]).
    for s in (np.float32(0.25), np.array(0.25, dtype=np.float32)):
        feeds = {**good_feeds(1), "s": s}
        assert_matches_reference(pipe.run(feeds), feeds)


def test_non_contiguous_arrays_are_accepted(pipe: corepipe.Pipeline) -> None:
    feeds = good_feeds(2)
    wide = np.zeros((1, 8), np.float32)
    wide[:, ::2] = feeds["x"]
    strided = {**feeds, "x": wide[:, ::2]}
    assert not strided["x"].flags.c_contiguous
    assert_matches_reference(pipe.run(strided), feeds)


def test_missing_input(pipe: corepipe.Pipeline) -> None:
    feeds = good_feeds()
    del feeds["ids"]
    msg = rejects(pipe, feeds)
    assert "missing ['ids']" in msg
    assert "x: float32[1,4], ids: int64[1,3], s: float32[]" in msg


def test_unknown_input(pipe: corepipe.Pipeline) -> None:
    msg = rejects(pipe, {**good_feeds(), "mask": np.ones((1, 4), np.float32)})
    assert "unknown ['mask']" in msg and "ids: int64[1,3]" in msg


def test_missing_and_unknown_together(pipe: corepipe.Pipeline) -> None:
    feeds = good_feeds()
    feeds["X"] = feeds.pop("x")  # wrong case
    msg = rejects(pipe, feeds)
    assert "missing ['x']" in msg and "unknown ['X']" in msg


def test_non_string_key(pipe: corepipe.Pipeline) -> None:
    msg = rejects(pipe, {**good_feeds(), 0: np.zeros(1)})
    assert "unknown ['0']" in msg


def test_wrong_dtype_exact_message(pipe: corepipe.Pipeline) -> None:
    msg = rejects(pipe, {**good_feeds(), "x": np.zeros((1, 4), np.float64)})
    assert msg.startswith("input 'x': expected float32[1,4], got float64[1,4]"), msg
    assert ".astype(np.float32)" in msg


@pytest.mark.parametrize(
    "name, value, got",
    [
        ("ids", np.zeros((1, 3), np.int32), "int32[1,3]"),
        ("ids", np.zeros((1, 3), np.float32), "float32[1,3]"),
        ("x", np.zeros((4,), np.float32), "float32[4]"),
        ("x", np.zeros((1, 1, 4), np.float32), "float32[1,1,4]"),
        ("x", np.zeros((1, 5), np.float32), "float32[1,5]"),
        ("x", np.zeros((2, 4), np.float32), "float32[2,4]"),
        ("x", np.zeros((0, 4), np.float32), "float32[0,4]"),
        ("s", np.zeros((1,), np.float32), "float32[1]"),
        ("s", np.float64(1.0), "float64[]"),
        ("x", np.zeros((1, 4), ">f4"), ">f4[1,4]"),
        ("x", np.array([[None] * 4]), "object[1,4]"),
    ],
)
def test_wrong_dtype_or_shape(pipe: corepipe.Pipeline, name: str, value: Any, got: str) -> None:
    dtype, shape = SPECS[name]
    want = f"{dtype}[{','.join(map(str, shape))}]"
    msg = rejects(pipe, {**good_feeds(), name: value})
    assert msg.startswith(f"input {name!r}: expected {want}, got {got}"), msg


@pytest.mark.parametrize(
    "value, kind",
    [([[1.0, 2.0, 3.0, 4.0]], "list"), (None, "NoneType"), ("0.5", "str"), (0.5, "float"),
     ((1, 2), "tuple"), ({"a": 1}, "dict"), (b"\x00" * 16, "bytes")],
)
def test_non_array_values(pipe: corepipe.Pipeline, value: Any, kind: str) -> None:
    msg = rejects(pipe, {**good_feeds(), "x": value})
    assert msg.startswith(f"input 'x': expected a numpy array float32[1,4], got {kind}"), msg
    assert "np.asarray" in msg


@pytest.mark.parametrize("feeds", [[("x", np.zeros((1, 4)))], None, "x", np.zeros((1, 4)), 3],
                         ids=["list", "None", "str", "array", "int"])
def test_feeds_not_a_dict(pipe: corepipe.Pipeline, feeds: Any) -> None:
    msg = rejects(pipe, feeds)
    assert msg.startswith("feeds must be a dict of input name -> numpy array, got "), msg
    assert "['x', 'ids', 's']" in msg


# --- random requests: InputError or a correct answer, nothing else -------------------------------

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool", "complex64"]


@st.composite
def arrays(draw: st.DrawFn, name: str | None) -> Any:
    if name is not None and draw(st.integers(0, 2)) == 0:
        dtype, shape = SPECS[name]  # often exactly right, so valid requests happen too
    else:
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    arr = np.zeros(shape, dtype=dtype)
    if arr.size and dtype.startswith("float"):
        arr[...] = draw(st.floats(-3, 3, width=16))
    if not shape and draw(st.booleans()):
        return arr[()]  # numpy scalar
    return arr


def values(name: str | None) -> st.SearchStrategy[Any]:
    junk = st.none() | st.integers() | st.floats() | st.text(max_size=5) | st.binary(max_size=5)
    return arrays(name) | junk | st.lists(st.floats(), max_size=4)


def exact(name: str) -> st.SearchStrategy[np.ndarray]:
    dtype, shape = SPECS[name]
    if dtype == "int64":
        return st.integers(-9, 9).map(lambda v: np.full(shape, v, dtype=dtype))
    return st.floats(-3, 3, width=32).map(lambda v: np.full(shape, v, dtype=dtype))


@st.composite
def requests(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["valid", "one_off", "random", "not_a_dict"]))
    if kind == "not_a_dict":
        return draw(st.none() | st.lists(st.integers(), max_size=3) | st.text(max_size=3)
                    | st.tuples(st.just("x"), arrays("x")))
    if kind == "random":
        feeds: dict[Any, Any] = {n: draw(values(n)) for n in SPECS if draw(st.integers(0, 5))}
        for _ in range(draw(st.integers(0, 2))):
            feeds[draw(st.text(max_size=4) | st.integers())] = draw(values(None))
        return feeds
    feeds = {n: draw(exact(n)) for n in SPECS}
    if kind == "one_off":
        name = draw(st.sampled_from(sorted(SPECS)))
        how = draw(st.sampled_from(["drop", "extra", "replace"]))
        if how == "drop":
            del feeds[name]
        elif how == "extra":
            feeds[draw(st.text(max_size=4) | st.integers())] = draw(values(None))
        else:
            feeds[name] = draw(values(name))
    return feeds


def is_valid(feeds: Any) -> bool:
    if not isinstance(feeds, dict) or set(feeds) != set(SPECS):
        return False
    for name, (dtype, shape) in SPECS.items():
        v = feeds[name]
        if not isinstance(v, (np.ndarray, np.generic)) or str(v.dtype) != dtype or v.shape != shape:
            return False
    return True


@settings(max_examples=200, deadline=None)
@given(feeds=requests())
def test_random_requests(pipe: corepipe.Pipeline, feeds: Any) -> None:
    event("valid" if is_valid(feeds) else "invalid")
    if is_valid(feeds):
        assert_matches_reference(pipe.run(feeds), feeds)
    else:
        with pytest.raises(InputError):
            pipe.run(feeds)
