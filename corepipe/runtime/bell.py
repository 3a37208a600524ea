"""Doorbells: a wake-up hint over a pipe between a producer and a waiting consumer.

The shared-memory rings' state words are the truth (`corepipe.runtime.shm`); a bell only wakes a
peer sooner, so a lost or extra ring costs at most one poll interval, never correctness.
"""

from __future__ import annotations

import os
import select
from collections.abc import Sequence

__all__ = ["Bell", "wait_any"]


class Bell:
    """A wake-up hint over a pipe: `ring` never blocks; `wait_any` returns on a ring or timeout.

    Built on raw file descriptors so worker processes can inherit one end (``pass_fds``).
    """

    def __init__(self, r: int | None = None, w: int | None = None) -> None:
        if r is None and w is None:
            r, w = os.pipe()
        self.r = r
        self.w = w
        for fd in (r, w):
            if fd is not None:
                os.set_blocking(fd, False)

    def ring(self) -> None:
        if self.w is None:
            return
        try:
            os.write(self.w, b"\x01")
        except OSError:
            pass  # pipe full (enough wake-ups pending) or reader gone

    def drain(self) -> None:
        if self.r is None:
            return
        try:
            while os.read(self.r, 4096):
                pass
        except OSError:
            pass

    def fileno(self) -> int:
        assert self.r is not None, "this end of the bell cannot wait"
        return self.r

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.r = self.w = None


def wait_any(bells: Sequence[Bell], timeout: float) -> None:
    """Block until one of ``bells`` rings or ``timeout`` passes; consume the wake-ups."""
    try:
        ready, _, _ = select.select([b.fileno() for b in bells], [], [], timeout)
    except (OSError, ValueError):
        return
    for b in bells:
        if b.fileno() in ready:
            b.drain()
