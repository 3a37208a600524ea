"""Triton's system shared memory extension: clients on this machine register POSIX shared memory
regions, then name them in infer requests, so tensors skip the socket.

A client creates a segment (``shm_open("/input_simple")``, as ``tritonclient.utils.shared_memory``
and ``perf_analyzer --shared-memory system`` do) and registers part of it under a name (key,
offset, byte size). An input whose parameters say ``shared_memory_region`` (with
``shared_memory_offset`` and ``shared_memory_byte_size``) is read from that region instead of the
request; an output that says so is written there, and the response lists it without data.

Safety. Only segments under ``/dev/shm`` are opened (a key is one file name: no ``/`` inside it,
no ``..``), never through a symlink, only regular files, and never corepipe's own pipeline
segments (``corepipe_*``). A region must lie inside its segment when registered, and every use is
checked against the region's bounds. The server never maps a client's segment: it reads inputs
with ``preadv`` straight into the array the pipeline gets, and writes outputs with ``pwrite``, on
the segment's descriptor. A mapping would save that one copy (~0.1 ms for a 600 KB image) but
would turn a segment that the client shrinks while a request reads it (``ftruncate``, as
re-creating a key with a smaller size does) into a SIGBUS that kills the server; a short read is
an error for that one request instead. A region's descriptor is closed when it is unregistered,
or when the last request using it ends if one still does, and every region's when the server
shuts down. The client's segments are the client's: the server never unlinks them.

Thread-safety: a lock guards the registry; requests hold a lease (`SystemSharedMemory.lease`) on
the regions they name while they run, so a descriptor is never closed (and its number reused)
under a request.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from .codec import ShmRef, contiguous, dtype_of
from .model import Rejected

__all__ = ["MAX_REGIONS", "Region", "SystemSharedMemory", "check_room", "dim_values", "read_inputs", "write_outputs"]

#: The most regions one server holds at once (each keeps a file descriptor open).
MAX_REGIONS = 256
_ROOT = "/dev/shm"
_KEY = re.compile(r"^/?([A-Za-z0-9_.-]{1,255})$")


def _bad(message: str, status: int = 400, code: str = "INVALID_ARGUMENT") -> Rejected:
    return Rejected(status, message, code=code)


class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the segment ``key``, open."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._fd: int | None = fd
        self.users = 0
        self.retired = False

    def span(self, ref: ShmRef, need: int | None, what: str) -> tuple[int, int]:
        """Where in the segment the bytes ``ref`` names lie: ``(position, size)``, ``need`` bytes
        when given, bounds-checked.

        Raises:
            Rejected: 400 when they fall outside the region, or it holds fewer than ``need``.
        """
        size = self.byte_size - ref.offset if ref.byte_size is None else ref.byte_size
        if ref.offset < 0 or size < 0 or ref.offset + size > self.byte_size:
            raise _bad(f"{what}: shared_memory_offset {ref.offset} + shared_memory_byte_size {size} runs "
                       f"past the end of region {self.name!r} ({self.byte_size} bytes)")
        if need is not None and size < need:
            raise _bad(f"{what}: needs {need} bytes but region {self.name!r} gives it {size} "
                       f"(shared_memory_byte_size); register a larger region or give a larger byte size")
        return self.offset + ref.offset, size if need is None else need

    def _open_fd(self, what: str) -> int:
        if self._fd is None:
            raise _bad(f"{what}: shared memory region {self.name!r} was unregistered")
        return self._fd

    def _shrunk(self, what: str, fd: int) -> Rejected:
        return _bad(f"{what}: the segment {self.key!r} behind region {self.name!r} is now "
                    f"{os.fstat(fd).st_size} bytes, smaller than the region registered on it; register it again")

    def read_into(self, out: np.ndarray, position: int, what: str) -> None:
        """Fill the C-contiguous array ``out`` from the segment at ``position``."""
        fd = self._open_fd(what)
        buf = out.reshape(-1).view(np.uint8).data
        done = 0
        while done < len(buf):
            n = os.preadv(fd, [buf[done:]], position + done)
            if n == 0:
                raise self._shrunk(what, fd)
            done += n

    def write(self, data: memoryview, position: int, what: str) -> None:
        """Write ``data`` into the segment at ``position`` (never past its end: a segment the
        client shrank is not grown back)."""
        fd = self._open_fd(what)
        if os.fstat(fd).st_size < position + len(data):
            raise self._shrunk(what, fd)
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], position + done)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The registered system shared memory regions of one server."""

    def __init__(self, max_regions: int = MAX_REGIONS) -> None:
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``byte_size`` bytes at ``offset`` of the segment ``key`` as region ``name``.

        Raises:
            Rejected: 400 for a name in use, a key outside /dev/shm or that cannot be opened, a
                region outside its segment, or too many regions.
        """
        if not isinstance(name, str) or not name:
            raise _bad("a region needs a name: register it at /v2/systemsharedmemory/region/NAME/register")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _bad(f"region {name!r}: {field} must be a non-negative integer, got {value!r}")
        if byte_size == 0:
            raise _bad(f"region {name!r}: byte_size is 0; register the bytes the tensors need")
        m = _KEY.match(key) if isinstance(key, str) else None
        if m is None or m.group(1) in (".", ".."):
            raise _bad(f"region {name!r}: key {key!r} is not a POSIX shared memory name: give one like "
                       "'/input_simple' (a segment under /dev/shm, as shm_open names them)")
        if m.group(1).startswith("corepipe_"):
            raise _bad(f"region {name!r}: key {key!r} names one of corepipe's own pipeline segments; "
                       "register a segment your client created")
        with self._lock:
            if name in self._regions:
                raise _bad(f"shared memory region {name!r} is already registered (key "
                           f"{self._regions[name].key!r}): unregister it first, or use another name")
            if len(self._regions) >= self.max_regions:
                raise _bad(f"this server holds at most {self.max_regions} shared memory regions and has "
                           f"{len(self._regions)}: unregister some first")
            self._regions[name] = _open(name, key, m.group(1), offset, byte_size)

    def unregister(self, name: str | None = None) -> None:
        """Unregister region ``name`` (None or "": every region). A name not registered is a no-op,
        as in Triton. A region in use by a request is unmapped when that request ends."""
        with self._lock:
            names = [name] if name else list(self._regions)
            regions = [self._regions.pop(n) for n in names if n in self._regions]
            for region in regions:
                region.retired = True
                if region.users == 0:
                    region.close()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every region's (or region ``name``'s) name, key, offset and byte size.

        Raises:
            Rejected: 404 for a name not registered.
        """
        with self._lock:
            if not name:
                return [r.status() for r in self._regions.values()]
            if name not in self._regions:
                raise Rejected(404, f"no system shared memory region {name!r} is registered; registered: "
                               f"{sorted(self._regions)}", code="NOT_FOUND")
            return [self._regions[name].status()]

    @contextlib.contextmanager
    def lease(self, names: Iterable[str]) -> Iterator[dict[str, Region]]:
        """The regions ``names`` for the length of one request (they stay open meanwhile).

        Raises:
            Rejected: 400 naming a region that is not registered.
        """
        wanted = sorted(set(names))
        if not wanted:
            yield {}
            return
        with self._lock:
            missing = [n for n in wanted if n not in self._regions]
            if missing:
                raise _bad(f"shared memory region {missing[0]!r} is not registered (registered: "
                           f"{sorted(self._regions)}): register it with /v2/systemsharedmemory/region/"
                           f"{missing[0]}/register (gRPC SystemSharedMemoryRegister) before naming it")
            held = {n: self._regions[n] for n in wanted}
            for region in held.values():
                region.users += 1
        try:
            yield held
        finally:
            with self._lock:
                for region in held.values():
                    region.users -= 1
                    if region.retired and region.users == 0:
                        region.close()

    def close(self) -> None:
        """Unregister every region (server shutdown); one still in use closes when its request
        ends."""
        self.unregister()


