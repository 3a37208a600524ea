"""What `compile` accepts as a model, brought to one ONNX model and its example inputs: an ONNX
file or ``ModelProto`` as it is, a TensorFlow SavedModel directory (tf2onnx, see
:mod:`corepipe.frontends.tensorflow`) or a ``torch.nn.Module`` (torch.onnx, see
:mod:`corepipe.frontends.torchmodule`). The front-ends, and their frameworks, load only when used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import CompileError

__all__ = ["is_torch_module", "model_source"]

Report = Callable[[str, int, int], None]


def is_torch_module(model: object) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _keep_export(model: onnx.ModelProto, export_path: str | os.PathLike[str] | None) -> None:
    if export_path is not None:
        Path(export_path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(export_path))


@contextlib.contextmanager
def model_source(
    model: Any,
    example_inputs: Any,
    *,
    output_names: Sequence[str] | None,
    export_path: str | os.PathLike[str] | None,
    report: Report,
) -> Iterator[tuple[str | os.PathLike[str] | onnx.ModelProto, Mapping[str, np.ndarray] | None]]:
    """Yield ``(model for the compiler, its example inputs)``; temporary files last as long as
    the ``with`` block. ``export_path`` keeps the exported or converted ONNX file there.

    Raises:
        CompileError: a directory that is not a SavedModel, a front-end's error, or
            ``output_names`` for a model that is not a torch module.
    """
    if is_torch_module(model):
        from ..frontends.torchmodule import export_module

        with tempfile.TemporaryDirectory(prefix="corepipe_export_") as tmp:
            path = Path(export_path) if export_path is not None else Path(tmp) / "model.onnx"
            report("export torch", 0, 1)
            feeds = export_module(model, example_inputs, path, output_names=output_names)
            report("export torch", 1, 1)
            yield path, feeds
        return
    if output_names is not None:
        raise CompileError(
            f"output_names= names the outputs of a torch module; the model here is a "
            f"{type(model).__name__} whose outputs keep their names"
        )
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        from ..frontends.tensorflow import convert_saved_model

        report("convert TF", 0, 1)
        conv = convert_saved_model(model, example_inputs)  # raises "not a SavedModel" as needed
        report("convert TF", 1, 1)
        _keep_export(conv.model, export_path)
        yield conv.model, conv.examples
        return
    if example_inputs is not None and not isinstance(example_inputs, Mapping):
        raise CompileError(
            "example_inputs for an ONNX model must be a dict of input name -> array, got "
            f"{type(example_inputs).__name__}"
        )
    if export_path is not None:
        raise CompileError("export_path= keeps the ONNX file exported from a torch module or a SavedModel; "
                           "this model is ONNX already")
    yield model, example_inputs
