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
checked again against the segment's current size (a client that shrinks its segment gets an
error, not a SIGBUS that would take the server down) and against the region's bounds. A region
is unmapped when unregistered, or when the last request using it ends if one still does, and
every region is unmapped when the server shuts down. The client's segments are the client's:
the server never unlinks them.

Thread-safety: a lock guards the registry; requests hold a `Lease` on the regions they name
while they run.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..artifact.plan import TensorSpec
from .codec import ShmRef, contiguous, dtype_of, tensor_from_bytes
from .model import Rejected

__all__ = ["MAX_REGIONS", "Region", "SystemSharedMemory", "check_room", "read_inputs", "write_outputs"]

log = logging.getLogger("corepipe.serve")

#: The most regions one server holds at once (each keeps a file descriptor open).
MAX_REGIONS = 256
_ROOT = "/dev/shm"
_KEY = re.compile(r"^/?([A-Za-z0-9_.-]{1,255})$")


def _bad(message: str, status: int = 400, code: str = "INVALID_ARGUMENT") -> Rejected:
    return Rejected(status, message, code=code)


class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the segment ``key``, mapped."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, mm: mmap.mmap, delta: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._mm: mmap.mmap | None = mm
        self._delta = delta  # where the region starts in the mapping (mappings start page-aligned)
        self.users = 0
        self.retired = False

    def view(self, ref: ShmRef, need: int | None, what: str) -> memoryview:
        """The bytes ``ref`` names (``need`` of them when given), bounds-checked.

        Raises:
            Rejected: 400 when they fall outside the region, or the segment shrank under it.
        """
        if self._mm is None:
            raise _bad(f"{what}: shared memory region {self.name!r} was unregistered")
        size = self.byte_size - ref.offset if ref.byte_size is None else ref.byte_size
        if ref.offset < 0 or size < 0 or ref.offset + size > self.byte_size:
            raise _bad(f"{what}: shared_memory_offset {ref.offset} + shared_memory_byte_size {size} runs "
                       f"past the end of region {self.name!r} ({self.byte_size} bytes)")
        if need is not None and size < need:
            raise _bad(f"{what}: needs {need} bytes but region {self.name!r} gives it {size} "
                       f"(shared_memory_byte_size); register a larger region or give a larger byte size")
        if need is not None:
            size = need
        if self._mm.size() < self.offset + self.byte_size:  # fstat: the client may have shrunk it
            raise _bad(f"{what}: the segment {self.key!r} behind region {self.name!r} is now "
                       f"{self._mm.size()} bytes, smaller than the region registered on it; register it again")
        start = self._delta + ref.offset
        return memoryview(self._mm)[start:start + size]

    def close(self) -> None:
        """Unmap now; when a view of it is still alive (a request's array), the mapping goes with
        the last such view."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                log.debug("region %s: unmapped when its last view is freed", self.name)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The registered system shared memory regions of one server."""

    def __init__(self, max_regions: int = MAX_REGIONS) -> None:
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the segment ``key`` as region ``name``.

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
            region = _map(name, key, m.group(1), offset, byte_size)
            self._regions[name] = region

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
        """The regions ``names`` for the length of one request (they stay mapped meanwhile).

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
        """Unmap every region (server shutdown)."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            region.retired = True
            region.close()


def _map(name: str, key: str, filename: str, offset: int, byte_size: int) -> Region:
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
        aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mm = mmap.mmap(fd, offset + byte_size - aligned, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=aligned)
        except OSError as exc:
            raise _bad(f"region {name!r}: cannot map segment {key!r}: {exc.strerror}") from None
    finally:
        os.close(fd)  # the mapping keeps its own descriptor
    return Region(name, key, offset, byte_size, mm, offset - aligned)


def read_inputs(regions: Mapping[str, Region], refs: Mapping[str, ShmRef]) -> dict[str, np.ndarray]:
    """The inputs ``refs`` place in shared memory, as arrays viewing the regions (no copy; the
    pipeline copies them in when the request is submitted, while the lease holds the regions).

    Raises:
        InputError: the bytes do not match the datatype and shape.
        Rejected: 400 when they fall outside the region.
    """
    feeds = {}
    for name, ref in refs.items():
        what = f"input {name!r}"
        need = int(np.prod(ref.shape, dtype=np.int64)) * dtype_of(ref.datatype, name).itemsize
        raw = regions[ref.region].view(ref, need if ref.byte_size is None else None, what)
        arr = tensor_from_bytes(name, ref.datatype, list(ref.shape), raw)
        feeds[name] = arr if arr.flags.aligned else arr.copy()  # engines want aligned data
    return feeds


def check_room(regions: Mapping[str, Region], refs: Mapping[str, ShmRef], specs: Sequence[TensorSpec]) -> None:
    """Before running: every output placed in shared memory fits where it is placed (for outputs
    whose size the signature fixes), so no request runs whose answer cannot be delivered.

    Raises:
        Rejected: 400 naming the output, the bytes it needs and the bytes it is given.
    """
    by_name = {s.name: s for s in specs}
    for name, ref in refs.items():
        spec = by_name.get(name)
        if spec is None or not all(isinstance(d, int) and d >= 0 for d in spec.shape):
            continue  # unknown outputs are refused elsewhere; dynamic sizes are checked on writing
        need = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        regions[ref.region].view(ref, need, f"output {name!r}")


def write_outputs(regions: Mapping[str, Region], refs: Mapping[str, ShmRef], results: Mapping[str, np.ndarray]) -> None:
    """Copy each output ``refs`` places in shared memory into its region.

    Raises:
        Rejected: 400 when an output does not fit where it is placed.
    """
    for name, ref in refs.items():
        arr = contiguous(results[name])
        view = regions[ref.region].view(ref, arr.nbytes, f"output {name!r}")
        view[:] = arr.reshape(-1).view(np.uint8).data