def _open(name: str, key: str, filename: str, offset: int, byte_size: int) -> Region:
    path = os.path.join(_ROOT, filename)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _bad(f"region {name!r}: cannot open shared memory segment {key!r} ({path}): {exc.strerror}; "
                   "create it first (shm_open / tritonclient.utils.shared_memory)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _bad(f"region {name!r}: {path} is not a shared memory segment")
        if offset + byte_size > info.st_size:
            raise _bad(f"region {name!r}: offset {offset} + byte_size {byte_size} runs past the end of "
                       f"segment {key!r} ({info.st_size} bytes)")
    except BaseException:
        os.close(fd)
        raise
    return Region(name, key, offset, byte_size, fd)


def read_inputs(regions: Mapping[str, Region], refs: Mapping[str, ShmRef]) -> dict[str, np.ndarray]:
    """The inputs ``refs`` place in shared memory, read into new arrays.

    Raises:
        InputError: a datatype corepipe cannot take.
        Rejected: 400 when the bytes fall outside the region, their size does not match the
            datatype and shape, or the segment shrank.
    """
    feeds = {}
    for name, ref in refs.items():
        what = f"input {name!r}"
        dtype = dtype_of(ref.datatype, name)
        nbytes = math.prod(ref.shape) * dtype.itemsize
        if ref.byte_size is not None and ref.byte_size != nbytes:
            raise _bad(f"{what}: {ref.datatype} {list(ref.shape)} needs {nbytes} bytes, but "
                       f"shared_memory_byte_size is {ref.byte_size}")
        position, _ = regions[ref.region].span(ref, nbytes, what)  # before allocating: bounded by the region
        arr = np.empty(ref.shape, dtype)
        regions[ref.region].read_into(arr, position, what)
        feeds[name] = arr
    return feeds


def check_room(regions: Mapping[str, Region], refs: Mapping[str, ShmRef], specs: Sequence[TensorSpec],
               feeds: Mapping[str, np.ndarray] | None = None, inputs: Sequence[TensorSpec] = ()) -> None:
    """Before running: every output placed in shared memory fits where it is placed, so no
    request runs whose answer cannot be delivered. An output over dynamic dims is sized at the
    values this request's ``feeds`` give those dims (as read on ``inputs``, the model's input
    specs): a batch of 4 needs 4 rows, not the batch dim's maximum. An output whose size the
    dims do not fix (data-dependent, or over a dim no input carries) is checked on writing.

    Raises:
        Rejected: 400 naming the output, the bytes it needs and the bytes it is given.
    """
    values = dim_values(inputs, feeds or {})
    by_name = {s.name: s for s in specs}
    for name, ref in refs.items():
        spec = by_name.get(name)
        if spec is None or spec.dynamic:
            continue  # unknown outputs are refused elsewhere; data-dependent sizes are checked on writing
        shape = spec.shape_for(values)
        if shape is None:
            continue
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        regions[ref.region].span(ref, need, f"output {name!r}")


def dim_values(inputs: Sequence[TensorSpec], feeds: Mapping[str, Any]) -> dict[str, int]:
    """The value each dynamic dim takes in ``feeds``: read on the inputs that carry it."""
    values: dict[str, int] = {}
    for spec in inputs:
        arr = feeds.get(spec.name)
        if spec.is_static or not isinstance(arr, np.ndarray) or arr.ndim != len(spec.dims):
            continue
        for axis, dim in enumerate(spec.dims):
            if dim is not None:
                values.setdefault(dim, int(arr.shape[axis]))
    return values


def write_outputs(regions: Mapping[str, Region], refs: Mapping[str, ShmRef], results: Mapping[str, np.ndarray]) -> None:
    """Copy each output ``refs`` places in shared memory into its region.

    Raises:
        Rejected: 400 when an output does not fit where it is placed, or the segment shrank.
    """
    for name, ref in refs.items():
        arr = contiguous(results[name])
        what = f"output {name!r}"
        position, _ = regions[ref.region].span(ref, arr.nbytes, what)
        regions[ref.region].write(arr.reshape(-1).view(np.uint8).data, position, what)
