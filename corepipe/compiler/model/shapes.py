"""Static shapes: fix the model's inputs from example inputs; the element types a boundary can
carry. (What shape inference cannot tell, `corepipe.compiler.model.probe` learns by running the model.)"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from ...artifact.plan import TensorSpec
from ...errors import CompileError

__all__ = ["CROSSABLE", "dtype_of", "fix_inputs"]


def dtype_of(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        raise CompileError(
            f"unsupported tensor element type {onnx.TensorProto.DataType.Name(elem_type)}"
        ) from None


#: Element types a boundary can carry: numpy has them and onnxruntime returns them as numpy.
CROSSABLE = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                       "uint64", "float16", "float32", "float64"})


def fix_inputs(
    graph: onnx.GraphProto, inits: set[str], example_inputs: Mapping[str, np.ndarray] | None
) -> list[TensorSpec]:
    """Give every model input a static shape, from its declaration or from an example input."""
    examples = dict(example_inputs or {})
    real_inputs = [i for i in graph.input if i.name not in inits]
    names = [i.name for i in real_inputs]
    unknown = sorted(set(examples) - set(names))
    if unknown:
        raise CompileError(
            f"example_inputs names {unknown}, which are not model inputs; the inputs are {names}"
        )
    specs = []
    for vi in real_inputs:
        if not vi.type.HasField("tensor_type"):
            raise CompileError(f"input {vi.name!r} is not a tensor: only tensor inputs are supported")
        tt = vi.type.tensor_type
        dtype = dtype_of(tt.elem_type)
        if dtype not in CROSSABLE:
            raise CompileError(
                f"input {vi.name!r} is {dtype}: requests are numpy arrays of {sorted(CROSSABLE)}; "
                "add a Cast at the model's start"
            )
        declared = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if vi.name in examples:
            ex = np.asarray(examples[vi.name])
            if str(ex.dtype) != dtype:
                raise CompileError(
                    f"example input {vi.name!r} is {ex.dtype}, the model declares {dtype}"
                )
            if tt.HasField("shape") and (
                len(declared) != ex.ndim
                or any(d is not None and d != s for d, s in zip(declared, ex.shape))
            ):
                want = ",".join("?" if d is None else str(d) for d in declared)
                raise CompileError(
                    f"example input {vi.name!r} has shape {list(ex.shape)}, the model declares [{want}]"
                )
            shape = tuple(int(s) for s in ex.shape)
        elif tt.HasField("shape") and all(d is not None for d in declared):
            shape = tuple(int(d) for d in declared)  # type: ignore[arg-type]
        else:
            want = ",".join("?" if d is None else str(d) for d in declared)
            # a shape to copy: the fixed dims as declared, a free batch (axis 0) 1, another free dim 128
            example = "x".join(str(d if d is not None else 1 if a == 0 else 128) for a, d in enumerate(declared))
            raise CompileError(
                f"input {vi.name!r} has symbolic dims [{want}]: pass example_inputs="
                f"{{{vi.name!r}: array}} (or --input {vi.name}={example}:{dtype}) to fix them"
            )
        del tt.shape.dim[:]
        for d in shape:
            tt.shape.dim.add().dim_value = d
        specs.append(TensorSpec(vi.name, dtype, shape))
    return specs
