"""Cases with control-flow nodes whose bodies read outer-scope names.

A partitioner that only looks at ``node.input`` misses these reads: the tensors and
initializers a body uses must still reach the stage that runs the If/Loop/Scan node.
"""

from __future__ import annotations

from onnx import helper

from ._base import BOOL, F32, I64, GraphCase, build, init, node, randn, vi


def _if_bodies(tag: str) -> tuple:
    """Then/else bodies that read outer tensor ``b`` and outer initializers ``bias``/``scale``."""
    then_g = helper.make_graph(
        [
            node("Add", ["b", "bias"], [f"{tag}_t1"]),
            node("Mul", [f"{tag}_t1", "scale"], [f"{tag}_then_out"]),
        ],
        f"{tag}_then",
        [],
        [vi(f"{tag}_then_out", F32, [2, 4])],
    )
    else_g = helper.make_graph(
        [
            node("Sub", ["b", "bias"], [f"{tag}_e1"]),
            node("Tanh", [f"{tag}_e1"], [f"{tag}_else_out"]),
        ],
        f"{tag}_else",
        [],
        [vi(f"{tag}_else_out", F32, [2, 4])],
    )
    return then_g, else_g


def case_if_outer_scope() -> GraphCase:
    """Two If nodes (conditions ``c`` and ``not c``, so both branch kinds run) whose bodies
    read an outer tensor and outer initializers; the condition comes from the input."""
    then1, else1 = _if_bodies("if1")
    then2, else2 = _if_bodies("if2")
    nodes = [
        node("Mul", ["x", "w0"], ["a"]),
        node("Relu", ["a"], ["b"]),
        node("ReduceSum", ["x"], ["xsum"], keepdims=0),
        node("Greater", ["xsum", "zero"], ["cond"]),
        node("Not", ["cond"], ["ncond"]),
        node("Sigmoid", ["a"], ["a2"]),
        node("If", ["cond"], ["if1_out"], then_branch=then1, else_branch=else1),
        node("If", ["ncond"], ["if2_out"], then_branch=then2, else_branch=else2),
        node("Add", ["if1_out", "if2_out"], ["z"]),
        node("Sigmoid", ["z"], ["z2"]),
        node("Mul", ["z2", "a2"], ["y"]),
    ]
    inits = [
        init("w0", randn(200, 4)),
        init("zero", 0.0, "float32"),
        init("bias", randn(201, 4)),
        init("scale", randn(202, 2, 4)),
    ]
    model = build("if_outer_scope", nodes, [vi("x", F32, [2, 4])], [vi("y", F32, [2, 4])], inits)
    return GraphCase("if_outer_scope", model, {"x": randn(203, 2, 4)})


def case_loop_outer_scope() -> GraphCase:
    """Loop (trip count 4, cond omitted as "") accumulating with a body that reads outer
    tensor ``t`` and outer initializer ``w_outer``; it also stacks a scan output."""
    body = helper.make_graph(
        [
            node("Cast", ["iter"], ["iter_f"], to=F32),
            node("Mul", ["t", "w_outer"], ["tw"]),
            node("Mul", ["tw", "iter_f"], ["step"]),
            node("Add", ["v_in", "step"], ["v_out"]),
            node("Identity", ["cond_in"], ["cond_out"]),
            node("Identity", ["v_out"], ["v_scan"]),
        ],
        "loop_body",
        [vi("iter", I64, []), vi("cond_in", BOOL, []), vi("v_in", F32, [2, 3])],
        [vi("cond_out", BOOL, []), vi("v_out", F32, [2, 3]), vi("v_scan", F32, [2, 3])],
    )
    nodes = [
        node("Tanh", ["x"], ["t"]),
        node("Mul", ["x", "half"], ["v0"]),
        node("Relu", ["x"], ["xr"]),
        node("Loop", ["trip", "", "v0"], ["loop_v", "loop_stack"], body=body),
        node("ReduceSum", ["loop_stack", "ax0"], ["stack_sum"], keepdims=0),
        node("Add", ["stack_sum", "loop_v"], ["s1"]),
        node("Mul", ["s1", "tenth"], ["s2"]),
        node("Sigmoid", ["s2"], ["s3"]),
        node("Add", ["s3", "xr"], ["y"]),
    ]
    inits = [
        init("trip", 4, "int64"),
        init("half", 0.5, "float32"),
        init("w_outer", randn(210, 3)),
        init("ax0", [0], "int64"),
        init("tenth", 0.1, "float32"),
    ]
    model = build("loop_outer_scope", nodes, [vi("x", F32, [2, 3])], [vi("y", F32, [2, 3])], inits)
    return GraphCase("loop_outer_scope", model, {"x": randn(211, 2, 3)})


def case_scan_outer_scope() -> GraphCase:
    """Scan over 5 steps whose body reads outer tensor ``o`` and outer initializer ``k``."""
    body = helper.make_graph(
        [
            node("Mul", ["x_t", "o"], ["m"]),
            node("Add", ["state_in", "m"], ["state_out"]),
            node("Mul", ["state_out", "k"], ["y_t"]),
        ],
        "scan_body",
        [vi("state_in", F32, [3]), vi("x_t", F32, [3])],
        [vi("state_out", F32, [3]), vi("y_t", F32, [3])],
    )
    nodes = [
        node("ReduceMean", ["x"], ["xm"], axes=[0], keepdims=0),
        node("Sigmoid", ["xm"], ["o"]),
        node("Relu", ["o"], ["s0"]),
        node("Tanh", ["x"], ["seq"]),
        node("Scan", ["s0", "seq"], ["scan_state", "scan_ys"], body=body, num_scan_inputs=1),
        node("ReduceSum", ["scan_ys", "ax0"], ["ys_sum"], keepdims=0),
        node("Add", ["ys_sum", "scan_state"], ["r1"]),
        node("Relu", ["r1"], ["r2"]),
        node("Mul", ["r2", "o"], ["y"]),
    ]
    inits = [init("k", randn(220, 3)), init("ax0", [0], "int64")]
    model = build("scan_outer_scope", nodes, [vi("x", F32, [5, 3])], [vi("y", F32, [3])], inits)
    return GraphCase("scan_outer_scope", model, {"x": randn(221, 5, 3)})
