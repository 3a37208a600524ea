"""transformers architectures as users build them (default settings, random weights, small
configs) and their torch.onnx exports: the legacy TorchScript exporter at opset 14 and 17, and the
dynamo exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SEQ = 16
VOCAB = 1000
IMAGE = 32  # ViT: 32x32 images, 8x8 patches
MELS, FRAMES = 80, 64  # Whisper: 80 mel bins, 64 frames (32 positions after the stride-2 conv)

#: arch -> (model input names, output name)
ARCHS: dict[str, tuple[tuple[str, ...], str]] = {
    "bert": (("input_ids", "attention_mask"), "last_hidden_state"),
    "distilbert": (("input_ids", "attention_mask"), "last_hidden_state"),
    "roberta": (("input_ids", "attention_mask"), "last_hidden_state"),
    "gpt2": (("input_ids", "attention_mask"), "logits"),
    "vit": (("pixel_values",), "last_hidden_state"),
    "whisper": (("input_features",), "last_hidden_state"),
}
#: Which optimum task exports each arch, and the file its encoder lands in.
OPTIMUM: dict[str, tuple[str, str]] = {
    "bert": ("feature-extraction", "model.onnx"),
    "distilbert": ("feature-extraction", "model.onnx"),
    "roberta": ("feature-extraction", "model.onnx"),
    "gpt2": ("text-generation", "model.onnx"),
    "vit": ("feature-extraction", "model.onnx"),
    "whisper": ("automatic-speech-recognition", "encoder_model.onnx"),
}


def config(arch: str) -> Any:
    """A small config of ``arch``: 2 layers, hidden 64, 2 heads; everything else as shipped."""
    import transformers as tf

    small = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
    if arch == "bert":
        return tf.BertConfig(vocab_size=VOCAB, **small)
    if arch == "roberta":
        return tf.RobertaConfig(vocab_size=VOCAB, **small)
    if arch == "distilbert":
        return tf.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=2, n_positions=128, use_cache=False,
                             bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    if arch == "vit":
        return tf.ViTConfig(image_size=IMAGE, patch_size=8, **small)
    if arch == "whisper":
        return tf.WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                                decoder_ffn_dim=128, num_mel_bins=MELS, max_source_positions=FRAMES // 2,
                                max_target_positions=64, pad_token_id=VOCAB - 1, bos_token_id=VOCAB - 1,
                                eos_token_id=VOCAB - 1, decoder_start_token_id=VOCAB - 2)
    raise ValueError(arch)


def model(arch: str) -> Any:
    """The eval-mode torch module users would export: the base model (GPT-2 with its LM head,
    whose weight is tied to the embedding; Whisper's encoder)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = config(arch)
    made: dict[str, Callable[[Any], Any]] = {
        "bert": tf.BertModel, "distilbert": tf.DistilBertModel, "roberta": tf.RobertaModel,
        "gpt2": tf.GPT2LMHeadModel, "vit": tf.ViTModel, "whisper": lambda c: tf.WhisperModel(c).get_encoder(),
    }
    return made[arch](cfg).eval()


def pretrained(arch: str) -> Any:
    """The module optimum exports (it loads the whole model class from a directory)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cls = {"gpt2": tf.GPT2LMHeadModel, "whisper": tf.WhisperForConditionalGeneration}.get(arch, tf.AutoModel)
    cfg = config(arch)
    return cls(cfg) if cls is not tf.AutoModel else tf.AutoModel.from_config(cfg)


def feeds(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """One request; ``seed`` > 0 gives another of the same signature (new values, padding)."""
    rng = np.random.default_rng(seed)
    if arch == "vit":
        return {"pixel_values": rng.standard_normal((1, 3, IMAGE, IMAGE), dtype=np.float32)}
    if arch == "whisper":
        return {"input_features": rng.standard_normal((1, MELS, FRAMES), dtype=np.float32)}
    mask = np.ones((1, SEQ), np.int64)
    if seed:
        mask[:, -3:] = 0  # the last tokens are padding
    return {"input_ids": rng.integers(1, VOCAB - 1, (1, SEQ), dtype=np.int64), "attention_mask": mask}


def _dynamic_axes(arch: str) -> dict[str, dict[int, str]]:
    names, out = ARCHS[arch]
    axes = {n: {0: "batch", 1: "sequence"} for n in names if n in ("input_ids", "attention_mask")}
    if arch == "vit":
        axes["pixel_values"] = {0: "batch"}
    if arch == "whisper":
        axes["input_features"] = {0: "batch"}
    axes[out] = {0: "batch"} if arch in ("vit", "whisper") else {0: "batch", 1: "sequence"}
    return axes


def export_torch(arch: str, path: Path, exporter: str) -> None:
    """``exporter``: ``"legacy14"``, ``"legacy17"`` (``dynamo=False``, dynamic batch and
    sequence axes, as most published files and tutorials have it) or ``"dynamo"``."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", module=r"(torch|transformers)\.")  # tracer and exporter chatter
    names, out = ARCHS[arch]
    kwargs = {k: torch.from_numpy(v) for k, v in feeds(arch).items()}
    module = model(arch)
    if exporter.startswith("legacy"):
        # The TorchScript tracer passes inputs by position, which transformers 5's forward
        # wrappers refuse: call the model by keyword, as tutorials wrap it.
        class ByKeyword(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *args: Any) -> Any:
                return getattr(self.inner(**dict(zip(names, args))), out)

        with torch.no_grad():
            torch.onnx.export(ByKeyword(module), tuple(kwargs.values()), str(path), input_names=list(names),
                              output_names=[out], dynamo=False, opset_version=int(exporter.removeprefix("legacy")),
                              dynamic_axes=_dynamic_axes(arch))
        return
    # Static shapes: torch.export specializes a dim of size 1, so a dynamic batch needs a
    # batch-2 example; the shapes compile fixes are static anyway.
    program = torch.onnx.export(module, (), kwargs=kwargs, input_names=list(names), output_names=[out],
                                dynamo=True, external_data=False)
    program.save(str(path))
