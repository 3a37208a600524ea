"""Cases about unusual tensors and slots: dtypes, symbolic dims, 0-d and empty tensors, and
optional inputs/outputs left empty."""

from __future__ import annotations

import numpy as np

from ._base import BOOL, F16, F32, I32, GraphCase, build, init, node, randn, vi


def case_optional_empty_inputs() -> GraphCase:
    """Omitted optional inputs spelled "" (Clip min, Resize roi, Pad constant_value) plus a
    LayerNormalization with its bias left off, spread over the graph.

    The bias is left off rather than spelled "": onnxruntime 1.32 segfaults on
    LayerNormalization(X, scale, "").
    """
    nodes = [
        node("Clip", ["x", "", "clip_max"], ["c"]),
        node("Mul", ["c", "s"], ["c2"]),
        node("Resize", ["c2", "", "scales"], ["r"], mode="nearest"),
        node("Relu", ["r"], ["r2"]),
        node("Pad", ["r2", "pads", ""], ["p"], mode="constant"),
        node("Sigmoid", ["p"], ["p2"]),
        node("Tanh", ["p2"], ["p3"]),
        node("LayerNormalization", ["p3", "ln_scale"], ["ln"], axis=-1),
        node("Add", ["ln", "p2"], ["y0"]),
        node("Clip", ["y0", "", "clip_max"], ["y"]),
    ]
    inits = [
        init("clip_max", 0.8, "float32"),
        init("s", randn(300, 1, 2, 1, 1)),
        init("scales", [1.0, 1.0, 2.0, 2.0], "float32"),
        init("pads", [0, 0, 1, 1, 0, 0, 1, 1], "int64"),
        init("ln_scale", 1.0 + 0.1 * randn(301, 10)),
    ]
    model = build(
        "optional_empty_inputs",
        nodes,
        [vi("x", F32, [1, 2, 4, 4])],
        [vi("y", F32, [1, 2, 10, 10])],
        inits,
    )
    return GraphCase("optional_empty_inputs", model, {"x": randn(302, 1, 2, 4, 4)})


def case_float16() -> GraphCase:
    """A float16 MLP (MatMul, Add, Relu, Softmax) with float16 input and output."""
    h = np.float16
    nodes = [
        node("MatMul", ["x", "w1"], ["h1"]),
        node("Add", ["h1", "b1"], ["h2"]),
        node("Relu", ["h2"], ["h3"]),
        node("MatMul", ["h3", "w2"], ["h4"]),
        node("Add", ["h4", "b2"], ["h5"]),
        node("Add", ["h5", "x"], ["h6"]),
        node("Softmax", ["h6"], ["h7"], axis=-1),
        node("Mul", ["h7", "x"], ["y"]),
    ]
    inits = [
        init("w1", randn(310, 8, 16, dtype=h) * h(0.3)),
        init("b1", randn(311, 16, dtype=h)),
        init("w2", randn(312, 16, 8, dtype=h) * h(0.3)),
        init("b2", randn(313, 8, dtype=h)),
    ]
    model = build("float16", nodes, [vi("x", F16, [2, 8])], [vi("y", F16, [2, 8])], inits)
    return GraphCase("float16", model, {"x": randn(314, 2, 8, dtype=h)}, rtol=1e-2, atol=1e-2)


def case_symbolic_dims() -> GraphCase:
    """Input dims ("batch", "seq", 8); Shape/Gather/Range build positions from "seq",
    and Reshape [0, -1] flattens; example_inputs fix batch=2, seq=5."""
    nodes = [
        node("Shape", ["x"], ["shp"]),
        node("Gather", ["shp", "i1"], ["seq_len"]),
        node("Range", ["zero_i", "seq_len", "one_i"], ["pos"]),
        node("Cast", ["pos"], ["pos_f"], to=F32),
        node("Unsqueeze", ["pos_f", "ax1"], ["pos_col"]),
        node("MatMul", ["x", "w"], ["h1"]),
        node("Add", ["h1", "b"], ["h2"]),
        node("Relu", ["h2"], ["h3"]),
        node("Mul", ["pos_col", "tenth"], ["pos_s"]),
        node("Add", ["h3", "pos_s"], ["h4"]),
        node("Softmax", ["h4"], ["h5"], axis=-1),
        node("ReduceMean", ["h5"], ["m"], axes=[1], keepdims=1),
        node("Sub", ["h5", "m"], ["c"]),
        node("Transpose", ["c"], ["t"], perm=[0, 2, 1]),
        node("Reshape", ["t", "flat_shape"], ["y"]),
        node("ReduceMax", ["h5"], ["pooled"], axes=[1], keepdims=0),
    ]
    inits = [
        init("i1", 1, "int64"),
        init("zero_i", 0, "int64"),
        init("one_i", 1, "int64"),
        init("ax1", [1], "int64"),
        init("w", randn(320, 8, 8) * 0.4),
        init("b", randn(321, 8)),
        init("tenth", 0.1, "float32"),
        init("flat_shape", [0, -1], "int64"),
    ]
    model = build(
        "symbolic_dims",
        nodes,
        [vi("x", F32, ["batch", "seq", 8])],
        [vi("y", F32, ["batch", "flat"]), vi("pooled", F32, ["batch", 8])],
        inits,
    )
    x = randn(322, 2, 5, 8)
    return GraphCase("symbolic_dims", model, {"x": x}, example_inputs={"x": x.copy()})


