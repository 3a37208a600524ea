"""Models for error paths: invalid graphs, and chains with weights of chosen byte sizes."""

from __future__ import annotations

import onnx

from ._base import F32, GraphCase, build, init, node, randn, vi


def broken_models() -> dict[str, onnx.ModelProto]:
    """Models that ``onnx.checker.check_model`` rejects.

    - ``invalid_checker``: a node reads ``ghost``, a name nothing produces.
    - ``cycle``: two nodes feed each other (``a = Relu(b)``, ``b = Tanh(a)``).
    - ``unsorted``: a valid DAG whose node list is not in topological order.
    """
    x_in = [vi("x", F32, [2, 4])]
    invalid = build(
        "invalid_checker",
        [node("Relu", ["x"], ["a"]), node("Add", ["a", "ghost"], ["y"])],
        x_in,
        [vi("y", F32, [2, 4])],
    )
    cycle = build(
        "cycle",
        [node("Relu", ["b"], ["a"]), node("Tanh", ["a"], ["b"]), node("Add", ["x", "b"], ["y"])],
        x_in,
        [vi("y", F32, [2, 4])],
    )
    unsorted = build(
        "unsorted",
        [node("Tanh", ["a"], ["y"]), node("Relu", ["x"], ["a"])],
        x_in,
        [vi("y", F32, [2, 4])],
    )
    return {"invalid_checker": invalid, "cycle": cycle, "unsorted": unsorted}


def big_weight_model(weight_bytes: list[int], hidden: int = 64, seed: int = 0) -> GraphCase:
    """A chain of MatMuls, one float32 weight ``w{i}`` per entry of ``weight_bytes``.

    Weight ``i`` has shape ``[hidden, n_i]`` with ``n_i = max(1, round(bytes / (4 * hidden)))``,
    so its size is within ``2 * hidden`` bytes of the request (exact for multiples of
    ``4 * hidden``, e.g. MiB sizes). Each link is
    ``h_{i+1} = Tanh(h_i + ReduceMean(MatMul(h_i, w_i), axis=-1))``, which keeps ``h`` at
    ``[1, hidden]``; so each MatMul node holds exactly one weight and nothing else is resident.
    """
    if not weight_bytes:
        raise ValueError("weight_bytes must name at least one weight")
    nodes, inits = [], []
    h = "x"
    for i, nbytes in enumerate(weight_bytes):
        n = max(1, round(nbytes / (4 * hidden)))
        inits.append(init(f"w{i}", randn(seed + 1000 + i, hidden, n) * (hidden**-0.5)))
        nodes += [
            node("MatMul", [h, f"w{i}"], [f"mm{i}"]),
            node("ReduceMean", [f"mm{i}"], [f"red{i}"], axes=[-1], keepdims=1),
            node("Add", [h, f"red{i}"], [f"sum{i}"]),
            node("Tanh", [f"sum{i}"], [f"h{i}"]),
        ]
        h = f"h{i}"
    nodes.append(node("Identity", [h], ["y"]))
    model = build(
        "big_weight", nodes, [vi("x", F32, [1, hidden])], [vi("y", F32, [1, hidden])], inits
    )
    return GraphCase("big_weight", model, {"x": randn(seed, 1, hidden)})
