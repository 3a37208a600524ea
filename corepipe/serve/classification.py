"""Triton's classification extension: an output asked for with ``classification: K`` comes back
as its top K classes instead of its values.

Per batch row (the whole tensor for a model with ``max_batch_size`` 0, as Triton does), the K
highest values, highest first, each as the string ``"value:index"``, or ``"value:index:label"``
when the model has labels (``corepipe serve --labels MODEL=FILE``, one label a line, as Triton's
``label_filename``). The answer is a BYTES tensor of shape ``[batch, K]`` (``[K]`` without a
batch dim); K is capped at the number of classes. Values print as Triton prints them (C++
``std::to_string``: six decimals for floats). HTTP asks for it in an output's ``parameters``
(``{"classification": 3}``), gRPC in ``InferRequestedOutputTensor.parameters`` (``int64_param``),
as ``tritonclient``'s ``InferRequestedOutput(name, class_count=3)`` sends it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorepipeError, InputError

__all__ = ["class_count", "classified", "read_labels", "top_k"]


def class_count(value: Any, where: str) -> int:
    """The ``classification`` parameter's K, checked.

    Raises:
        InputError: not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: classification must be a positive integer (how many top classes to "
                         f"return), got {value!r}")
    return value


def top_k(values: np.ndarray, k: int, batched: bool, labels: Sequence[str] = (), name: str = "output") -> np.ndarray:
    """The K highest values of ``values`` per batch row (per tensor when not ``batched``) as
    Triton's classification strings (see the module), an object array of bytes.

    Raises:
        InputError: a tensor that is not numeric, or a batched one with no batch axis.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"output {name!r} is {arr.dtype}: classification takes numeric outputs only")
    if batched and arr.ndim == 0:
        raise InputError(f"output {name!r} has no batch axis to classify along")
    rows = arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)
    k = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    as_float = arr.dtype.kind == "f"
    for r in range(rows.shape[0]):
        for j, index in enumerate(order[r]):
            value = rows[r, index]
            text = f"{float(value):f}:{int(index)}" if as_float else f"{int(value)}:{int(index)}"
            if int(index) < len(labels):
                text += ":" + labels[int(index)]
            out[r, j] = text.encode()
    return out if batched else out.reshape(k)


def classified(results: Mapping[str, np.ndarray], classes: Mapping[str, int], batched: bool,
               labels: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``results`` with each output ``classes`` names replaced by its top K (`top_k`)."""
    out = dict(results)
    for name, k in classes.items():
        out[name] = top_k(results[name], k, batched, labels, name)
    return out


def read_labels(path: str | Path) -> list[str]:
    """A label file: one class name a line (line i names class i), as Triton's ``label_filename``.

    Raises:
        CorepipeError: the file cannot be read, or holds no label.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorepipeError(f"--labels {str(path)!r}: cannot read it ({exc}); give a text file with one "
                            "class name a line") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise CorepipeError(f"--labels {str(path)!r} holds no label: give one class name a line")
    return labels
