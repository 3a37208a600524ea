"""Front-ends: turn framework models into ONNX for the compiler. Each framework is optional and
imported lazily, so ``import corepipe.frontends`` costs nothing until one is used.

- PyTorch (:mod:`.torch`): an ``nn.Module`` exported by ``torch.onnx`` (dynamo).
- transformers (:mod:`.transformers`): random-weight BERT / GPT-2 for tests and benchmarks.
- TensorFlow (:mod:`.tensorflow`): a SavedModel signature converted by tf2onnx.
- :mod:`.casts`: float16 graphs run in float32, inputs and outputs keep the caller's dtypes.
"""

from __future__ import annotations

from .tensorflow import Conversion, convert_saved_model, is_saved_model
from .torch import export_torch
from .torchmodule import export_module
from .transformers import build_transformers, export_transformers

__all__ = [
    "build_transformers",
    "export_torch",
    "export_module",
    "export_transformers",
    "convert_saved_model",
    "is_saved_model",
    "Conversion",
]
