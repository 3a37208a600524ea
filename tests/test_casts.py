"""Front-end helpers without a framework: float16 graphs run in float32 with the caller's I/O
dtypes (checked against onnxruntime), and SavedModel feed names mapped onto signature inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from corepipe import CompileError
from corepipe.frontends.casts import float16_to_float32, has_float16, set_io_dtypes
from corepipe.frontends.tensorflow import SignatureInput, match_feeds

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def _fp16_model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x:f16[2,3] @ w:f16[3,4] + Constant c:f16[4] -> Cast(to=f16) -> Relu -> y:f16[2,4]."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float16)
    c = rng.standard_normal(4).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c)),
         helper.make_node("Add", ["m", "c"], ["a"]),
         helper.make_node("Cast", ["a"], ["a16"], to=F16),
         helper.make_node("Relu", ["a16"], ["y"])],
        "fp16", [helper.make_tensor_value_info("x", F16, [2, 3])],
        [helper.make_tensor_value_info("y", F16, [2, 4])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, c


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_float16_graph_runs_in_float32_with_float16_io() -> None:
    model, w, c = _fp16_model()
    assert has_float16(model)
    assert float16_to_float32(model) >= 5  # weight, Constant, Cast target, input, output
    assert not has_float16(model)
    assert all(t.data_type == F32 for t in model.graph.initializer)
    notes = set_io_dtypes(model, {"x": F16}, {"y": F16})
    assert notes == ["input 'x': float16 -> float32", "output 'y': float32 -> float16"]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float16)
    (y,) = _run(model, {"x": x})
    ref = np.maximum(x.astype(np.float32) @ w.astype(np.float32) + c.astype(np.float32), 0)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, ref.astype(np.float16))  # fp32 math, rounded once at the end


def test_set_io_dtypes_casts_a_float32_model_from_float16_requests() -> None:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", F32, [3])],
        [helper.make_tensor_value_info("y", F32, [3]), helper.make_tensor_value_info("z", F32, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_io_dtypes(model, {"x": F16}, {"y": F16})  # y is also read by Neg: it keeps its fp32 value
    x = np.array([1.5, -2.0, 3.25], np.float16)
    y, z = _run(model, {"x": x})
    assert (y.dtype, z.dtype) == (np.float16, np.float32)
    np.testing.assert_array_equal(z, -(x.astype(np.float32) ** 2))


INPUTS = [SignatureInput("input_ids", "input_ids", "int32", (None, 16)),
          SignatureInput("attention_mask", "attention_mask", "int32", (None, 16))]
ONE = [SignatureInput("keras_tensor", "keras_tensor", "float32", (None, 224, 224, 3))]


def test_feed_names_match_keys_placeholders_and_the_lone_input() -> None:
    where = "signature 'serving_default' of 'm'"
    got = match_feeds(INPUTS, {"input_ids:0": 1, "serving_default_attention_mask:0": 2}, where)
    assert got == {"input_ids": ("input_ids:0", 1), "attention_mask": ("serving_default_attention_mask:0", 2)}
    assert match_feeds(ONE, {"input_1:0": 3}, where) == {"keras_tensor": ("input_1:0", 3)}  # by position
    with pytest.raises(CompileError, match=r"feed 'input_1:0' is not an input of signature 'serving_default' "
                       r"of 'm': expected one of \{input_ids: int32\[\?,16\], attention_mask: int32\[\?,16\]\}"):
        match_feeds(INPUTS, {"input_1:0": 1}, where)
    with pytest.raises(CompileError, match="feed 'b' is not an input"):
        match_feeds(ONE, {"keras_tensor": 1, "b": 2}, where)  # two feeds: no guessing by position
