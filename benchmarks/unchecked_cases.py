"""The cases of `unchecked_ops.py`: for each ONNX operator that takes an index or a size from a
tensor, a one-node model whose operand is a graph input, with a good value and bad ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

F, I64, I32, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL
Case = tuple[ModelProto, str, dict[str, dict[str, np.ndarray]]]  # model, operand, label -> feeds
CASES: dict[str, Callable[[], Case]] = {}


def vi(name: str, t: int, shape: list[Any] | None) -> Any:
    return helper.make_tensor_value_info(name, t, shape)


def model(op: str, ins: list[str], outs: list[Any], graph_inputs: list[Any], inits: dict[str, Any],
          opset: int = 17, **attrs: Any) -> ModelProto:
    node = helper.make_node(op, ins, [o.name for o in outs], name=op.lower(), **attrs)
    g = helper.make_graph([node], "g", graph_inputs, outs,
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def r(*shape: int) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1


def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def s64(v: int) -> np.ndarray:
    return np.array(v, np.int64)


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    CASES[fn.__name__] = fn
    return fn


def one(name: str, **labels: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    return {label: {name: v} for label, v in labels.items()}


@case
def Gather() -> Case:
    m = model("Gather", ["d", "i"], [vi("y", F, [3, 4])], [vi("i", I64, [3])], {"d": r(10, 4)}, axis=0)
    return m, "indices", one("i", ok=i64(0, 9, -10), past_end=i64(0, 10, 1), below=i64(0, -11, 1),
                             huge=i64(0, 1 << 40, 1))


@case
def GatherElements() -> Case:
    m = model("GatherElements", ["d", "i"], [vi("y", F, [1, 4])], [vi("i", I64, [1, 4])], {"d": r(3, 4)}, axis=0)
    return m, "indices", one("i", ok=np.array([[-1, -3, 2, 0]]), past_end=np.array([[3, 0, 0, 0]]))


@case
def GatherND() -> Case:
    m = model("GatherND", ["d", "i"], [vi("y", F, [2])], [vi("i", I64, [2, 2])], {"d": r(3, 4)})
    return m, "indices", one("i", ok=np.array([[2, 3], [-3, -4]]), past_end=np.array([[3, 0], [0, 0]]))


@case
def ScatterND() -> Case:
    m = model("ScatterND", ["d", "i", "u"], [vi("y", F, [4, 3])], [vi("i", I64, [2, 1])],
              {"d": r(4, 3), "u": -r(2, 3)})
    return m, "indices", one("i", ok=np.array([[3], [-4]]), past_end=np.array([[4], [0]]))


@case
def ScatterElements() -> Case:
    m = model("ScatterElements", ["d", "i", "u"], [vi("y", F, [3, 4])], [vi("i", I64, [1, 2])],
              {"d": r(3, 4), "u": -r(1, 2)}, axis=1)
    return m, "indices", one("i", ok=np.array([[3, -4]]), past_end=np.array([[4, 0]]), below=np.array([[-5, 0]]))


@case
def Scatter() -> Case:  # opset 10's name for ScatterElements
    m = model("Scatter", ["d", "i", "u"], [vi("y", F, [3, 4])], [vi("i", I64, [1, 2])],
              {"d": r(3, 4), "u": -r(1, 2)}, opset=10, axis=1)
    return m, "indices", one("i", ok=np.array([[3, 0]]), past_end=np.array([[4, 0]]))


@case
def OneHot_indices() -> Case:
    m = model("OneHot", ["i", "n", "v"], [vi("y", F, [3, 5])], [vi("i", I64, [3])],
              {"n": s64(5), "v": np.array([0, 1], np.float32)})
    return m, "indices", one("i", ok=i64(0, 4, -5), past_end=i64(0, 5, 1))


@case
def OneHot_depth() -> Case:
    m = model("OneHot", ["i", "n", "v"], [vi("y", F, [3, None])], [vi("n", I64, [])],
              {"i": i64(0, 1, 2), "v": np.array([0, 1], np.float32)})
    return m, "depth", one("n", ok=s64(5), zero=s64(0), negative=s64(-1))


@case
def ReverseSequence() -> Case:
    m = model("ReverseSequence", ["d", "l"], [vi("y", F, [4, 2])], [vi("l", I64, [2])], {"d": r(4, 2)},
              batch_axis=1, time_axis=0)
    return m, "sequence_lens", one("l", ok=i64(4, 1), past_end=i64(5, 1), negative=i64(-1, 1))


@case
def RoiAlign() -> Case:
    m = model("RoiAlign", ["x", "rois", "b"], [vi("y", F, [1, 1, 1, 1])], [vi("b", I64, [1])],
              {"x": r(2, 1, 4, 4), "rois": np.array([[0, 0, 2, 2]], np.float32)}, output_height=1, output_width=1)
    return m, "batch_indices", one("b", ok=i64(1), past_end=i64(2), negative=i64(-1))


@case
def Compress() -> Case:
    m = model("Compress", ["d", "c"], [vi("y", F, [None, 3])], [vi("c", B, [6])], {"d": r(4, 3)}, axis=0)
    return m, "condition", one("c", ok=np.array([1, 0, 1, 0, 0, 0], bool), true_past_end=np.array([1, 0, 0, 0, 0, 1], bool))


@case
def Reshape() -> Case:
    m = model("Reshape", ["d", "s"], [vi("y", F, [None, None])], [vi("s", I64, [2])], {"d": r(4, 8)})
    return m, "shape", one("s", ok=i64(2, 16), wrong_count=i64(7, -1), two_minus_1=i64(-1, -1), below_minus_1=i64(-2, -16))


@case
def ConstantOfShape() -> Case:
    m = model("ConstantOfShape", ["s"], [vi("y", F, [None, None])], [vi("s", I64, [2])], {},
              value=numpy_helper.from_array(np.array([1.0], np.float32)))
    return m, "shape", one("s", ok=i64(2, 3), negative=i64(-1, 3))


@case
def Range() -> Case:
    m = model("Range", ["a", "b", "c"], [vi("y", I64, [None])], [vi(n, I64, []) for n in "abc"], {})
    feeds = {"ok": (0, 5, 1), "delta_0": (0, 5, 0), "empty": (5, 0, 1)}
    return m, "start, limit, delta", {k: dict(zip("abc", map(s64, v))) for k, v in feeds.items()}


@case
def Tile() -> Case:
    m = model("Tile", ["d", "n"], [vi("y", F, [None, None])], [vi("n", I64, [2])], {"d": r(2, 3)})
    return m, "repeats", one("n", ok=i64(2, 1), negative=i64(-1, 1))


@case
def Expand() -> Case:
    m = model("Expand", ["d", "s"], [vi("y", F, [None, None])], [vi("s", I64, [2])], {"d": r(1, 3)})
    return m, "shape", one("s", ok=i64(2, 3), incompatible=i64(2, 4), negative=i64(-1, 3))


@case
def Resize_sizes() -> Case:
    m = model("Resize", ["d", "", "", "s"], [vi("y", F, [None] * 4)], [vi("s", I64, [4])], {"d": r(1, 1, 2, 2)}, mode="nearest")
    return m, "sizes", one("s", ok=i64(1, 1, 4, 4), zero=i64(1, 1, 0, 4), negative=i64(1, 1, -2, 4))


@case
def Resize_scales() -> Case:
    m = model("Resize", ["d", "", "s"], [vi("y", F, [None] * 4)], [vi("s", F, [4])], {"d": r(1, 1, 2, 2)}, mode="nearest")
    return m, "scales", one("s", ok=np.array([1, 1, 2, 2], np.float32), zero=np.array([1, 1, 0, 2], np.float32))


@case
def Upsample() -> Case:
    m = model("Upsample", ["d", "s"], [vi("y", F, [None] * 4)], [vi("s", F, [4])], {"d": r(1, 1, 2, 2)}, opset=9, mode="nearest")
    return m, "scales", one("s", ok=np.array([1, 1, 2, 2], np.float32), below_1=np.array([1, 1, 0.5, 2], np.float32))


@case
def TopK() -> Case:
    m = model("TopK", ["d", "k"], [vi("v", F, [2, None]), vi("i", I64, [2, None])], [vi("k", I64, [1])], {"d": r(2, 5)}, axis=1)
    return m, "k", one("k", ok=i64(3), zero=i64(0), past_end=i64(6), negative=i64(-1))


@case
def Slice_starts_ends() -> Case:
    m = model("Slice", ["d", "a", "b"], [vi("y", F, [None, None])], [vi("a", I64, [2]), vi("b", I64, [2])], {"d": r(4, 5)})
    feeds = {"ok": (i64(1, 1), i64(3, 4)), "clamped": (i64(-100, 2), i64(100, 1000)), "empty": (i64(3, 1), i64(1, 4))}
    return m, "starts, ends", {k: {"a": v[0], "b": v[1]} for k, v in feeds.items()}


@case
def Slice_axes_steps() -> Case:
    m = model("Slice", ["d", "a", "b", "x", "s"], [vi("y", F, [None, None])], [vi(n, I64, [1]) for n in "abxs"], {"d": r(4, 5)})
    feeds = {"ok": (1, 3, 1, 1), "step_0": (0, 3, 1, 0), "axis_past_end": (0, 3, 2, 1)}
    return m, "axes, steps", {k: dict(zip("abxs", (i64(x) for x in v))) for k, v in feeds.items()}


@case
def Pad() -> Case:
    m = model("Pad", ["d", "p"], [vi("y", F, [None, None])], [vi("p", I64, [4])], {"d": r(2, 3)})
    return m, "pads", one("p", ok=i64(-1, 0, 0, 1), below_size=i64(-2, 0, -1, 0))


@case
def Pad_axes() -> Case:
    m = model("Pad", ["d", "p", "", "x"], [vi("y", F, [None, None])], [vi("x", I64, [1])], {"d": r(2, 3), "p": i64(1, 1)}, opset=18)
    return m, "axes", one("x", ok=i64(1), past_end=i64(2))


@case
def Split() -> Case:
    m = model("Split", ["d", "s"], [vi("a", F, [2, None]), vi("b", F, [2, None])], [vi("s", I64, [2])], {"d": r(2, 6)}, axis=1)
    return m, "split", one("s", ok=i64(2, 4), short_sum=i64(2, 3), negative=i64(-1, 7))


@case
def Squeeze() -> Case:
    m = model("Squeeze", ["d", "x"], [vi("y", F, [None, None])], [vi("x", I64, [1])], {"d": r(2, 1, 3)})
    return m, "axes", one("x", ok=i64(1), not_1=i64(0), past_end=i64(5))


@case
def Unsqueeze() -> Case:
    m = model("Unsqueeze", ["d", "x"], [vi("y", F, [None, None, None])], [vi("x", I64, [1])], {"d": r(2, 3)})
    return m, "axes", one("x", ok=i64(1), past_end=i64(5))


@case
def ReduceSum() -> Case:
    m = model("ReduceSum", ["d", "x"], [vi("y", F, [None])], [vi("x", I64, [1])], {"d": r(2, 3)}, keepdims=0)
    return m, "axes", one("x", ok=i64(1), past_end=i64(2))


@case
def ReduceMax() -> Case:
    m = model("ReduceMax", ["d", "x"], [vi("y", F, [None])], [vi("x", I64, [1])], {"d": r(2, 3)}, opset=18, keepdims=0)
    return m, "axes", one("x", ok=i64(1), past_end=i64(2))


@case
def CumSum() -> Case:
    m = model("CumSum", ["d", "x"], [vi("y", F, [2, 3])], [vi("x", I64, [])], {"d": r(2, 3)})
    return m, "axis", one("x", ok=s64(1), past_end=s64(2))


@case
def Trilu() -> Case:
    m = model("Trilu", ["d", "k"], [vi("y", F, [3, 3])], [vi("k", I64, [])], {"d": r(3, 3)})
    return m, "k", one("k", ok=s64(1), far=s64(100))


@case
def MaxUnpool() -> Case:
    m = model("MaxUnpool", ["x", "i"], [vi("y", F, [1, 1, 2, 4])], [vi("i", I64, [1, 1, 1, 2])], {"x": r(1, 1, 1, 2)},
              kernel_shape=[2, 2], strides=[2, 2])
    return m, "indices", one("i", ok=np.array([[[[1, 7]]]]), past_end=np.array([[[[1, 8]]]]))


@case
def CenterCropPad() -> Case:
    m = model("CenterCropPad", ["d", "s"], [vi("y", F, [None, None])], [vi("s", I64, [2])], {"d": r(4, 4)}, opset=18)
    return m, "shape", one("s", ok=i64(2, 6), negative=i64(-1, 2))


@case
def GridSample() -> Case:
    m = model("GridSample", ["x", "g"], [vi("y", F, [1, 1, 1, 1])], [vi("g", F, [1, 1, 1, 2])], {"x": r(1, 1, 2, 2)})
    return m, "grid", one("g", ok=np.zeros((1, 1, 1, 2), np.float32), outside=np.full((1, 1, 1, 2), 5, np.float32))


@case
def NonMaxSuppression() -> Case:
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1]]], np.float32)
    m = model("NonMaxSuppression", ["b", "s", "k"], [vi("y", I64, [None, 3])], [vi("k", I64, [1])],
              {"b": boxes, "s": np.array([[[0.9, 0.8]]], np.float32)})
    return m, "max_output_boxes_per_class", one("k", ok=i64(1), zero=i64(0), negative=i64(-1))


@case
def DFT() -> Case:
    m = model("DFT", ["x", "n"], [vi("y", F, [1, None, 2])], [vi("n", I64, [])], {"x": r(1, 4, 1)}, axis=1)
    return m, "dft_length", one("n", ok=s64(4), zero=s64(0), negative=s64(-1))


@case
def Col2Im() -> Case:
    m = model("Col2Im", ["x", "s", "b"], [vi("y", F, [1, 1, None, None])], [vi("s", I64, [2])],
              {"x": r(1, 4, 4), "b": i64(2, 2)}, opset=18)
    return m, "image_shape", one("s", ok=i64(3, 3), mismatch=i64(5, 5))


@case
def Col2Im_block() -> Case:
    m = model("Col2Im", ["x", "s", "b"], [vi("y", F, [1, 1, 3, 3])], [vi("b", I64, [2])],
              {"x": r(1, 4, 4), "s": i64(3, 3)}, opset=18)
    return m, "block_shape", one("b", ok=i64(2, 2), mismatch=i64(3, 3))


def _window(op: str) -> Callable[[], Case]:
    def build() -> Case:
        m = model(op, ["n"], [vi("y", F, [None])], [vi("n", I64, [])], {})
        return m, "size", one("n", ok=s64(4), zero=s64(0), negative=s64(-2))
    build.__name__ = op
    return build


for _op in ("HannWindow", "HammingWindow", "BlackmanWindow"):
    case(_window(_op))
