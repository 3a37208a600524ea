"""Requests in a file a peer process reads (`corepipe.bench.proc`): plain arrays in an .npz, no
pickle. One request is saved as its inputs; several (mixed traffic) as ``r<i>.<input>``."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["Feeds", "write_requests", "read_requests", "requests_digest"]

Feeds = dict[str, np.ndarray]


def write_requests(path: Any, reqs: list[Feeds]) -> None:
    """Save requests for a peer process: one request as its inputs, several as ``r<i>.<input>``."""
    if len(reqs) == 1:
        np.savez(path, **reqs[0])  # type: ignore[arg-type]
    else:
        np.savez(path, **{f"r{i}.{k}": v for i, r in enumerate(reqs) for k, v in r.items()})  # type: ignore[arg-type]


def read_requests(path: Any) -> list[Feeds]:
    """The requests `write_requests` saved, in order (plain arrays: no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if not all(k.startswith("r") and "." in k and k[1:].split(".", 1)[0].isdigit() for k in arrays):
        return [arrays]
    out: dict[int, Feeds] = {}
    for k, v in arrays.items():
        index, name = k[1:].split(".", 1)
        out.setdefault(int(index), {})[name] = v
    return [out[i] for i in sorted(out)]


def requests_digest(reqs: list[Feeds]) -> str:
    """A short digest of ``reqs`` (order, names, dtypes, shapes and bytes): equal for two setups
    exactly when they were given the same requests (each bench row records the one it ran)."""
    h = hashlib.sha256()
    for r in reqs:
        for name in sorted(r):
            v = np.ascontiguousarray(r[name])
            h.update(f"{name}:{v.dtype.str}:{v.shape};".encode())
            h.update(v.tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
