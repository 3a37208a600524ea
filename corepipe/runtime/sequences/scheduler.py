"""The client side of sequences, shared by every backend: admission, the steps to send next, the
tokens that come back, cancellation and replay.

A sequence waits for a free KV row (the store is bounded: admission), then its prompt goes out as
one prefill step, and each token that comes back makes its next decode step ready. `take` hands
the transport the next message: up to ``ceil(live / stages)`` ready prefills of one length, or
as many ready decode steps, as one batch (so with S stages at least S messages can be in flight and every stage has
work). The client keeps each live sequence's tokens; after a worker died, `replay` turns every live
sequence's next step into a prefill of all its tokens so far, which rebuilds every stage's KV.
"""

from __future__ import annotations

import collections
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .header import ROW, SID, header
from .sampling import Sampling
from .store import RowBook

__all__ = ["Scheduler", "Sequence", "END"]

#: What a sequence's queue holds after its last token.
END = object()


@dataclass(eq=False)
class Sequence:
    """One generation: its tokens (prompt, then generated), how it samples and when it stops."""

    sid: int
    tokens: list[int]
    prompt_len: int
    max_new: int
    how: Sampling
    eos: frozenset[int]
    stop: tuple[tuple[int, ...], ...]
    out: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    row: int | None = None
    in_flight: bool = False
    prefill: bool = True
    done: bool = False
    finish_reason: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    first_at: float = 0.0
    token_times: list[float] = field(default_factory=list)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    def finished_by(self, token: int) -> str | None:
        if token in self.eos:
            return "eos"
        if any(len(s) <= len(self.tokens) - self.prompt_len and tuple(self.tokens[-len(s):]) == s for s in self.stop):
            return "stop"
        if len(self.tokens) - self.prompt_len >= self.max_new:
            return "length"
        return None


class _Forward(queue.SimpleQueue[object]):
    """A sequence's queue whose items go straight to a callback (`Scheduler.forward`)."""

    put_to: Callable[[object], None]

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        self.put_to(item)