def case_bool_and_int_tensors() -> GraphCase:
    """Bool masks (Greater, Not, Less, And) and int32 values made early and consumed late by
    Where; bool and int32 graph outputs."""
    nodes = [
        node("Greater", ["x", "zero"], ["m"]),
        node("Not", ["m"], ["nm"]),
        node("Mul", ["x", "ten"], ["x10"]),
        node("Cast", ["x10"], ["xi"], to=I32),
        node("Add", ["xi", "i_one"], ["xi2"]),
        node("Mul", ["xi2", "i_two"], ["xi3"]),
        node("Tanh", ["x"], ["f1"]),
        node("Mul", ["f1", "x"], ["f2"]),
        node("Sigmoid", ["f2"], ["f3"]),
        node("Sub", ["f3", "half"], ["f4"]),
        node("Neg", ["f4"], ["f4n"]),
        node("Where", ["m", "f4", "f4n"], ["w"]),
        node("Less", ["x", "one"], ["lb"]),
        node("And", ["nm", "lb"], ["mask"]),
        node("Cast", ["xi3"], ["xi3f"], to=F32),
        node("Where", ["mask", "w", "xi3f"], ["y"]),
        node("Where", ["m", "xi3", "i_zero"], ["ints"]),
    ]
    inits = [
        init("zero", 0.0, "float32"),
        init("ten", 10.0, "float32"),
        init("half", 0.5, "float32"),
        init("one", 1.0, "float32"),
        init("i_one", 1, "int32"),
        init("i_two", 2, "int32"),
        init("i_zero", 0, "int32"),
    ]
    model = build(
        "bool_and_int_tensors",
        nodes,
        [vi("x", F32, [3, 4])],
        [vi("y", F32, [3, 4]), vi("mask", BOOL, [3, 4]), vi("ints", I32, [3, 4])],
        inits,
    )
    return GraphCase("bool_and_int_tensors", model, {"x": randn(330, 3, 4)})


def case_scalar_and_empty() -> GraphCase:
    """A 0-d scalar and a [0, 3] tensor (Slice to empty) made first and used last (Mul,
    Concat); both a 0-d and an empty tensor are graph outputs."""
    nodes = [
        node("ReduceSum", ["x"], ["s"], keepdims=0),
        node("Mul", ["s", "tenth"], ["sq"]),
        node("Slice", ["x", "st", "en", "ax0"], ["empty"]),
        node("Relu", ["x"], ["c1"]),
        node("Tanh", ["c1"], ["c2"]),
        node("Mul", ["c2", "x"], ["c3"]),
        node("Sigmoid", ["c3"], ["c4"]),
        node("Add", ["c4", "c1"], ["c5"]),
        node("Concat", ["empty", "c5"], ["cat"], axis=0),
        node("Mul", ["cat", "sq"], ["y"]),
        node("Relu", ["empty"], ["empty_out"]),
        node("Tanh", ["sq"], ["scalar_out"]),
    ]
    inits = [
        init("tenth", 0.1, "float32"),
        init("st", [2], "int64"),
        init("en", [2], "int64"),
        init("ax0", [0], "int64"),
    ]
    model = build(
        "scalar_and_empty",
        nodes,
        [vi("x", F32, [4, 3])],
        [vi("y", F32, [4, 3]), vi("scalar_out", F32, []), vi("empty_out", F32, [0, 3])],
        inits,
    )
    return GraphCase("scalar_and_empty", model, {"x": randn(340, 4, 3)})


def case_dropout_optional_output() -> GraphCase:
    """Optional outputs left unread (Dropout mask, MaxPool Indices) or omitted as ""
    (LayerNormalization Mean), and a Dropout with its optional inputs given as ""."""
    nodes = [
        node("Dropout", ["x"], ["d", "d_mask_unused"]),
        node("Relu", ["d"], ["c"]),
        node("MaxPool", ["c"], ["p", "p_idx_unused"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Mul", ["p", "s"], ["q"]),
        node("Tanh", ["q"], ["r"]),
        node("LayerNormalization", ["r", "ln_scale", "ln_bias"], ["ln", "", "ln_inv_std"], axis=-1),
        node("Dropout", ["ln", "", ""], ["d2"]),
        node("Mul", ["d2", "ln_inv_std"], ["e"]),
        node("Sigmoid", ["e"], ["y"]),
    ]
    inits = [
        init("s", randn(350, 1, 2, 1, 1)),
        init("ln_scale", 1.0 + 0.1 * randn(351, 3)),
        init("ln_bias", 0.1 * randn(352, 3)),
    ]
    model = build(
        "dropout_optional_output",
        nodes,
        [vi("x", F32, [1, 2, 6, 6])],
        [vi("y", F32, [1, 2, 3, 3])],
        inits,
    )
    return GraphCase("dropout_optional_output", model, {"x": randn(353, 1, 2, 6, 6)})
