"""Cases about which tensors cross stage cuts and which names are graph inputs/outputs."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ._base import F32, I64, GraphCase, build, init, node, randn, vi


def case_skip_far() -> GraphCase:
    """A tensor made by the first node (and the input itself) is read again after 10 nodes."""
    nodes = [
        node("Mul", ["x", "k_early"], ["early"]),
        node("Sigmoid", ["early"], ["c1"]),
        node("Add", ["c1", "b1"], ["c2"]),
        node("Tanh", ["c2"], ["c3"]),
        node("Mul", ["c3", "s1"], ["c4"]),
        node("Relu", ["c4"], ["c5"]),
        node("Sub", ["c5", "b2"], ["c6"]),
        node("Neg", ["c6"], ["c7"]),
        node("Abs", ["c7"], ["c8"]),
        node("Softplus", ["c8"], ["c9"]),
        node("Add", ["c9", "early"], ["y"]),
        node("Mul", ["y", "x"], ["z"]),
    ]
    inits = [
        init("k_early", randn(1, 8)),
        init("b1", randn(2, 8)),
        init("s1", randn(3, 8)),
        init("b2", randn(4, 8)),
    ]
    model = build("skip_far", nodes, [vi("x", F32, [2, 8])], [vi("z", F32, [2, 8])], inits)
    return GraphCase("skip_far", model, {"x": randn(10, 2, 8)})


def case_shared_weight_far() -> GraphCase:
    """Tied embeddings: one table feeds a Gather at the start and a MatMul (via Transpose) at the end.
    The table (5 KiB) is over `FOLD_BYTES`, so its Transpose stays a node that each reader copies,
    instead of a folded second copy of the table."""
    vocab, dim = 160, 8
    nodes = [
        node("Gather", ["emb_table", "ids"], ["emb"]),
        node("MatMul", ["emb", "w1"], ["h1"]),
        node("Add", ["h1", "b1"], ["h2"]),
        node("Relu", ["h2"], ["h3"]),
        node("MatMul", ["h3", "w2"], ["h4"]),
        node("Add", ["h4", "emb"], ["h5"]),
        node("LayerNormalization", ["h5", "ln_g", "ln_b"], ["h6"], axis=-1),
        node("Tanh", ["h6"], ["h7"]),
        node("Transpose", ["emb_table"], ["emb_t"], perm=[1, 0]),
        node("MatMul", ["h7", "emb_t"], ["logits"]),
    ]
    inits = [
        init("emb_table", randn(20, vocab, dim)),
        init("w1", randn(21, dim, dim) * 0.3),
        init("b1", randn(22, dim)),
        init("w2", randn(23, dim, dim) * 0.3),
        init("ln_g", np.ones(dim, np.float32)),
        init("ln_b", np.zeros(dim, np.float32)),
    ]
    ids = np.random.default_rng(24).integers(0, vocab, size=(1, 6), dtype=np.int64)
    model = build(
        "shared_weight_far",
        nodes,
        [vi("ids", I64, [1, 6])],
        [vi("logits", F32, [1, 6, vocab])],
        inits,
    )
    return GraphCase("shared_weight_far", model, {"ids": ids})


def case_index_from_request() -> GraphCase:
    """`case_shared_weight_far` with its token ids reaching the Gather through an Abs: an index
    computed from request data, which no intake check covers, so its stage runs on onnxruntime
    (whatever the engine asked for) and ids past the table fail there, with a `StageError`.
    ``bad``: such a request (the ids far past the table)."""
    case = case_shared_weight_far()
    graph = case.model.graph
    gather = next(n for n in graph.node if n.op_type == "Gather")
    gather.input[1] = "ids_abs"
    graph.node.insert(0, node("Abs", ["ids"], ["ids_abs"]))
    case.name = "index_from_request"
    return case


def case_shape_arith_int64() -> GraphCase:
    """Int64 shape arithmetic (Shape/Gather/Mul/Unsqueeze/Concat) made early, used late by
    Reshape, ConstantOfShape, Range and Expand; the computed shape is also an output."""
    one_half = helper.make_tensor("v", F32, [1], [0.5])
    nodes = [
        node("Shape", ["x"], ["shp"]),
        node("Gather", ["shp", "i0"], ["d0"]),
        node("Gather", ["shp", "i1"], ["d1"]),
        node("Gather", ["shp", "i2"], ["d2"]),
        node("Mul", ["d1", "d2"], ["d12"]),
        node("Unsqueeze", ["d0", "ax0"], ["d0u"]),
        node("Unsqueeze", ["d12", "ax0"], ["d12u"]),
        node("Concat", ["d0u", "d12u"], ["new_shape"], axis=0),
        node("Relu", ["x"], ["f1"]),
        node("Mul", ["f1", "scale"], ["f2"]),
        node("Tanh", ["f2"], ["f3"]),
        node("Add", ["f3", "x"], ["f4"]),
        node("Reshape", ["f4", "new_shape"], ["r"]),
        node("ConstantOfShape", ["new_shape"], ["halves"], value=one_half),
        node("Range", ["i0", "d12", "i1"], ["pos"]),
        node("Cast", ["pos"], ["posf"], to=F32),
        node("Mul", ["posf", "tenth"], ["posf_s"]),
        node("Expand", ["posf_s", "new_shape"], ["pos_2d"]),
        node("Add", ["r", "halves"], ["g1"]),
        node("Add", ["g1", "pos_2d"], ["y"]),
    ]
    inits = [
        init("i0", 0, np.int64),
        init("i1", 1, np.int64),
        init("i2", 2, np.int64),
        init("ax0", [0], np.int64),
        init("scale", 0.7, np.float32),
        init("tenth", 0.1, np.float32),
    ]
    model = build(
        "shape_arith_int64",
        nodes,
        [vi("x", F32, [2, 3, 4])],
        [vi("y", F32, [2, 12]), vi("new_shape", I64, [2])],
        inits,
    )
    return GraphCase("shape_arith_int64", model, {"x": randn(30, 2, 3, 4)})


def case_constant_nodes() -> GraphCase:
    """Constant nodes (value, value_float, value_ints) at the top whose outputs are read both
    right away and near the end; one more Constant sits mid-graph."""
    vec = helper.make_tensor("cv", F32, [4], [0.5, -1.0, 2.0, 0.25])
    late = helper.make_tensor("cl", F32, [2], [3.0, -0.5])
    nodes = [
        node("Constant", [], ["c_vec"], value=vec),
        node("Constant", [], ["c_f"], value_float=0.5),
        node("Constant", [], ["c_ints"], value_ints=[4, 2]),
        node("Add", ["x", "c_vec"], ["a"]),
        node("Mul", ["a", "c_f"], ["b"]),
        node("Relu", ["b"], ["c"]),
        node("Tanh", ["c"], ["d"]),
        node("Sub", ["d", "x"], ["e"]),
        node("Constant", [], ["c_late"], value=late),
        node("Sigmoid", ["e"], ["f"]),
        node("Mul", ["f", "c_vec"], ["g"]),
        node("Reshape", ["g", "c_ints"], ["r"]),
        node("Add", ["r", "c_f"], ["s"]),
        node("Mul", ["s", "c_late"], ["y"]),
    ]
    model = build("constant_nodes", nodes, [vi("x", F32, [2, 4])], [vi("y", F32, [4, 2])])
    return GraphCase("constant_nodes", model, {"x": randn(40, 2, 4)})


def case_input_is_output() -> GraphCase:
    """Graph input ``x`` is listed as a graph output too, next to normal outputs."""
    nodes = [
        node("Add", ["x", "y"], ["a"]),
        node("Relu", ["a"], ["b"]),
        node("Mul", ["b", "x"], ["c"]),
        node("Tanh", ["c"], ["d"]),
        node("Sub", ["d", "y"], ["e"]),
        node("Sigmoid", ["e"], ["z"]),
        node("Mul", ["z", "x"], ["w"]),
    ]
    model = build(
        "input_is_output",
        nodes,
        [vi("x", F32, [3, 4]), vi("y", F32, [3, 4])],
        [vi("z", F32, [3, 4]), vi("x", F32, [3, 4]), vi("w", F32, [3, 4])],
    )
    return GraphCase("input_is_output", model, {"x": randn(50, 3, 4), "y": randn(51, 3, 4)})


def case_initializer_is_output() -> GraphCase:
    """Initializer ``w`` is a graph output and is read by two MatMuls."""
    nodes = [
        node("MatMul", ["x", "w"], ["h1"]),
        node("Relu", ["h1"], ["h2"]),
        node("Add", ["h2", "b"], ["h3"]),
        node("Tanh", ["h3"], ["h4"]),
        node("MatMul", ["h4", "w"], ["h5"]),
        node("Sigmoid", ["h5"], ["y"]),
    ]
    inits = [init("w", randn(60, 4, 4) * 0.5), init("b", randn(61, 4))]
    model = build(
        "initializer_is_output",
        nodes,
        [vi("x", F32, [2, 4])],
        [vi("y", F32, [2, 4]), vi("w", F32, [4, 4])],
        inits,
    )
    return GraphCase("initializer_is_output", model, {"x": randn(62, 2, 4)})


def case_output_early() -> GraphCase:
    """Output ``early`` comes from the 2nd node and is read again by the last node; the graph
    lists the final output first."""
    nodes = [
        node("Add", ["x", "b"], ["a"]),
        node("Relu", ["a"], ["early"]),
        node("Mul", ["early", "s"], ["c1"]),
        node("Tanh", ["c1"], ["c2"]),
        node("Sigmoid", ["c2"], ["c3"]),
        node("Sub", ["c3", "x"], ["c4"]),
        node("Abs", ["c4"], ["c5"]),
        node("Neg", ["c5"], ["c6"]),
        node("Add", ["c6", "early"], ["final"]),
    ]
    inits = [init("b", randn(70, 5)), init("s", randn(71, 5))]
    model = build(
        "output_early",
        nodes,
        [vi("x", F32, [2, 5])],
        [vi("final", F32, [2, 5]), vi("early", F32, [2, 5])],
        inits,
    )
    return GraphCase("output_early", model, {"x": randn(72, 2, 5)})


def case_multi_io() -> GraphCase:
    """Inputs float32 + int64; outputs float32 (early), int64 (middle), float32 (last)."""
    nodes = [
        node("Relu", ["x"], ["a1"]),
        node("Mul", ["a1", "s"], ["out_early"]),
        node("GatherElements", ["x", "ids"], ["g"], axis=1),
        node("ArgMax", ["x"], ["am"], axis=1, keepdims=1),
        node("Add", ["ids", "am"], ["out_mid"]),
        node("Tanh", ["a1"], ["t1"]),
        node("MatMul", ["t1", "w"], ["t2"]),
        node("Add", ["t2", "g"], ["t3"]),
        node("Cast", ["ids"], ["idsf"], to=F32),
        node("Mul", ["t3", "idsf"], ["t4"]),
        node("Sigmoid", ["t4"], ["out_final"]),
    ]
    inits = [init("s", randn(80, 6)), init("w", randn(81, 6, 3) * 0.5)]
    ids = np.random.default_rng(82).integers(0, 6, size=(2, 3), dtype=np.int64)
    model = build(
        "multi_io",
        nodes,
        [vi("x", F32, [2, 6]), vi("ids", I64, [2, 3])],
        [vi("out_final", F32, [2, 3]), vi("out_mid", I64, [2, 3]), vi("out_early", F32, [2, 6])],
        inits,
    )
    return GraphCase("multi_io", model, {"x": randn(83, 2, 6), "ids": ids})


def case_unused_input() -> GraphCase:
    """Graph input ``unused`` is read by no node (it sits between two used inputs)."""
    nodes = [
        node("Mul", ["x", "y"], ["a"]),
        node("Relu", ["a"], ["b"]),
        node("Tanh", ["b"], ["c"]),
        node("Add", ["c", "x"], ["d"]),
        node("Sigmoid", ["d"], ["e"]),
        node("Sub", ["e", "y"], ["z"]),
    ]
    model = build(
        "unused_input",
        nodes,
        [vi("x", F32, [2, 4]), vi("unused", F32, [3]), vi("y", F32, [2, 4])],
        [vi("z", F32, [2, 4])],
    )
    feeds = {"x": randn(90, 2, 4), "unused": randn(91, 3), "y": randn(92, 2, 4)}
    return GraphCase("unused_input", model, feeds)


def case_diamond_branches() -> GraphCase:
    """Four parallel branches listed one after another, merged by Concat; then a Split whose
    halves re-merge by Add. Cuts fall inside and between branches."""
    nodes = [
        node("Add", ["x", "b0"], ["pre0"]),
        node("Relu", ["pre0"], ["pre"]),
        node("MatMul", ["pre", "wa"], ["a1"]),
        node("Relu", ["a1"], ["a2"]),
        node("MatMul", ["pre", "wb"], ["b1"]),
        node("Tanh", ["b1"], ["b2"]),
        node("Mul", ["b2", "sb"], ["b3"]),
        node("Sigmoid", ["pre"], ["c1"]),
        node("Mul", ["c1", "pre"], ["c2"]),
        node("Neg", ["pre"], ["d1"]),
        node("Abs", ["d1"], ["d2"]),
        node("Concat", ["a2", "b3", "c2", "d2"], ["cat"], axis=1),
        node("MatMul", ["cat", "wo"], ["o1"]),
        node("Softmax", ["o1"], ["y"], axis=-1),
        node("Split", ["cat", "split_sizes"], ["s1", "s2"], axis=1),
        node("Relu", ["s1"], ["s1r"]),
        node("Tanh", ["s2"], ["s2t"]),
        node("Add", ["s1r", "s2t"], ["y2"]),
    ]
    inits = [
        init("b0", randn(100, 8)),
        init("wa", randn(101, 8, 4) * 0.5),
        init("wb", randn(102, 8, 4) * 0.5),
        init("sb", randn(103, 4)),
        init("wo", randn(104, 24, 5) * 0.3),
        init("split_sizes", [12, 12], np.int64),
    ]
    model = build(
        "diamond_branches",
        nodes,
        [vi("x", F32, [2, 8])],
        [vi("y", F32, [2, 5]), vi("y2", F32, [2, 12])],
        inits,
    )
    return GraphCase("diamond_branches", model, {"x": randn(105, 2, 8)})


def case_identity_chain_output_twice() -> GraphCase:
    """Tensor ``a`` is a graph output and is read later by an Identity chain, Mul, Split and
    ReduceSum; TopK and Split each leave one output unread; ``a_copy`` duplicates ``a``."""
    nodes = [
        node("Mul", ["x", "s"], ["a0"]),
        node("Tanh", ["a0"], ["a"]),
        node("Identity", ["a"], ["i1"]),
        node("Identity", ["i1"], ["i2"]),
        node("Mul", ["a", "i2"], ["m"]),
        node("TopK", ["m", "k"], ["tk_vals", "tk_idx_unused"], axis=-1),
        node("Split", ["a", "split_sizes"], ["sp0", "sp1_unused"], axis=1),
        node("Concat", ["tk_vals", "sp0"], ["cat"], axis=1),
        node("ReduceSum", ["a", "ax1"], ["asum"], keepdims=1),
        node("Add", ["cat", "asum"], ["out"]),
        node("Identity", ["a"], ["a_copy"]),
    ]
    inits = [
        init("s", randn(110, 6)),
        init("k", [2], np.int64),
        init("split_sizes", [2, 4], np.int64),
        init("ax1", [1], np.int64),
    ]
    model = build(
        "identity_chain_output_twice",
        nodes,
        [vi("x", F32, [3, 6])],
        [vi("a", F32, [3, 6]), vi("out", F32, [3, 4]), vi("a_copy", F32, [3, 6])],
        inits,
    )
    return GraphCase("identity_chain_output_twice", model, {"x": randn(111, 3, 6)})


def case_unnamed_nodes() -> GraphCase:
    """Every node has an empty name, so node names cannot serve as keys. (Duplicate names
    would pass the checker but onnxruntime refuses them, so they are not used.)"""
    nodes = [
        node("Relu", ["x"], ["a"], name=""),
        node("Mul", ["a", "s"], ["b"], name=""),
        node("Tanh", ["b"], ["c"], name=""),
        node("Add", ["c", "x"], ["d"], name=""),
        node("Sigmoid", ["d"], ["e"], name=""),
        node("Sub", ["e", "a"], ["y"], name=""),
    ]
    model = build(
        "unnamed_nodes",
        nodes,
        [vi("x", F32, [2, 4])],
        [vi("y", F32, [2, 4])],
        [init("s", randn(120, 4))],
    )
    return GraphCase("unnamed_nodes", model, {"x": randn(121, 2, 4)})
