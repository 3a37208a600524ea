"""``corepipe run --save out.npz``: keep every request's outputs on disk, never in memory.

Outputs stream into one raw file per output name beside the target; at the end they become one
``.npz`` holding, per output, a stack ``[R, *compiled shape]`` (the form ``--inputs`` reads).
The space this needs is known before the first request (the signature x the request count), so
a run that could not be saved is refused up front rather than after hours of work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ..artifact.plan import TensorSpec
from ..artifact.sizes import format_bytes, plural
from ..errors import CorepipeError

__all__ = ["NpzWriter", "space_needed"]

#: Room kept free beyond the estimate (zip and .npy headers, other writers on the same disk).
MARGIN = 16 * 2**20


def space_needed(specs: Sequence[TensorSpec], count: int) -> tuple[int, int]:
    """``(bytes of the .npz, peak bytes on disk while writing it)``: the stacks are written
    first, then copied into the archive, so the peak is twice the outputs."""
    outputs = count * sum(spec.nbytes for spec in specs)
    return outputs, 2 * outputs + MARGIN


class NpzWriter:
    """Collects outputs request by request (``writer(i, outputs)``), then `finish` writes the
    ``.npz``; `abort` (or an exception inside ``with``) leaves nothing behind.

    Raises:
        CorepipeError: at construction, when the folder is missing or its disk lacks the room
            (the message gives the sizes); while collecting, when an output does not have its
            compiled dtype and shape (a stack needs one shape).
    """

    def __init__(self, path: str | os.PathLike[str], specs: Sequence[TensorSpec], count: int) -> None:
        self.path = Path(path)
        if self.path.suffix != ".npz":
            raise CorepipeError(f"--save {str(self.path)!r}: the file name must end with .npz")
        folder = self.path.parent
        if not folder.is_dir():
            raise CorepipeError(f"--save {str(self.path)!r}: folder {str(folder)!r} does not exist")
        self.specs = list(specs)
        self.count = count
        size, peak = space_needed(self.specs, count)
        free = shutil.disk_usage(folder).free
        if peak > free:
            per = sum(s.nbytes for s in self.specs)
            raise CorepipeError(
                f"--save {str(self.path)!r} would not fit: {plural(count, 'request')} x "
                f"{format_bytes(per)} of outputs = {format_bytes(size)}, and writing it needs "
                f"{format_bytes(peak)} free on the disk of {str(folder)!r} (the stacks, then the "
                f".npz); {format_bytes(free)} is free. Save fewer --requests, or save elsewhere"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix=".corepipe-save-", dir=folder)
        self._files: list[IO[bytes]] = [
            open(Path(self._tmp.name) / f"{i}.raw", "wb") for i in range(len(self.specs))  # noqa: SIM115
        ]
        self.written = 0

    def __call__(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        """Append request ``index``'s outputs (requests arrive in order)."""
        for spec, f in zip(self.specs, self._files):
            value = outputs[spec.name]
            if str(value.dtype) != spec.dtype or tuple(value.shape) != spec.shape:
                raise CorepipeError(
                    f"--save: output {spec.name!r} of request {index} came out "
                    f"{value.dtype}{list(value.shape)}, not the compiled {spec.describe()}; the "
                    ".npz stacks outputs of the compiled shape"
                )
            f.write(np.ascontiguousarray(value).data)
        self.written += 1

    def finish(self) -> Path:
        """Write the ``.npz`` (replacing the file atomically) and remove the stacks."""
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for spec, f in zip(self.specs, self._files):
                    f.close()
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(spec.dtype)),
                              "fortran_order": False, "shape": (self.written, *spec.shape)}
                    with zf.open(spec.name + ".npy", "w", force_zip64=True) as member, \
                            open(f.name, "rb") as raw:
                        np.lib.format.write_array_header_1_0(member, header)
                        shutil.copyfileobj(raw, member, 2**22)
            os.replace(partial, self.path)
        finally:
            partial.unlink(missing_ok=True)
            self.abort()
        return self.path

    def abort(self) -> None:
        """Drop everything collected so far."""
        for f in self._files:
            f.close()
        self._tmp.cleanup()
