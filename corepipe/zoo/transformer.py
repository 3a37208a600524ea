"""A BERT encoder built node by node with onnx.helper (the zoo's transformer)."""

from __future__ import annotations

import numpy as np
import onnx

from corepipe.zoo._builder import FLOAT, INT64, GraphBuilder

__all__ = ["bert"]

_STD = 0.02  # BERT's initializer_range
_LN_EPS = 1e-12


def _layer_norm(g: GraphBuilder, x: str, hidden: int, prefix: str) -> str:
    """LayerNormalization (opset 17) over the last axis, gamma ~ 1, beta ~ 0."""
    gamma = (1.0 + 0.02 * g.rng.standard_normal(hidden)).astype(np.float32)
    beta = (0.02 * g.rng.standard_normal(hidden)).astype(np.float32)
    ins = [x, g.init(f"{prefix}.weight", gamma), g.init(f"{prefix}.bias", beta)]
    return g.node("LayerNormalization", ins, prefix, axis=-1, epsilon=_LN_EPS)


def _gelu(g: GraphBuilder, x: str, prefix: str) -> str:
    """Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))), the form exporters emit at opset 17."""
    t = g.node("Div", [x, g.const(np.sqrt(2.0), name="sqrt2")], prefix)
    t = g.node("Erf", [t], prefix)
    t = g.node("Add", [t, g.const(1.0, name="one")], prefix)
    t = g.node("Mul", [x, t], prefix)
    return g.node("Mul", [t, g.const(0.5, name="half")], prefix)


def _attention(
    g: GraphBuilder, x: str, mask: str, seq: int, hidden: int, heads: int, prefix: str
) -> str:
    """Multi-head self-attention; returns the output projection (before the residual)."""
    dh = hidden // heads
    split = g.const([1, seq, heads, dh], np.int64, "heads_shape")
    merge = g.const([1, seq, hidden], np.int64, "hidden_shape")

    def proj(name: str, perm: list[int]) -> str:
        p = f"{prefix}.self.{name}"
        y = g.linear(x, hidden, hidden, p, _STD)
        y = g.node("Reshape", [y, split], p)
        return g.node("Transpose", [y], p, perm=perm)

    q = proj("query", [0, 2, 1, 3])  # [1, heads, seq, dh]
    k = proj("key", [0, 2, 3, 1])  # [1, heads, dh, seq]
    v = proj("value", [0, 2, 1, 3])  # [1, heads, seq, dh]
    p = f"{prefix}.self"
    scores = g.node("MatMul", [q, k], p)
    scores = g.node("Mul", [scores, g.const(1.0 / np.sqrt(dh), name="attn_scale")], p)
    scores = g.node("Add", [scores, mask], p)
    probs = g.node("Softmax", [scores], p, axis=-1)
    ctx = g.node("MatMul", [probs, v], p)
    ctx = g.node("Transpose", [ctx], p, perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, merge], p)
    return g.linear(ctx, hidden, hidden, f"{prefix}.output.dense", _STD)


def _encoder_layer(
    g: GraphBuilder,
    x: str,
    mask: str,
    seq: int,
    hidden: int,
    heads: int,
    intermediate: int,
    prefix: str,
) -> str:
    a = _attention(g, x, mask, seq, hidden, heads, f"{prefix}.attention")
    a = g.node("Add", [a, x], f"{prefix}.attention.output")
    a = _layer_norm(g, a, hidden, f"{prefix}.attention.output.LayerNorm")
    h = g.linear(a, hidden, intermediate, f"{prefix}.intermediate.dense", _STD)
    h = _gelu(g, h, f"{prefix}.intermediate")
    h = g.linear(h, intermediate, hidden, f"{prefix}.output.dense", _STD)
    h = g.node("Add", [h, a], f"{prefix}.output")
    return _layer_norm(g, h, hidden, f"{prefix}.output.LayerNorm")


def bert(
    num_layers: int = 12,
    hidden: int = 768,
    heads: int = 12,
    intermediate: int = 3072,
    seq: int = 128,
    vocab: int = 30522,
    seed: int = 0,
) -> onnx.ModelProto:
    """BERT encoder (default: BERT-base, 110 M parameters) with random N(0, 0.02) weights.

    Inputs ``input_ids`` and ``attention_mask``, int64 [1, seq]; token types are all 0 (a
    constant). Outputs ``last_hidden_state`` [1, seq, hidden] and ``pooler_output`` [1, hidden].
    """
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if min(num_layers, hidden, heads, intermediate, seq, vocab) < 1:
        raise ValueError("num_layers, hidden, heads, intermediate, seq and vocab must be >= 1")
    max_pos = max(512, seq)
    g = GraphBuilder("bert", seed)

    # Embeddings: word + position + token type, then LayerNorm.
    p = "embeddings"
    word = g.normal(f"{p}.word_embeddings.weight", (vocab, hidden), _STD)
    pos = g.normal(f"{p}.position_embeddings.weight", (max_pos, hidden), _STD)
    typ = g.normal(f"{p}.token_type_embeddings.weight", (2, hidden), _STD)
    pos_ids = g.init(f"{p}.position_ids", np.arange(seq, dtype=np.int64)[None, :])
    type_ids = g.init(f"{p}.token_type_ids", np.zeros((1, seq), np.int64))
    e = g.node("Gather", [word, "input_ids"], f"{p}.word_embeddings", axis=0)
    e = g.node("Add", [e, g.node("Gather", [typ, type_ids], f"{p}.token_type_embeddings")], p)
    e = g.node("Add", [e, g.node("Gather", [pos, pos_ids], f"{p}.position_embeddings")], p)
    x = _layer_norm(g, e, hidden, f"{p}.LayerNorm")

    # Additive mask: (1 - mask) * -10000, broadcast to [1, 1, 1, seq].
    m = g.node("Cast", ["attention_mask"], "mask", to=onnx.TensorProto.FLOAT)
    m = g.node("Sub", [g.const(1.0, name="one"), m], "mask")
    m = g.node("Mul", [m, g.const(-10000.0, name="mask_fill")], "mask")
    mask = g.node("Unsqueeze", [m, g.const([1, 2], np.int64, "mask_axes")], "mask")

    for i in range(num_layers):
        x = _encoder_layer(g, x, mask, seq, hidden, heads, intermediate, f"encoder.layer.{i}")

    # Pooler: hidden state of token 0 -> dense -> tanh.
    first = g.node("Gather", [x, g.const(0, np.int64, "token0")], "pooler", axis=1)
    pooled = g.gemm(first, hidden, hidden, "pooler.dense", _STD)
    pooled = g.node("Tanh", [pooled], "pooler")

    return g.build(
        [("input_ids", INT64, [1, seq]), ("attention_mask", INT64, [1, seq])],
        [
            (x, "last_hidden_state", FLOAT, [1, seq, hidden]),
            (pooled, "pooler_output", FLOAT, [1, hidden]),
        ],
        doc=f"BERT encoder L={num_layers} H={hidden} A={heads} (random weights), corepipe.zoo",
    )
