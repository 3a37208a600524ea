"""A model whose index and size operands come from its requests, and a stream of requests, good
and bad, with what each bad one must raise: for the bad-data tests (local backend, serve)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._base import F32, I64, GraphCase, build, init, node, randn, vi

__all__ = ["BadRequest", "bad_requests", "case_request_operands", "good", "mixed_stream"]


def case_request_operands() -> GraphCase:
    """Eight nodes, cut into 3 stages with the default engine:

    - ``emb``: Gather of ``ids`` straight from the request: checked at intake (-10..9);
    - ``reshape``: Reshape of a [7,8] tensor to the request's ``shape``: checked at intake;
    - ``pick``: Gather of ``ids + off``, an index computed from the request: its stage runs on
      onnxruntime, which raises;
    - ``tile``: Tile by the request's ``reps`` (at least 0 at intake); the example's [2,2] sizes
      its output at 4x4, so larger repeats make a tensor the stage's output check refuses.
    """
    nodes = [
        node("Relu", ["x"], ["h"], name="relu"),
        node("Gather", ["table", "ids"], ["e"], name="emb", axis=0),
        node("Concat", ["h", "e"], ["c"], name="cat", axis=0),
        node("Sigmoid", ["c"], ["c2"], name="sig"),
        node("Reshape", ["c2", "shape"], ["r"], name="reshape"),
        node("Add", ["ids", "off"], ["d"], name="shift"),
        node("Gather", ["table2", "d"], ["p"], name="pick", axis=0),
        node("Tile", ["base", "reps"], ["t"], name="tile"),
    ]
    inputs = [vi("x", F32, [4, 8]), vi("ids", I64, [3]), vi("shape", I64, [2]), vi("off", I64, [3]),
              vi("reps", I64, [2])]
    outputs = [vi("r", F32, ["r0", "r1"]), vi("p", F32, [3, 2]), vi("t", F32, ["t0", "t1"])]
    inits = [init("table", randn(1, 10, 8)), init("table2", randn(2, 5, 2)), init("base", randn(3, 2, 2))]
    model = build("request_operands", nodes, inputs, outputs, inits)
    return GraphCase("request_operands", model, good(0))


def good(seed: int) -> dict[str, np.ndarray]:
    """A valid request (``seed`` varies the data, the ids and the shape)."""
    rng = np.random.default_rng(seed)
    shapes = [(8, 7), (7, 8), (-1, 4), (56, 1), (2, -1)]
    return {"x": rng.standard_normal((4, 8)).astype(np.float32),
            "ids": rng.integers(-4, 4, 3).astype(np.int64),  # ids + off index both tables
            "shape": np.array(shapes[seed % len(shapes)], np.int64),
            "off": rng.integers(-1, 2, 3).astype(np.int64),
            "reps": np.array([[2, 2], [1, 2], [2, 1], [0, 2]][seed % 4], np.int64)}


@dataclass
class BadRequest:
    """A request with one bad value, the error class it must raise and the words its message holds."""

    feeds: dict[str, np.ndarray]
    error: str  # "InputError" or "StageError"
    words: tuple[str, ...]


def bad_requests() -> list[BadRequest]:
    def change(**values: object) -> dict[str, np.ndarray]:
        feeds = good(1)
        feeds.update({k: np.asarray(v, np.int64) for k, v in values.items()})
        return feeds

    return [
        BadRequest(change(ids=[1, 10, 2]), "InputError",
                   ("input 'ids'", "value 10 at [1]", "node 'emb' (Gather)", "in -10..9")),
        BadRequest(change(ids=[-11, 0, 0]), "InputError", ("input 'ids'", "value -11 at [0]", "in -10..9")),
        BadRequest(change(shape=[5, -1]), "InputError",
                   ("input 'shape'", "node 'reshape' (Reshape)", "[7,8] input (56 elements)", "[5, -1]")),
        BadRequest(change(reps=[-1, 2]), "InputError", ("input 'reps'", "value -1 at [0]", "node 'tile'", "at least 0")),
        BadRequest(change(off=[0, 0, 40]), "StageError", ("onnxruntime", "pick")),
        BadRequest(change(reps=[3, 3]), "StageError",
                   ("node 'tile' (Tile) wrote 't'", "float32[6,6]", "larger than the compiled float32[4,4]")),
    ]


def mixed_stream(count: int = 18) -> list[dict[str, np.ndarray] | BadRequest]:
    """``count`` requests: two good ones, then a bad one, and so on (each bad one in turn)."""
    bads = bad_requests()
    out: list[dict[str, np.ndarray] | BadRequest] = []
    for i in range(count):
        out.append(bads[(i // 3) % len(bads)] if i % 3 == 2 else good(i + 2))
    return out
