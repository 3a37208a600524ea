"""What `generate` returns: an iterator of token ids as they are produced, that cancels its
sequence (and frees its KV row) when closed or garbage-collected."""

from __future__ import annotations

import queue
import weakref
from collections.abc import Callable, Iterator

from .scheduler import END, Scheduler, Sequence

__all__ = ["END", "TokenStream"]


class TokenStream(Iterator[int]):
    """The tokens of one sequence, in order, as the last stage samples them.

    Iterating blocks until the next token comes (at most ``timeout`` seconds per token, then
    `TimeoutError`); it stops after the last one (``finish_reason`` then says why: ``"length"``,
    ``"eos"``, ``"stop"``; ``"cancelled"`` after `close`). A sequence that failed raises its error
    (`StageError`, `PipelineClosedError`). `close` (or ``with``, or dropping the last reference)
    cancels the sequence: the pipeline stops generating for it and frees its KV row.
    """

    def __init__(self, scheduler: Scheduler, seq: Sequence, timeout: float | None) -> None:
        self._seq = seq
        self._timeout = timeout
        self._scheduler = scheduler
        self._finalizer = weakref.finalize(self, scheduler.cancel, seq)
        self._closed = False

    @property
    def sequence_id(self) -> int:
        return self._seq.sid

    @property
    def prompt_ids(self) -> list[int]:
        return list(self._seq.tokens[: self._seq.prompt_len])

    @property
    def finish_reason(self) -> str | None:
        """None while generating; then ``"length"``, ``"eos"``, ``"stop"``, ``"cancelled"`` or ``"error"``."""
        return self._seq.finish_reason

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        if self._closed:  # like a closed generator: tokens made before the cancel are dropped
            raise StopIteration
        try:
            item = self._seq.out.get(timeout=self._timeout)
        except queue.Empty:
            raise TimeoutError(f"no token came within {self._timeout} s (sequence {self._seq.sid})") from None
        if item is END:
            self._seq.out.put(END)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            self._seq.out.put(item)
            raise item
        return int(item)  # type: ignore[call-overload]

    def forward(self, put: Callable[[object], None]) -> None:
        """Instead of iterating, have each item handed to ``put`` as it comes, on the pipeline's
        thread: a token id (int), then `END` (see ``finish_reason``) or the error the sequence
        failed with. For event loops: ``put`` = a ``loop.call_soon_threadsafe`` onto their queue."""
        self._scheduler.forward(self._seq, put)

    def close(self) -> None:
        """Cancel the sequence (if still generating) and free its KV row; the stream then yields
        nothing more, even tokens made before the cancel. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
