"""The built-in model zoo: a registry of named ONNX models with deterministic example inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from corepipe.zoo.cnn import densenet121, inception_v1, resnet50
from corepipe.zoo.tiny import mlp, tiny_cnn
from corepipe.zoo.transformer import bert

__all__ = [
    "BUILTIN",
    "bert",
    "densenet121",
    "example_inputs",
    "get",
    "inception_v1",
    "mlp",
    "names",
    "resnet50",
    "tiny_cnn",
]

BUILTIN: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet50": resnet50,
    "densenet121": densenet121,
    "inception_v1": inception_v1,
    "bert": bert,
    "mlp": mlp,
    "tiny_cnn": tiny_cnn,
}


def names() -> list[str]:
    """The names of the built-in models, sorted."""
    return sorted(BUILTIN)


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def example_inputs(
    model: onnx.ModelProto, seed: int = 0, vocab: int | None = None
) -> dict[str, np.ndarray]:
    """Deterministic inputs for a zoo model, read off its graph inputs.

    Float inputs are N(0, 1); ``attention_mask`` is all ones; other int64 inputs are token ids
    uniform in [0, vocab) (``vocab`` defaults to the rows of the table they index).
    """
    rng = np.random.default_rng([seed, 1])
    inits = {t.name: t for t in model.graph.initializer}
    # rows of the embedding table each integer input indexes
    rows = {
        n.input[1]: int(inits[n.input[0]].dims[0])
        for n in model.graph.node
        if n.op_type == "Gather" and n.input[0] in inits
    }
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _dims(vi)
        elem = vi.type.tensor_type.elem_type
        if elem == onnx.TensorProto.FLOAT:
            feeds[vi.name] = rng.standard_normal(shape, dtype=np.float32)
        elif vi.name == "attention_mask":
            feeds[vi.name] = np.ones(shape, np.int64)
        else:
            high = vocab if vocab is not None else rows.get(vi.name, 2)
            feeds[vi.name] = rng.integers(0, high, shape, dtype=np.int64)
    return feeds


def get(name: str, **kwargs: Any) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Build the built-in model ``name`` (kwargs go to its builder) and its example inputs.

    Raises:
        ValueError: ``name`` is not a built-in model (the message lists the known names).
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in model {name!r}; known models: {', '.join(names())}")
    model = BUILTIN[name](**kwargs)
    return model, example_inputs(model, seed=int(kwargs.get("seed", 0)))