class Scheduler:
    """Sequences of one pipeline of ``stages`` stages over a store of ``rows`` rows. Thread-safe."""

    def __init__(self, rows: int, stages: int, max_tokens: int | None = None) -> None:
        self._cv = threading.Condition()
        self._book = RowBook(rows)
        self._stages = max(1, stages)
        #: tokens one step may carry (a ring slot's input_ids): bounds a batch of prefills
        self._max_tokens = max_tokens
        self._ids = itertools.count()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._ready: collections.deque[Sequence] = collections.deque()
        self._live: dict[int, Sequence] = {}
        self._closed: BaseException | None = None
        self.steps = 0  # messages taken
        self.replays = 0  # sequences whose state was rebuilt by replay
        self.finished = 0
        #: bumped by each `replay`: a message taken before it is stale (its steps were lost)
        self.generation = 0

    # -- the caller's side ------------------------------------------------------------------
    def open(self, prompt: list[int], max_new: int, how: Sampling, eos: frozenset[int],
             stop: tuple[tuple[int, ...], ...]) -> Sequence:
        """A new sequence, admitted at once if a row is free, else queued for one."""
        with self._cv:
            if self._closed is not None:
                raise self._closed
            seq = Sequence(next(self._ids), list(prompt), len(prompt), max_new, how, eos, stop)
            self._waiting.append(seq)
            self._admit()
            return seq

    def cancel(self, seq: Sequence) -> None:
        """End ``seq`` now; its row is freed at once, or when its step in flight comes back."""
        with self._cv:
            if seq.done:
                return
            self._end(seq, "cancelled")
            if seq.row is None:
                if seq in self._waiting:
                    self._waiting.remove(seq)
            elif not seq.in_flight:
                if seq in self._ready:
                    self._ready.remove(seq)
                self._release(seq)

    def forward(self, seq: Sequence, put: Callable[[object], None]) -> None:
        """From now on hand ``seq``'s items (token ids, then `END` or an error) to ``put``, on
        the thread that produces them, instead of queueing them (the items queued already go
        first, in order): an event loop's consumer needs no thread of its own per sequence."""
        with self._cv:
            while True:
                try:
                    put(seq.out.get_nowait())
                except queue.Empty:
                    break
            out = _Forward()
            out.put_to = put
            seq.out = out

    # -- the transport's side ---------------------------------------------------------------
    def take(self, timeout: float) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The next message, ``(header, input_ids [B, n], generation)``, or None after
        ``timeout`` seconds. A transport drops a message whose generation is no longer
        `generation` (a `replay` came between: its sequences are queued again)."""
        with self._cv:
            if not self._ready:
                self._cv.wait(timeout)
                if not self._ready:
                    return None
            first = self._ready[0]
            cap = max(1, math.ceil(len(self._live) / self._stages))
            if first.prefill:  # with the prefills of the same length waiting: one engine call
                n = len(first.tokens)
                room = 1 if self._max_tokens is None else max(1, self._max_tokens // n)
                batch = [s for s in self._ready if s.prefill and len(s.tokens) == n][:min(cap, room)]
            else:
                batch = [s for s in self._ready if not s.prefill][:cap]
            for s in batch:
                self._ready.remove(s)
            rows = []
            for s in batch:
                s.in_flight = True
                if s.prefill:
                    rows.append((s.sid, s.row, 0, len(s.tokens), s.how))
                else:
                    rows.append((s.sid, s.row, len(s.tokens) - 1, 1, s.how))
            self.steps += 1
            head = header(rows)  # type: ignore[arg-type]
            if first.prefill:
                ids = np.array([s.tokens for s in batch], dtype=np.int64)
            else:
                ids = np.array([[s.tokens[-1]] for s in batch], dtype=np.int64)
            for s in batch:
                s.prefill = False
            return head, ids, self.generation

    def deliver(self, head: np.ndarray, tokens: np.ndarray) -> None:
        """The tokens a step produced, one per header row."""
        now = time.monotonic()
        with self._cv:
            for sid, row, tok in zip(head[:, SID].tolist(), head[:, ROW].tolist(), tokens.tolist()):
                seq = self._live.get(sid)
                if seq is None or seq.row != row or not seq.in_flight:
                    continue  # a step of a sequence already ended (or replayed): nothing to do
                seq.in_flight = False
                if seq.done:
                    self._release(seq)
                    continue
                seq.tokens.append(int(tok))
                seq.token_times.append(now)
                seq.first_at = seq.first_at or now
                seq.out.put(int(tok))
                why = seq.finished_by(int(tok))
                if why is not None:
                    self._end(seq, why)
                    self.finished += 1
                    self._release(seq)
                else:
                    self._ready.append(seq)
            self._cv.notify_all()

    def fail(self, head: np.ndarray, error: BaseException) -> None:
        """A step failed: its sequences end with ``error`` (the others go on)."""
        with self._cv:
            for sid in head[:, SID].tolist():
                seq = self._live.get(sid)
                if seq is None:
                    continue
                seq.in_flight = False
                if not seq.done:
                    seq.out.put(error)
                    seq.done, seq.finish_reason = True, "error"
                self._release(seq)

    def replay(self) -> int:
        """After a recovery (every step in flight lost): each live sequence's next step becomes a
        prefill of all its tokens. Returns how many sequences replay."""
        with self._cv:
            for seq in list(self._live.values()):
                seq.in_flight = False
                if seq.done:
                    self._release(seq)
            live = sorted(self._live.values(), key=lambda s: s.sid)
            for seq in live:
                seq.prefill = True
            self._ready = collections.deque(live)
            self.replays += len(live)
            self.generation += 1
            self._cv.notify_all()
            return len(live)

    def close(self, error: BaseException) -> None:
        """End every sequence with ``error``; take no more."""
        with self._cv:
            self._closed = error
            for seq in list(self._live.values()) + list(self._waiting):
                if not seq.done:
                    seq.out.put(error)
                    seq.done, seq.finish_reason = True, "error"
            self._live.clear()
            self._waiting.clear()
            self._ready.clear()
            self._cv.notify_all()

    def busy(self) -> bool:
        """Whether any sequence is live or waiting."""
        with self._cv:
            return bool(self._live or self._waiting)

    def counts(self) -> dict[str, int]:
        """Live sequences, sequences waiting for a row, rows in use, steps taken, replays."""
        with self._cv:
            return {"live": len(self._live), "waiting": len(self._waiting), "rows_in_use": self._book.in_use,
                    "steps": self.steps, "replays": self.replays, "finished": self.finished}

    # -- with the lock held -----------------------------------------------------------------
    def _end(self, seq: Sequence, why: str) -> None:
        seq.done, seq.finish_reason = True, why
        seq.out.put(END)

    def _release(self, seq: Sequence) -> None:
        if seq.row is not None:
            self._live.pop(seq.sid, None)
            self._book.give(seq.row)
            seq.row = None
        self._admit()

    def _admit(self) -> None:
        while self._waiting:
            row = self._book.try_take()
            if row is None:
                return
            seq = self._waiting.popleft()
            seq.row = row
            self._live[seq.sid] = seq
            self._ready.append(seq)
            self._cv.notify_all()


