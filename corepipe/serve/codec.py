"""KServe v2 tensors over HTTP: datatypes, JSON tensors, the binary tensor data extension, and
where a tensor lives in system shared memory.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's length is
in the ``Inference-Header-Content-Length`` HTTP header, and each binary input says how many of
those bytes are its own (``parameters.binary_data_size``), in input order. Outputs come back as
JSON ``data`` or, when asked (``binary_data_output`` for all, ``binary_data`` per output), as raw
bytes after the response's JSON header in the same way. An input or output may instead name a
shared memory region (``shared_memory_region``, ``_offset``, ``_byte_size``): the request then
carries a `ShmRef` for it, resolved against the registered regions by `corepipe.serve.shm`. The
request ``id`` (a string or a number) comes back as given. Every malformed request raises
`InputError` with the rule, the values and the fix; names, dtypes and shapes are then checked
against the model's signature by `check_feeds`, as for any pipeline request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from ..errors import InputError
from .classification import class_count

__all__ = [
    "DATATYPES",
    "InferRequest",
    "ShmRef",
    "contiguous",
    "datatype_of",
    "dtype_of",
    "encode_response",
    "parse_request",
    "placed_classification",
    "select_outputs",
    "serialize_bytes",
    "shm_ref",
    "tensor_from_data",
    "whole_numbers",
]

#: KServe datatype -> numpy dtype name (BYTES and BF16 have no numpy twin that can cross stages).
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


def contiguous(value: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them shape (1,))."""
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def datatype_of(dtype: str) -> str:
    """The KServe datatype of a numpy dtype name (``float32`` -> ``FP32``)."""
    return _BY_DTYPE.get(dtype, "BYTES" if dtype in ("object", "str") else dtype.upper())


def dtype_of(datatype: Any, name: str) -> np.dtype:
    """The numpy dtype of a KServe datatype; `InputError` for one corepipe cannot take."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InputError(
            f"input {name!r}: datatype {datatype!r} is not supported; use one of "
            f"{', '.join(DATATYPES)} (the model's datatypes are in its metadata)"
        )
    return np.dtype(DATATYPES[datatype])


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise InputError(f"input {name!r}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def whole_numbers(raw: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse values an integer or boolean tensor cannot hold: numpy's cast would truncate 1.5 to 1
    and wrap 5e9 in int32 without a word.

    Raises:
        InputError: the first such value, with its flat position.
    """
    if dtype.kind not in "iub" or raw.dtype.kind not in "fiu" or np.can_cast(raw.dtype, dtype, "safe"):
        return
    lo, hi = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    flat = raw.reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = (flat < lo) | (flat > hi)
        if raw.dtype.kind == "f":
            bad |= ~np.isfinite(flat) | (flat != np.trunc(flat))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{what}: {datatype_of(str(dtype))} values must be whole numbers from {lo} to {hi}, "
                         f"got {flat[i].item()!r} at flat position {i}; send values the datatype holds "
                         "(they are never truncated or wrapped)")


def tensor_from_data(name: str, datatype: Any, shape: Any, data: Any) -> np.ndarray:
    """A JSON tensor (``data`` flat or nested, row-major) as an array of ``shape``."""
    dtype = dtype_of(datatype, name)
    dims = _shape(shape, name)
    try:
        raw = np.asarray(data) if dtype.kind in "iub" else np.asarray(data, dtype=dtype)
        if raw.dtype == object or raw.dtype.kind in "USV":
            raise ValueError("values must be numbers (or true/false), in nested lists")
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"input {name!r}: data is not a list of {datatype} values: {exc}") from None
    whole_numbers(raw, dtype, f"input {name!r}")  # refused, never truncated or wrapped
    if raw.dtype.kind == "f" and dtype.kind in "iu":
        try:  # from the values as sent: 2**64 - 1 among small ints came in as a float
            with np.errstate(all="raise"):
                arr = np.asarray(data, dtype=dtype)
        except (FloatingPointError, OverflowError, ValueError) as exc:
            raise InputError(f"input {name!r}: {datatype} cannot hold the values sent: {exc}") from None
    else:
        arr = raw.astype(dtype, copy=False)
    if arr.size != math.prod(dims):
        raise InputError(
            f"input {name!r}: shape {list(dims)} holds {math.prod(dims)} values but data has "
            f"{arr.size}; send exactly one value per element, row-major"
        )
    return arr.reshape(dims)


