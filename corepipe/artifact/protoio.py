"""Loading and checking ONNX models without copying their weights.

``onnx.load`` reads the whole file into one ``bytes`` object and parses it, so a single-file
model costs twice its size at the peak; the checker, given a model, serializes it whole. Here a
file is parsed field by field (`stream_load`: the peak is the parsed model plus its largest
single tensor), external weights stay on disk as checked references (`corepipe.artifact.weights`
reads them one tensor at a time when needed), the checker and shape inference see a weightless
*skeleton*, and a caller's ``ModelProto`` is hashed piece by piece and never copied.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CompileError
from .weights import check_external, materialize

__all__ = ["stream_load", "load_checked", "skeleton", "structure", "tensor_nbytes"]

_GRAPH_FIELD = 7  # ModelProto.graph


def _varint(f: BinaryIO) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise ValueError("truncated protobuf (varint)")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed protobuf varint")


def _skip_value(f: BinaryIO, wire_type: int) -> None:
    """Move past one field value of ``wire_type``."""
    if wire_type == 0:
        _varint(f)
    elif wire_type == 1:
        f.seek(8, os.SEEK_CUR)
    elif wire_type == 2:
        f.seek(_varint(f), os.SEEK_CUR)
    elif wire_type == 5:
        f.seek(4, os.SEEK_CUR)
    else:
        raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _merge_fields(f: BinaryIO, end: int, target: onnx.ModelProto | onnx.GraphProto, *, descend: int | None) -> None:
    """Merge the fields in ``f`` up to ``end`` into ``target``, one field at a time. The field
    numbered ``descend`` (a length-delimited submessage) is itself merged field by field."""
    while f.tell() < end:
        start = f.tell()
        key = _varint(f)
        number, wire_type = key >> 3, key & 7
        if number == descend and wire_type == 2:
            length = _varint(f)
            inner_end = f.tell() + length
            _merge_fields(f, inner_end, target.graph, descend=None)  # type: ignore[union-attr]
            f.seek(inner_end)
            continue
        _skip_value(f, wire_type)
        stop = f.tell()
        f.seek(start)
        chunk = f.read(stop - start)
        if len(chunk) != stop - start:
            raise ValueError("truncated protobuf")
        target.MergeFromString(chunk)


def stream_load(path: str | os.PathLike[str], *, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse the ONNX file at ``path`` field by field; then load external data beside it
    (with onnx's own path checks) unless told not to.

    Raises:
        ValueError: the file is not a well-formed protobuf.
    """
    model = onnx.ModelProto()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _merge_fields(f, size, model, descend=_GRAPH_FIELD)
    if load_external_data:
        from onnx.external_data_helper import load_external_data_for_model, uses_external_data

        if any(uses_external_data(t) for t in model.graph.initializer):
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    return model


def tensor_nbytes(t: onnx.TensorProto) -> int:
    count = int(np.prod(list(t.dims), dtype=np.int64)) if t.dims else 1
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data) or count
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def skeleton(model: onnx.ModelProto, inits: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A copy fit for checking and shape inference: large initializers become typed inputs,
    without data, so neither step copies the weights."""
    g = model.graph
    sk = onnx.GraphProto(name=g.name)
    sk.node.extend(g.node)
    sk.input.extend(g.input)
    sk.output.extend(g.output)
    sk.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    for t in inits.values():
        if tensor_nbytes(t) <= 4096 and t.data_location != onnx.TensorProto.EXTERNAL:
            sk.initializer.append(t)
        elif t.name not in declared:
            sk.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    out = helper.make_model(
        sk, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    out.functions.extend(model.functions)
    return out


def structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its initializers (which may be hundreds of MB)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph",))
    _copy_fields(model.graph, out.graph, skip=("initializer", "sparse_initializer"))
    return out


def _copy_fields(src: Any, dst: Any, skip: tuple[str, ...]) -> None:
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if isinstance(value, (str, bytes, int, float)):
            setattr(dst, fd.name, value)
        elif hasattr(value, "ListFields"):
            getattr(dst, fd.name).CopyFrom(value)
        else:
            getattr(dst, fd.name).extend(value)


def _digest(model: onnx.ModelProto) -> str:
    """sha256 of a model, piece by piece (never the whole serialized model at once)."""
    h = hashlib.sha256(structure(model).SerializeToString(deterministic=True))
    for t in model.graph.initializer:
        if t.raw_data:
            h.update(t.name.encode())
            h.update(t.raw_data)
        else:
            h.update(t.SerializeToString(deterministic=True))
    for sparse in model.graph.sparse_initializer:
        h.update(sparse.SerializeToString(deterministic=True))
    return h.hexdigest()


def load_checked(
    model: str | os.PathLike[str] | onnx.ModelProto,
) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto], str, str | None]:
    """Check and load: (structure we may modify, initializers by name, source sha256, directory
    of external weights or ``None``).

    A ``ModelProto`` is never modified and its weights are not copied: the initializers
    returned are the caller's own messages, read only. A file's external weights are not read:
    its initializers stay references into their files (checked here, read when needed).
    """
    if isinstance(model, onnx.ModelProto):
        inits = _weights(model.graph, None)
        _check(skeleton(model, inits), "")
        try:
            check_external(inits.values(), None)
        except ValueError as exc:
            raise CompileError(str(exc)) from None
        return structure(model), inits, _digest(model), None
    path = Path(model)
    if not path.is_file():
        raise CompileError(f"model file {str(path)!r} does not exist: pass an .onnx path or a ModelProto")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    base = os.path.dirname(os.path.abspath(path))
    try:
        # Field by field: onnx.load (and the checker given a path) hold the file's bytes and
        # the parsed model at once, twice the model's size at the peak.
        loaded = stream_load(path, load_external_data=False)
        check_external(_all_initializers(loaded.graph), base)
        inits = _weights(loaded.graph, base)
    except Exception as exc:
        raise CompileError(f"cannot read {str(path)!r} as an ONNX model: {exc}") from None
    _check(skeleton(loaded, inits), str(path))
    return loaded, inits, h.hexdigest(), base


def _all_initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    out = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        out += [sparse.values, sparse.indices]
    return out


def _check(model: onnx.ModelProto | None, path: str) -> None:
    try:
        if model is None:
            onnx.checker.check_model(path)
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        # The checker's message spans lines (the node comes on the second): keep all of it.
        text = " ".join(str(exc).split())[:500] or repr(exc)
        raise CompileError(f"the model fails the ONNX checker: {text}") from None
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise CompileError(f"cannot read {path or 'the model'!r} as an ONNX model: {exc}") from None


def _weights(graph: onnx.GraphProto, base: str | None) -> dict[str, onnx.TensorProto]:
    """The graph's initializers by name, with sparse ones made dense (each stage holds plain
    tensors; onnxruntime densifies them anyway)."""
    out = {t.name: t for t in graph.initializer}
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(materialize(sparse.values, base))
        indices = numpy_helper.to_array(materialize(sparse.indices, base))
        dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
        if indices.ndim == 1:  # linearised indices
            dense.reshape(-1)[indices] = values
        else:  # one row of coordinates per value
            dense[tuple(indices.T)] = values
        out[sparse.values.name] = numpy_helper.from_array(dense, sparse.values.name)
    return out
