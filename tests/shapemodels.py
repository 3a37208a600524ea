"""Small models over dynamic dims, built in code, and their reference answers (one onnxruntime
session on the whole model). Shared by the shape and batch tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H, VOCAB = 8, 50


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    g = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def embed_model(path: Path, seed: int = 0) -> Path:
    """ids [batch, sequence] -> Gather -> MatMul -> Relu -> MatMul (+ residual) -> y [batch,
    sequence, H]: position-wise, so padding the sequence changes no real position's answer."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, H)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32) / 3, "W1"),
             numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32) / 3, "W2")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "W1"], ["h1"], name="mm1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["h3"], name="mm2"),
             helper.make_node("Add", ["h3", "e"], ["y"], name="residual")]
    return _save(path, nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", H])], inits)


def abs_embed_model(path: Path, seed: int = 0) -> Path:
    """`embed_model` with its ids reaching the Gather through an Abs: an index computed from the
    request, which no intake check covers, so an id past the table passes `submit` and fails
    inside the stage that gathers (onnxruntime raises): a fault only a stage sees."""
    embed_model(path, seed)
    model = onnx.load(str(path))
    gather = next(n for n in model.graph.node if n.op_type == "Gather")
    gather.input[1] = "ids_abs"
    model.graph.node.insert(0, helper.make_node("Abs", ["ids"], ["ids_abs"], name="abs"))
    onnx.save(model, str(path))
    return path


def mean_model(path: Path) -> Path:
    """x [batch, sequence, H] -> MatMul -> mean over the sequence: padding changes the answer."""
    w = numpy_helper.from_array(np.eye(H, dtype=np.float32) * 2, "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
             helper.make_node("ReduceMean", ["t"], ["pooled"], axes=[1], keepdims=0, name="mean")]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", H])],
                 [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", H])], [w])


def concat_model(path: Path) -> Path:
    """x [batch, sequence, H] -> concat with itself along the sequence: an output axis of
    2 x sequence, which no dim names, so its padding cannot be trimmed."""
    w = numpy_helper.from_array(np.eye(H, dtype=np.float32), "W")
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], axis=1, name="cat"),
             helper.make_node("MatMul", ["c", "W"], ["y"], name="mm")]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", H])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, H])], [w])


def ids(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, VOCAB, (batch, length)).astype(np.int64)}


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def assert_same(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: float = 1e-4) -> None:
    assert set(out) == set(ref)
    for name, want in ref.items():
        assert out[name].shape == want.shape, (name, out[name].shape, want.shape)
        np.testing.assert_allclose(out[name], want, rtol=tol, atol=tol)
