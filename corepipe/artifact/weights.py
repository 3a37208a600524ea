"""Weights that stay on disk: external-data references checked up front, then read or mapped one
tensor at a time, only when a step needs that tensor.

A model saved with external data (``model.onnx`` + ``model.onnx.data``) is compiled without
ever holding all its weights: the compiler keeps each initializer as its reference, the shape
probe maps the weights of a few nodes at a time (`weight_array`), and writing a stage reads that
stage's weights alone (`fill_tensor`). Every reference is checked when the model is loaded
(`check_external`): a relative path inside the model's directory (onnx's own checked opener:
no ``..``, no absolute path, no symlink out), a regular file, and bytes within it that match the
tensor's dims.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo

__all__ = ["is_external", "check_external", "fill_tensor", "materialize", "weight_array"]


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _open(t: onnx.TensorProto, base_dir: str | None) -> tuple[int, int, int]:
    """(file descriptor, offset, length) of an external tensor's bytes, all checked.

    Raises:
        ValueError: no directory to look in, a path outside it, a missing file, bytes out of
            the file, or a length that does not match the tensor's dims.
    """
    if base_dir is None:
        raise ValueError(
            f"tensor {t.name!r} keeps its data in an external file, and the model came without a "
            "directory to find it in: pass the model's path instead of a ModelProto"
        )
    info = ExternalDataInfo(t)
    opener = getattr(onnx.external_data_helper, "_open_external_data_fd", None)
    if opener is not None:  # onnx >= 1.21: the C++ checks (traversal, symlinks, regular file)
        fd = opener(base_dir, info.location, t.name, True)
    else:  # pragma: no cover - older onnx: the same rules, checked here
        path = os.path.realpath(os.path.join(base_dir, info.location))
        if os.path.isabs(info.location) or not path.startswith(os.path.realpath(base_dir) + os.sep):
            raise ValueError(f"tensor {t.name!r}: {info.location!r} points outside the model directory")
        fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    offset = int(info.offset or 0)
    length = int(info.length) if info.length is not None else size - offset
    problem = ""
    if offset < 0 or length < 0 or offset + length > size:
        problem = f"reads bytes {offset}..{offset + length} of a {size}-byte file"
    elif t.data_type != onnx.TensorProto.STRING:
        count = int(np.prod(list(t.dims), dtype=np.int64)) if t.dims else 1
        want = count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        if length != want:
            problem = f"holds {length} bytes and its dims {list(t.dims)} need {want}"
    if problem:
        os.close(fd)
        raise ValueError(f"external tensor {t.name!r} in {info.location!r} {problem}")
    return fd, offset, length


def check_external(tensors: Iterable[onnx.TensorProto], base_dir: str | None) -> None:
    """Check every external reference among ``tensors`` without reading the weights.

    Raises:
        ValueError: naming the first bad reference (see `_open`).
    """
    for t in tensors:
        if is_external(t):
            os.close(_open(t, base_dir)[0])


def fill_tensor(dest: onnx.TensorProto, src: onnx.TensorProto, base_dir: str | None) -> None:
    """Make ``dest`` a copy of ``src`` that holds its data (read from disk for an external one)."""
    if not is_external(src):
        dest.CopyFrom(src)
        return
    fd, offset, length = _open(src, base_dir)
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    dest.CopyFrom(src)
    del dest.external_data[:]
    dest.data_location = onnx.TensorProto.DEFAULT
    dest.raw_data = data


def materialize(t: onnx.TensorProto, base_dir: str | None) -> onnx.TensorProto:
    """``t`` itself when it holds its data, else a loaded copy."""
    if not is_external(t):
        return t
    out = onnx.TensorProto()
    fill_tensor(out, t, base_dir)
    return out


def weight_array(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    """A read-only array of ``t``'s values: for an external tensor, the file's pages mapped in place
    (nothing copied; dropped with the array), else a copy of the tensor's bytes."""
    if not is_external(t) or t.data_type == onnx.TensorProto.STRING:
        return numpy_helper.to_array(materialize(t, base_dir))
    fd, offset, length = _open(t, base_dir)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    if length == 0:
        os.close(fd)
        return np.zeros(tuple(t.dims), dtype)
    with os.fdopen(fd, "rb") as f:
        raw = np.memmap(f, dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    arr = raw.view(dtype).reshape(tuple(t.dims))
    # Engines read arrays aligned to their item size; a file that packs tensors tighter gets
    # a copy of this one tensor.
    return arr if arr.ctypes.data % max(1, dtype.itemsize) == 0 else np.array(arr)