def tensor_from_bytes(name: str, datatype: Any, shape: Any, raw: bytes | memoryview) -> np.ndarray:
    """Raw little-endian bytes (binary extension, gRPC ``raw_input_contents``) as an array."""
    dtype = dtype_of(datatype, name)
    dims = _shape(shape, name)
    want = math.prod(dims) * dtype.itemsize
    if len(raw) != want:
        raise InputError(
            f"input {name!r}: {datatype} {list(dims)} needs {want} bytes of binary data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lives in system shared memory: a registered region, an offset into it and a
    byte size (None: what the tensor needs, for an input; the rest of the region, for an output);
    for an input, its datatype and shape too."""

    region: str
    offset: int = 0
    byte_size: int | None = None
    datatype: str = ""
    shape: tuple[int, ...] = ()


@dataclass
class InferRequest:
    """A decoded KServe infer request: its inputs, and which outputs to return, how."""

    id: Any  # a string or a number, echoed as given; None when the request has none
    feeds: dict[str, np.ndarray]
    outputs: list[str] | None = None  # None: every output
    binary: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_default: bool = False
    shm_inputs: dict[str, ShmRef] = field(default_factory=dict)  # inputs to read from shared memory
    shm_outputs: dict[str, ShmRef] = field(default_factory=dict)  # outputs to write there
    classes: dict[str, int] = field(default_factory=dict)  # outputs asked as their top K (classification)

    def regions(self) -> set[str]:
        """The shared memory regions the request names."""
        return {r.region for r in (*self.shm_inputs.values(), *self.shm_outputs.values())}


def shm_ref(params: Mapping[str, Any], where: str) -> ShmRef | None:
    """The shared memory placement a tensor's parameters give, or None when they name no region.

    Raises:
        InputError: an offset or byte size without a region, or values of the wrong type.
    """
    region = params.get("shared_memory_region")
    offset, size = params.get("shared_memory_offset"), params.get("shared_memory_byte_size")
    if region is None:
        if offset is not None or size is not None:
            raise InputError(f"{where}: shared_memory_offset and shared_memory_byte_size need a "
                             "shared_memory_region naming a registered region")
        return None
    if not isinstance(region, str) or not region:
        raise InputError(f"{where}: shared_memory_region must be a region name, got {region!r}")
    for key, value in (("shared_memory_offset", offset), ("shared_memory_byte_size", size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InputError(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return ShmRef(region, offset or 0, size)


def _params(obj: Mapping[str, Any], where: str, output: bool = False) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError(f"{where}: parameters must be a JSON object, got {params!r}")
    if "classification" in params and not output:
        raise InputError(f"{where}: parameter 'classification' (Triton's classification extension) applies "
                         "to a requested output: put it in that output's parameters")
    return params


def placed_classification(name: str, k: Any, ref: ShmRef | None) -> int:
    """An output's ``classification`` K, checked (`corepipe.serve.classification`).

    Raises:
        InputError: K not a positive integer, or the output also placed in shared memory.
    """
    k = class_count(k, f"output {name!r}")
    if ref is not None:
        raise InputError(f"output {name!r} asks for both classification and shared_memory_region: its top "
                         "classes come back in the response; give one")
    return k


def serialize_bytes(arr: np.ndarray) -> bytes:
    """A BYTES tensor on the wire: each element as a 4-byte little-endian length, then its bytes."""
    parts = []
    for item in arr.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts += [len(data).to_bytes(4, "little"), data]
    return b"".join(parts)


def _request_id(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    raise InputError(f'"id" must be a string or a number (it is echoed in the response), got {value!r}')


def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an HTTP infer request body (JSON, or JSON + binary tensors).

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` value, or None for plain JSON.

    Raises:
        InputError: malformed JSON or binary layout; unsupported datatype or parameter.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InputError(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    end = len(body) if header_length is None else header_length
    try:
        head = json.loads(body[:end])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
        raise InputError('request must be a JSON object with an "inputs" list of tensors')
    feeds: dict[str, np.ndarray] = {}
    feeds_names: set[str] = set()
    req_shm: dict[str, ShmRef] = {}
    offset = end
    for i, tensor in enumerate(head["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InputError(f"inputs[{i}] must be an object with a string \"name\"")
        name = tensor["name"]
        if name in feeds_names:
            raise InputError(f"input {name!r} is given twice")
        feeds_names.add(name)
        params = _params(tensor, f"input {name!r}")
        size = params.get("binary_data_size")
        ref = shm_ref(params, f"input {name!r}")
        given = [k for k, v in (("data", tensor.get("data")), ("parameters.binary_data_size", size),
                                ("parameters.shared_memory_region", ref)) if v is not None]
        if len(given) > 1:
            raise InputError(f"input {name!r} gives {' and '.join(given)}: give exactly one")
        if ref is not None:
            dtype_of(tensor.get("datatype"), name)
            ref = ShmRef(ref.region, ref.offset, ref.byte_size, tensor["datatype"],
                         _shape(tensor.get("shape"), name))
            req_shm[name] = ref
        elif size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise InputError(
                    f"input {name!r}: binary_data_size {size!r} runs past the {len(body) - end} "
                    "bytes of binary data after the JSON header"
                )
            feeds[name] = tensor_from_bytes(name, tensor.get("datatype"), tensor.get("shape"),
                                            memoryview(body)[offset:offset + size])
            offset += size
        elif "data" in tensor:
            feeds[name] = tensor_from_data(name, tensor.get("datatype"), tensor.get("shape"), tensor["data"])
        else:
            raise InputError(f"input {name!r} has none of \"data\", parameters.binary_data_size and "
                             "parameters.shared_memory_region")
    if offset != len(body):
        raise InputError(f"{len(body) - offset} bytes of binary data after the JSON header belong to no input")
    req = InferRequest(_request_id(head.get("id")), feeds, shm_inputs=req_shm)
    req.binary_default = bool(_params(head, "request").get("binary_data_output", False))
    if head.get("outputs") is not None:
        if not isinstance(head["outputs"], list):
            raise InputError('"outputs" must be a list of {"name": ...} objects')
        req.outputs = []
        for i, out in enumerate(head["outputs"]):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InputError(f"outputs[{i}] must be an object with a string \"name\"")
            req.outputs.append(out["name"])
            params = _params(out, f"output {out['name']!r}", output=True)
            flag = params.get("binary_data")
            ref = shm_ref(params, f"output {out['name']!r}")
            if "classification" in params:
                req.classes[out["name"]] = placed_classification(out["name"], params["classification"], ref)
            if ref is not None:
                if flag:
                    raise InputError(f"output {out['name']!r} asks for both shared_memory_region and "
                                     "binary_data: give one")
                req.shm_outputs[out["name"]] = ref
            elif flag is not None:
                req.binary[out["name"]] = bool(flag)
    return req


def select_outputs(requested: Sequence[str] | None, specs: Sequence[TensorSpec]) -> list[str]:
    """The output names to return, checked against the model's outputs."""
    names = [s.name for s in specs]
    if requested is None:
        return names
    unknown = [n for n in requested if n not in names]
    if unknown:
        raise InputError(f"unknown outputs {unknown}: the model's outputs are {names}")
    return list(requested)


def encode_response(
    model: str, version: str, req: InferRequest, results: Mapping[str, np.ndarray], names: Sequence[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs = []
    blobs: list[memoryview] = []
    for name in names:
        arr = contiguous(results[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(str(arr.dtype)), "shape": list(arr.shape)}
        if name in req.shm_outputs:
            pass  # written to its region: listed without data or parameters, as Triton does (the
            # C++ client reads any output parameters as binary_data_size)
        elif req.binary.get(name, req.binary_default):
            blob = serialize_bytes(arr) if arr.dtype == object else arr.reshape(-1).view(np.uint8).data
            entry["parameters"] = {"binary_data_size": len(blob) if arr.dtype == object else arr.nbytes}
            blobs.append(memoryview(blob) if isinstance(blob, bytes) else blob)  # joined below: one copy
        elif arr.dtype == object:  # BYTES (classification strings): JSON strings
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if req.id is not None:
        head["id"] = req.id
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
