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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...errors import CompileError
from ..cut.choose import check_request, resolve_precision

__all__ = ["Source", "float16_precision", "is_torch_module", "model_source"]

Report = Callable[[str, int, int], None]


def is_torch_module(model: object) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def float16_precision(
    float16: str | None, precision: str | None, flag_precision: str | None, engine: str
) -> str | None:
    """The precision for a source that computes in float16 (``float16="model"``) or comes with
    float16 examples (``"examples"``) when neither ``precision`` nor a Neuron flag asks for one:
    ``"fp16"`` where this CPU has fp16 math, else ``"auto"`` (bf16 where it has bf16, else
    fp32), as far as ``engine`` runs it. Otherwise ``precision`` unchanged.

    Why: an fp16 model or example says its user accepts 16-bit arithmetic for speed (Neuron ran
    such models in fp16); a CPU without fp16 math gets the nearest fast precision it has.
    """
    if float16 is None or precision is not None or flag_precision is not None:
        return precision
    for choice in ("fp16", "auto"):
        try:
            check_request(engine, resolve_precision(choice))
        except CompileError:  # this CPU has no fp16 math, or the engine runs fp32 only
            continue
        return choice
    return precision


def _keep_export(model: onnx.ModelProto, export_path: str | os.PathLike[str] | None) -> None:
    if export_path is not None:
        Path(export_path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(export_path))


@dataclass
class Source:
    """A model brought to ONNX: what the compiler reads, its example inputs, whether it is
    float16 (``"model"``: it computes in float16; ``"examples"``: its examples are float16;
    else None) and notes on what the front-end changed (casts), for the plan."""

    model: str | os.PathLike[str] | onnx.ModelProto
    examples: Mapping[str, np.ndarray] | None
    float16: str | None = None
    notes: list[str] = field(default_factory=list)
    #: A torch module's dynamic dims read from its torch.export ``Dim`` s (None: as given).
    dynamic_dims: dict[str, tuple[int, int]] | None = None


@contextlib.contextmanager
def model_source(
    model: Any,
    example_inputs: Any,
    *,
    output_names: Sequence[str] | None,
    export_path: str | os.PathLike[str] | None,
    report: Report,
    dynamic_dims: Any = None,
) -> Iterator[Source]:
    """Yield the `Source` for ``model``: an ONNX path or ModelProto as it is, a SavedModel
    directory converted, a `corepipe.frontends.Conversion` (a SavedModel converted already, as
    ``corepipe.tensorflow`` and the CLI do, to choose the signature), or a torch module
    exported. Temporary files last as long as the ``with`` block; ``export_path`` keeps the
    exported or converted ONNX file there. ``dynamic_dims``: a torch module's are torch.export's
    ``dynamic_shapes`` (the export keeps those dims, named after their ``Dim`` s); a SavedModel's
    name its free (None) dims: ``"batch"`` for axis 0, ``"<input>:<axis>"`` for the others.

    Raises:
        CompileError: a directory that is not a SavedModel, a front-end's error, or
            ``output_names`` for a model that is not a torch module.
    """
    from ...frontends.tensorflow import Conversion  # imports no framework

    if is_torch_module(model):
        from ...frontends.torchmodule import export_module, torch_dims

        dims = torch_dims(dynamic_dims) if dynamic_dims else None
        with tempfile.TemporaryDirectory(prefix="corepipe_export_") as tmp:
            path = Path(export_path) if export_path is not None else Path(tmp) / "model.onnx"
            report("export torch", 0, 1)
            feeds = export_module(model, example_inputs, path, output_names=output_names,
                                  dynamic_shapes=dynamic_dims or None)
            report("export torch", 1, 1)
            yield Source(path, feeds, "examples" if any(a.dtype == np.float16 for a in feeds.values()) else None,
                         dynamic_dims=dims)
        return
    if output_names is not None:
        raise CompileError(
            f"output_names= names the outputs of a torch module; the model here is a "
            f"{type(model).__name__} whose outputs keep their names"
        )
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        from ...frontends.tensorflow import convert_saved_model

        report("convert TF", 0, 1)
        # raises "not a SavedModel" as needed
        model = convert_saved_model(model, example_inputs, dynamic=list(dynamic_dims or ()))
        report("convert TF", 1, 1)
    elif isinstance(model, Conversion) and example_inputs is not None:
        raise CompileError("a Conversion carries its own example inputs: pass example_inputs=None")
    if isinstance(model, Conversion):
        _keep_export(model.model, export_path)
        yield Source(model.model, model.examples, model.float16, list(model.notes))
        return
    if example_inputs is not None and not isinstance(example_inputs, Mapping):
        raise CompileError(
            "example_inputs for an ONNX model must be a dict of input name -> array, got "
            f"{type(example_inputs).__name__}"
        )
    if export_path is not None:
        raise CompileError("export_path= keeps the ONNX file exported from a torch module or a SavedModel; "
                           "this model is ONNX already")
    yield Source(model, example_inputs)
