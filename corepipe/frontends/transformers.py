"""The transformers front-end: randomly initialized BERT and GPT-2 (no download) as eval-mode torch
modules with deterministic example inputs, and their ONNX export through :func:`export_torch`.

transformers is optional (``pip install 'corepipe[torch]'``) and imported lazily.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .torch import _import_torch, export_torch

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["build_transformers", "export_transformers"]

_INSTALL_HINT = "pip install 'corepipe[torch]'"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"the transformers front-end needs transformers: {_INSTALL_HINT}") from e
    return transformers


_ALIASES = {
    "bert": {
        "heads": "num_attention_heads",
        "vocab": "vocab_size",
        "intermediate": "intermediate_size",
    },
    "gpt2": {"heads": "n_head", "vocab": "vocab_size", "intermediate": "n_inner"},
}


def _config(
    arch: str,
    transformers: Any,
    seq: int,
    num_layers: int | None,
    hidden: int | None,
    overrides: dict[str, Any],
) -> Any:
    over = {_ALIASES[arch].get(k, k): v for k, v in overrides.items()}
    over.setdefault("attn_implementation", "eager")
    if arch == "bert":
        if num_layers is not None:
            over["num_hidden_layers"] = num_layers
        if hidden is not None:
            over["hidden_size"] = hidden
            over.setdefault("intermediate_size", 4 * hidden)
        over.setdefault("max_position_embeddings", max(512, seq))
        cfg = transformers.BertConfig(**over)
        h, a = cfg.hidden_size, cfg.num_attention_heads
    else:
        if num_layers is not None:
            over["n_layer"] = num_layers
        if hidden is not None:
            over["n_embd"] = hidden
        over.setdefault("n_positions", max(1024, seq))
        over.setdefault("use_cache", False)
        vocab = over.get("vocab_size", 50257)
        if vocab <= 50256:  # GPT-2's <|endoftext|> id 50256 would fall outside a small vocab
            over.setdefault("bos_token_id", vocab - 1)
            over.setdefault("eos_token_id", vocab - 1)
        cfg = transformers.GPT2Config(**over)
        h, a = cfg.n_embd, cfg.n_head
    if h % a:
        raise ValueError(f"{arch}: hidden size {h} is not divisible by {a} heads; pass heads=...")
    if seq > (cfg.max_position_embeddings if arch == "bert" else cfg.n_positions):
        raise ValueError(f"{arch}: seq={seq} exceeds the model's position embeddings")
    return cfg


def build_transformers(
    arch: str,
    *,
    seq: int = 128,
    num_layers: int | None = None,
    hidden: int | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """The eval-mode torch module that :func:`export_transformers` exports, and its inputs.

    The module takes the inputs positionally (in the dict's order) and returns a tuple of
    tensors (bert: last_hidden_state, pooler_output; gpt2: logits). Same arguments as
    :func:`export_transformers`; the same ``seed`` gives the same weights and inputs.
    """
    if arch not in _ALIASES:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(sorted(_ALIASES))}")
    torch = _import_torch()
    transformers = _import_transformers()
    cfg = _config(arch, transformers, seq, num_layers, hidden, config_overrides)
    torch.manual_seed(seed)
    if arch == "bert":
        model = transformers.AutoModel.from_config(cfg)
    else:
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, cfg.vocab_size, (1, seq), dtype=np.int64),
        "attention_mask": np.ones((1, seq), np.int64),
    }
    if arch == "bert":
        inputs["token_type_ids"] = np.zeros((1, seq), np.int64)
    return _wrap(arch, model).eval(), inputs


def export_transformers(
    arch: str,
    path: str | pathlib.Path,
    *,
    seq: int = 128,
    num_layers: int | None = None,
    hidden: int | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    """Export a randomly initialized transformers model (no download) with batch 1, length ``seq``.

    ``arch`` is ``"bert"`` (``BertModel``: inputs input_ids, attention_mask, token_type_ids;
    outputs last_hidden_state, pooler_output) or ``"gpt2"`` (``GPT2LMHeadModel`` with its tied
    embedding/LM-head weight, exported as one shared initializer: inputs input_ids,
    attention_mask; output logits). The default config is BERT-base / GPT-2 small;
    ``config_overrides`` are config fields (``heads``, ``vocab`` and ``intermediate`` are
    accepted as short names); attention is "eager". Returns the path and deterministic numpy
    example inputs (token ids uniform in [0, vocab), mask of ones) for the graph's inputs.
    """
    torch = _import_torch()
    module, inputs = build_transformers(
        arch, seq=seq, num_layers=num_layers, hidden=hidden, seed=seed, **config_overrides
    )
    outputs = ["last_hidden_state", "pooler_output"] if arch == "bert" else ["logits"]
    out = export_torch(
        module,
        tuple(torch.from_numpy(v) for v in inputs.values()),
        path,
        input_names=list(inputs),
        output_names=outputs,
    )
    graph_inputs = {i.name for i in onnx.load(str(out), load_external_data=False).graph.input}
    return out, {k: v for k, v in inputs.items() if k in graph_inputs}


def _wrap(arch: str, model: Any) -> Any:
    """Wrap ``model`` so it takes positional tensors and returns a tuple (export-friendly)."""
    nn = _import_torch().nn

    class BertWrapper(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            o = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                return_dict=True,
            )
            return o.last_hidden_state, o.pooler_output

    class GPT2Wrapper(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            o = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                return_dict=True,
            )
            return o.logits

    return BertWrapper(model) if arch == "bert" else GPT2Wrapper(model)
