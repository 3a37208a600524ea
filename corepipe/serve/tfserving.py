"""TensorFlow Serving's REST predict API (``POST /v1/models/{name}:predict``), for clients coming
from tensorflow-model-server.

Both request formats: row (``{"instances": [...]}``: one entry per example; with several inputs
each entry is an object name -> value) and columnar (``{"inputs": ...}``: one value, or an object
name -> value, batch first). Answers come back in the same format: ``{"predictions": [...]}`` or
``{"outputs": ...}``. For a model that takes batches along axis 0 (a dynamic batch dim, or one
compiled at batch 1: `corepipe.serve.batching`), a list of N instances is one batch-N request:
one tensor where the batch dim allows N, else its rows streamed through the stages one after
another. Instances must then agree in shape (ragged ones are refused, naming the first that
differs). For any other model, each instance is one request with the full compiled shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from ..errors import InputError
from .codec import whole_numbers

__all__ = ["parse_predict", "encode_predict"]


def _batched(spec: TensorSpec) -> bool:
    return len(spec.shape) >= 1 and spec.shape[0] == 1


def _array(value: Any, spec: TensorSpec, what: str) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    try:
        raw = np.asarray(value)
        if raw.dtype == object or raw.dtype.kind in "US":
            raise ValueError("values must be numbers (or true/false), in nested lists")
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"{what}: not a tensor of {spec.dtype}: {exc}") from None
    whole_numbers(raw, dtype, what)  # the KServe route's check: the same error on both
    return raw.astype(dtype)


def _split(arr: np.ndarray, spec: TensorSpec, what: str) -> list[np.ndarray]:
    """A batch-first value as batch-1 requests of the compiled shape."""
    if _batched(spec):
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != spec.shape[1:] or arr.shape[0] < 1:
            raise InputError(f"{what}: expected shape [N,{','.join(map(str, spec.shape[1:]))}] "
                             f"(N examples of {spec.describe()}), got {list(arr.shape)}")
        return [arr[i:i + 1] for i in range(arr.shape[0])]
    if tuple(arr.shape) != spec.shape:
        raise InputError(f"{what}: expected {spec.describe()}, got {list(arr.shape)}")
    return [arr]


def parse_predict(body: bytes, specs: Sequence[TensorSpec], *, batched: bool = False
                  ) -> tuple[list[dict[str, np.ndarray]], str]:
    """The feeds of a predict request, and its format (``row``/``columnar``): with ``batched``,
    one batch of every example; else one request per example.

    Raises:
        InputError: malformed JSON, both or neither of instances/inputs, shapes or names wrong,
            ragged instances.
    """
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict) or ("instances" in req) == ("inputs" in req):
        raise InputError('a predict request is a JSON object with either "instances" (row format) '
                         'or "inputs" (columnar format)')
    names = [s.name for s in specs]
    if batched:
        return [_batch(req, specs)], "row" if "instances" in req else "columnar"
    columns: dict[str, list[np.ndarray]] = {}
    if "instances" in req:
        fmt, instances = "row", req["instances"]
        if not isinstance(instances, list) or not instances:
            raise InputError('"instances" must be a non-empty list, one entry per example')
        for i, inst in enumerate(instances):
            values = _instance(i, inst, names)
            for spec in specs:
                arr = _array(values[spec.name], spec, f"instances[{i}] input {spec.name!r}")
                columns.setdefault(spec.name, []).extend(
                    _split(arr[None] if _batched(spec) else arr, spec, f"instances[{i}] input {spec.name!r}"))
    else:
        fmt, inputs = "columnar", _columns(req["inputs"], names)
        for spec in specs:
            columns[spec.name] = _split(_array(inputs[spec.name], spec, f"input {spec.name!r}"), spec,
                                        f"input {spec.name!r}")
    counts = {n: len(v) for n, v in columns.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"inputs hold different numbers of examples: {counts}")
    n = next(iter(counts.values()))
    return [{name: columns[name][i] for name in names} for i in range(n)], fmt


def _instance(i: int, inst: Any, names: list[str]) -> dict[str, Any]:
    """One row-format instance as {input: value}: an object naming every input, or the bare
    value when the model has one input."""
    if len(names) > 1 or isinstance(inst, dict):
        if not isinstance(inst, dict) or sorted(inst) != sorted(names):
            raise InputError(f"instances[{i}] must be an object with the inputs {names}")
        return inst
    return {names[0]: inst}


def _columns(inputs: Any, names: list[str]) -> dict[str, Any]:
    """Columnar ``inputs`` as {input: value}: an object naming every input, or the bare value when
    the model has one input."""
    if not isinstance(inputs, dict) and len(names) == 1:
        inputs = {names[0]: inputs}
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(names):
        raise InputError(f'"inputs" must be an object with the inputs {names}')
    return inputs


def _batch(req: dict[str, Any], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """A predict request as one batch along axis 0: instances stacked (row format), or the
    inputs as sent, batch first (columnar)."""
    names = [s.name for s in specs]
    if "inputs" in req:
        inputs = _columns(req["inputs"], names)
        return {s.name: _array(inputs[s.name], s, f"input {s.name!r}") for s in specs}
    instances = req["instances"]
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list, one entry per example')
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i, inst in enumerate(instances):
        values = _instance(i, inst, names)
        for spec in specs:
            arr = _array(values[spec.name], spec, f"instances[{i}] input {spec.name!r}")
            first = rows[spec.name][0] if rows[spec.name] else arr
            if arr.shape != first.shape:
                raise InputError(
                    f"ragged instances: input {spec.name!r} is {list(first.shape)} in instances[0] and "
                    f"{list(arr.shape)} in instances[{i}]; the instances of one request are one batch and "
                    "need one shape: pad them to one length, or send them as separate requests")
            rows[spec.name].append(arr)
    return {n: np.stack(rows[n]) for n in names}


def encode_predict(results: Sequence[Mapping[str, np.ndarray]], specs: Sequence[TensorSpec], fmt: str,
                   *, batched: bool = False) -> bytes:
    """The predict response for the examples' results, in the request's format (``batched``:
    one result whose rows are the examples)."""
    def stacked(name: str) -> np.ndarray:
        parts = [r[name] for r in results]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    names = [s.name for s in specs]
    if batched and fmt == "row":
        (batch,) = results
        examples = [{name: batch[name][i].tolist() for name in names} for i in range(batch[names[0]].shape[0])]
        return json.dumps({"predictions": [e[names[0]] if len(names) == 1 else e for e in examples]},
                          separators=(",", ":")).encode()
    if fmt == "row":
        rows: list[Any] = []
        for r in results:
            per = {n: (r[n][0] if r[n].ndim and r[n].shape[0] == 1 else r[n]).tolist() for n in names}
            rows.append(per[names[0]] if len(names) == 1 else per)
        return json.dumps({"predictions": rows}, separators=(",", ":")).encode()
    cols = {n: stacked(n).tolist() for n in names}
    return json.dumps({"outputs": cols[names[0]] if len(names) == 1 else cols}, separators=(",", ":")).encode()
