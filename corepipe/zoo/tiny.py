"""Tiny models (a handful of nodes) for fast tests and per-boundary overhead measurements."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx

from corepipe.zoo._builder import FLOAT, GraphBuilder

__all__ = ["mlp", "tiny_cnn"]


def mlp(widths: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> onnx.ModelProto:
    """MatMul + Add (+ Relu between layers): input ``input`` [1, widths[0]], output ``logits``."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths needs at least two positive sizes; got {widths}")
    g = GraphBuilder("mlp", seed)
    x = "input"
    for i, (d_in, d_out) in enumerate(itertools.pairwise(widths)):
        x = g.linear(x, d_in, d_out, f"fc{i}", float(np.sqrt(2.0 / d_in)))
        if i < len(widths) - 2:
            x = g.relu(x, f"fc{i}")
    return g.build(
        [("input", FLOAT, [1, widths[0]])],
        [(x, "logits", FLOAT, [1, widths[-1]])],
        doc=f"MLP {widths} (random weights), corepipe.zoo",
    )


def tiny_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm on [1,3,32,32] -> [1,10]."""
    g = GraphBuilder("tiny_cnn", seed)
    y = g.relu(g.conv("input", 3, 16, 3, "conv1", bias=True), "conv1")
    y = g.node("MaxPool", [y], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    y = g.relu(g.conv(y, 16, 32, 3, "conv2", bias=True), "conv2")
    logits = g.classifier_head(y, 32, 10)
    return g.build(
        [("input", FLOAT, [1, 3, 32, 32])],
        [(logits, "logits", FLOAT, [1, 10])],
        doc="tiny CNN (random weights), corepipe.zoo",
    )
