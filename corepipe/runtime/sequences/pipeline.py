"""`DecoderPipeline`: a decoder plan running as a pipeline of stages that keep their layers' KV,
and `generate`, its one way in. Backends (`inline`, `local`) differ only in how a step travels.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact.decoder import DecoderSpec
from ...artifact.plan import Plan
from ...errors import CorepipeError, InputError, PipelineClosedError
from .sampling import Sampling
from .scheduler import Scheduler
from .stream import TokenStream

__all__ = ["DecoderPipeline", "SupervisedDecoder", "vocab_size"]


def vocab_size(plan: Plan, spec: DecoderSpec) -> int | None:
    """The size of the logits' last axis (token ids must be below it), where the plan says."""
    for t in plan.outputs:
        if t.name == spec.logits and t.shape and t.shape[-1] > 0 and (not t.dims or t.dims[-1] is None):
            return int(t.shape[-1])
    return None


class DecoderPipeline:
    """Mixin of the decoder backends: `generate` over a `Scheduler`. The backend calls
    `_init_sequences` from its ``__init__`` and moves the scheduler's messages through its stages."""

    path: Path
    plan: Plan
    decoder: DecoderSpec
    _scheduler: Scheduler
    _vocab: int | None

    def _init_sequences(self, plan: Plan) -> None:
        spec = plan.decoder
        assert spec is not None
        self.decoder = spec
        self._scheduler = Scheduler(spec.max_sequences, plan.num_cores, max(spec.max_length, spec.max_sequences))
        self._vocab = vocab_size(plan, spec)

    def generate(
        self,
        prompt_ids: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int = 16,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | Iterable[int] | None = None,
        stop: Iterable[Sequence[int]] | None = None,
        timeout: float | None = None,
    ) -> TokenStream:
        """Start generating after ``prompt_ids``; return an iterator of the new token ids, each
        as soon as the last stage samples it.

        The call returns at once: the sequence waits for a free KV row when every row is taken
        (``plan.decoder.max_sequences`` sequences generate at once; the others queue, in order),
        then its prompt runs as one prefill step and each new token as one decode step, batched in
        every stage with the other sequences' steps. Any number of threads may call it at once.

        Args:
            prompt_ids: the prompt's token ids (at least one).
            max_new_tokens: tokens to generate at most (>= 1).
            temperature: 0 (default): greedy, the most likely token (exact). Above 0: sample from
                the logits divided by it, cut by ``top_k`` (0: no cut) and ``top_p`` (1.0: no cut).
            seed: the draws' seed (default: a random one); the same seed, prompt and parameters
                give the same tokens, also across a worker's death and replay.
            eos_token_id: token id(s) that end the sequence (the id is yielded, then it stops).
            stop: token-id sequences that end the sequence once generated (yielded, then stop).
            timeout: seconds to wait for each token while iterating (None: for ever).

        Returns:
            A `TokenStream`: iterate it for token ids; ``finish_reason`` says why it ended;
            `close` it (or drop it) to cancel the sequence and free its KV row.

        Raises:
            InputError: an empty prompt, a token id outside the vocabulary, or prompt +
                ``max_new_tokens`` past the plan's ``max_length``; bad sampling parameters.
            PipelineClosedError: the pipeline is closed or broke.
        """
        prompt = self._checked_prompt(prompt_ids)
        if type(max_new_tokens) is not int or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}")
        limit = self.decoder.max_length
        if len(prompt) + max_new_tokens > limit:
            raise InputError(
                f"prompt of {len(prompt)} tokens + max_new_tokens {max_new_tokens} = "
                f"{len(prompt) + max_new_tokens} tokens, past this artifact's max_length of {limit}: "
                f"shorten the prompt, lower max_new_tokens, or compile with a larger max_length")
        how = Sampling(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                       seed=secrets.randbits(62) if seed is None else int(seed))
        eos = frozenset([] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int)
                        else [int(t) for t in eos_token_id])
        stops = tuple(tuple(int(t) for t in s) for s in (stop or ()))
        if any(not s for s in stops):
            raise InputError("stop sequences must each hold at least one token id")
        self._check_generating()
        seq = self._scheduler.open(prompt, max_new_tokens, how, eos, stops)
        return TokenStream(self._scheduler, seq, timeout)

    def _checked_prompt(self, prompt_ids: Sequence[int] | np.ndarray) -> list[int]:
        arr = np.asarray(prompt_ids)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(
                f"prompt_ids must be a non-empty list of int token ids; got {arr.dtype}{list(arr.shape)}: "
                "pass one sequence's ids (call generate once per sequence)")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (self._vocab is not None and hi >= self._vocab):
            bad = lo if lo < 0 else hi
            raise InputError(f"prompt_ids holds token id {bad}, outside this model's vocabulary "
                             f"[0, {self._vocab if self._vocab is not None else 'vocab'}): check the tokenizer")
        return [int(t) for t in arr.tolist()]

    def _check_generating(self) -> None:
        """Raise `PipelineClosedError` when the pipeline takes no more sequences."""

    def sequences(self) -> dict[str, int]:
        """Sequences now: ``live`` (holding a KV row), ``waiting`` (for a row), ``rows_in_use``,
        and since the start ``steps`` (messages sent), ``replays`` (sequences rebuilt after a
        worker died) and ``finished``."""
        return self._scheduler.counts()

    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[dict[str, np.ndarray]]:
        raise CorepipeError(
            f"{str(self.path)!r} is a decoder (its stages keep each sequence's KV): run it with "
            "pipe.generate(prompt_ids, max_new_tokens=...), not submit/run")


class SupervisedDecoder(DecoderPipeline):
    """What the backends with a supervisor (`local`, `ray`) add to `DecoderPipeline`: a broken
    pipeline fails its live sequences, and ``close`` lets the live sequences finish first."""

    _cv: Any
    _closed: bool
    _closing: bool
    _broken: CorepipeError | None

    def _break(self, error: CorepipeError) -> None:
        super()._break(error)  # type: ignore[misc]
        self._scheduler.close(error)

    def _drain(self, timeout: float | None) -> bool:
        with self._cv:
            if self._closed:
                return False
            self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._scheduler.busy() and self._broken is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        self._scheduler.close(PipelineClosedError("the pipeline closed before this sequence finished"))
        return True
