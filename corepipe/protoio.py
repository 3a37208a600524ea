"""Load an ONNX file without holding its bytes and its parsed form at once.

``onnx.load`` reads the whole file into one ``bytes`` object and parses it, so a single-file
model costs twice its size at the peak. We walk the protobuf wire format instead and merge the
model's fields — and, inside the graph, each initializer — one at a time, so the peak is the
parsed model plus its largest single tensor.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import onnx

__all__ = ["stream_load"]

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
