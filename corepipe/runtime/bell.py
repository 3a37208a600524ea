"""Doorbells: a wake-up hint over an eventfd between a producer and a waiting consumer.

The shared-memory rings' state words are the truth (`corepipe.runtime.shm`); a bell only wakes a
peer sooner, so a lost or extra ring costs at most one poll interval, never correctness.

A bell is one eventfd (Linux): `Bell.ring` is one ``write`` syscall, a wait one ``poll`` plus one
``read`` to consume the wake-ups (the pipe + ``select`` it replaces cost a write, a select and a
read loop; issue 27). Both ends are the same descriptor, so a worker inherits one fd per bell.

`SwitchBell` is the bell of the client's end: a worker rings it as it rings any bell, and it
wakes either the threads waiting in the client's ``result()`` or the client's service thread,
whichever the client's control word says is listening, so one completion wakes one thread.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Bell", "SwitchBell", "fence", "wait_any", "spin_until"]

_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier between this thread's stores and its later loads (x86 keeps stores
    in order but lets a load pass an earlier store): an uncontended lock's acquire and release
    are atomic read-modify-writes (``lock``-prefixed on x86), which drain the store buffer.
    Used where a waiter stores "I sleep" then loads the ring, and a producer stores the slot
    then loads "who sleeps": with a fence on each side, one of them sees the other."""
    _FENCE.acquire()
    _FENCE.release()


class Bell:
    """A wake-up hint over an eventfd: `ring` never blocks; `wait_any` returns on a ring or timeout.

    ``Bell()`` makes a new eventfd; ``Bell(r=fd)`` or ``Bell(w=fd)`` wraps an inherited one (a
    worker's end: the same descriptor waits and rings). ``r`` and ``w`` name the descriptor.
    """

    def __init__(self, r: int | None = None, w: int | None = None) -> None:
        fd = r if r is not None else w
        if fd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            os.set_blocking(fd, False)
        self.fd: int | None = fd
        self.r: int | None = fd
        self.w: int | None = fd

    def ring(self) -> None:
        if self.fd is None:
            return
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass  # closed, or the counter is saturated (wake-ups pending anyway)

    def drain(self) -> None:
        if self.fd is None:
            return
        try:
            os.eventfd_read(self.fd)
        except OSError:
            pass  # nothing pending

    def wait(self, timeout: float) -> bool:
        """Block until the bell rings or ``timeout`` passes; consume the wake-ups. True: rang."""
        fd = self.fileno()
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except (OSError, ValueError):
            return False
        if ready:
            self.drain()
        return bool(ready)

    def fileno(self) -> int:
        assert self.fd is not None, "the bell is closed"
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = self.r = self.w = None


class SwitchBell:
    """What a worker rings toward the client: ``callers`` when ``listening()`` says a thread is
    waiting in ``result()`` (it reaps the completion itself), else ``service`` (the client's
    service thread does). ``wanted`` (optional): ring only when it says the client wants this
    wake-up at all (the first ring's free slots, while requests wait for one)."""

    def __init__(self, callers: Bell, service: Bell, listening: Callable[[], bool],
                 wanted: Callable[[], bool] | None = None) -> None:
        self.callers = callers
        self.service = service
        self._listening = listening
        self._wanted = wanted

    def ring(self) -> None:
        if self._wanted is not None and not self._wanted():
            return
        (self.callers if self._listening() else self.service).ring()

    def close(self) -> None:
        self.callers.close()
        self.service.close()


def wait_any(bells: Sequence[Any], timeout: float) -> None:
    """Block until one of ``bells`` rings or ``timeout`` passes; consume the wake-ups."""
    try:
        ready, _, _ = select.select([b.fileno() for b in bells], [], [], timeout)
    except (OSError, ValueError):
        return
    for b in bells:
        if b.fileno() in ready:
            b.drain()


def spin_until(ready: Callable[[], bool], seconds: float) -> bool:
    """Poll ``ready()`` for up to ``seconds`` without a syscall (a waiter on a core of its own:
    a hand-off that lands within the spin costs no sleep and no wake-up). True: it became ready."""
    if seconds <= 0:
        return ready()
    until = time.perf_counter() + seconds
    while True:
        if ready():
            return True
        if time.perf_counter() >= until:
            return False
