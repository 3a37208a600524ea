"""Requests that are not one pipeline request: batches split into the model's batch, and
requests padded to their bucket.

- **Split batches.** A model compiled at batch 1 takes a batch-N request as N requests streamed
  through the pipeline, one after another, with the answers concatenated: the seed's premise,
  throughput without batching (`Pipeline.submit(feeds, split_batch=True)`). A model with a
  dynamic batch dim takes up to its max in one request, so a larger batch is split into
  chunks of that size.
- **Buckets.** A plan with buckets runs every request at its bucket's shape: `submit` pads the
  request, and trims the answers back (`corepipe.artifact.padding`).

Both keep the `Pipeline` contract: every part is checked before any is queued (a bad batch
queues nothing), and the request's future completes when its last part does, in submission
order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from ..artifact.dims import Shapes
from ..artifact.padding import pad_feeds, trim_outputs
from ..artifact.plan import Plan
from ..artifact.signature import check_feeds
from ..errors import InputError

__all__ = ["batch_rows", "split_feeds", "submit_split", "submit_padded", "chain", "Submitter"]

Result = dict[str, np.ndarray]


class Submitter(Protocol):
    """What this module needs of a pipeline (`corepipe.runtime.base.Pipeline` is one): named
    here, so that base imports this module and never the other way round."""

    plan: Plan

    def submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None,
               split_batch: bool = False) -> Future[Result]: ...

    def _submit(self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Future[Result]: ...

    def _checked(self, feeds: Mapping[str, np.ndarray]) -> Result: ...


def batch_rows(plan: Plan) -> int:
    """How many rows of a batch one pipeline request takes: the max of the plan's batch dim, or
    1 for a model whose every input and output has a leading axis of 1.

    Raises:
        InputError: the model has no batch axis to split along (naming the tensor without one).
    """
    shapes = plan.shapes
    if shapes is not None and shapes.batch is not None:
        return shapes.dims[shapes.batch][1]
    for kind, specs in (("input", plan.inputs), ("output", plan.outputs)):
        for t in specs:
            if not t.shape or t.ranges()[0] != (1, 1):
                raise InputError(
                    f"split_batch needs a batch axis: axis 0 of size 1 on every input and output (or a "
                    f"dynamic batch dim), and {kind} {t.name!r} is {t.describe()}")
    return 1


def split_feeds(plan: Plan, feeds: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A batch along axis 0 cut into requests of at most `batch_rows` rows, each checked.

    Raises:
        InputError: not a dict of arrays, a missing input, a ragged batch (inputs with different
            row counts), an empty one, or a part that does not match the signature.
    """
    rows = batch_rows(plan)
    if not isinstance(feeds, Mapping):
        check_feeds(plan.inputs, feeds)  # raises its own message
    counts = {}
    for t in plan.inputs:
        value = feeds.get(t.name) if isinstance(feeds, Mapping) else None
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            check_feeds(plan.inputs, feeds)  # names what is missing or wrong
            raise InputError(f"input {t.name!r}: split_batch needs an array with a batch axis 0, got {value!r}")
        counts[t.name] = value.shape[0]
    if len(set(counts.values())) > 1:
        raise InputError(f"ragged batch: the inputs have different row counts {counts}; every input needs "
                         "the same batch size along axis 0")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise InputError("an empty batch (0 rows along axis 0): send at least one row")
    parts = [{name: np.asarray(feeds[name])[i:i + rows] for name in counts} for i in range(0, n, rows)]
    for i, part in enumerate(parts):
        try:
            parts[i] = check_feeds(plan.inputs, part)
        except InputError as exc:
            raise InputError(f"rows {i * rows}..{i * rows + len(next(iter(part.values()))) - 1} of the batch: {exc}") from None
    return parts


def chain(futures: list[Future[Result]], combine: Callable[[list[Result]], Result]) -> Future[Result]:
    """A future of ``combine(results)`` once every one of ``futures`` is done (they complete in
    order, so the last one's callback sees them all); the first failure fails it."""
    out: Future[Result] = Future()
    out.set_running_or_notify_cancel()
    rid = getattr(futures[0], "request_id", None)
    if rid is not None:
        out.request_id = rid  # type: ignore[attr-defined]

    def done(_: Future[Result]) -> None:
        if not all(f.done() for f in futures):  # an earlier part still pending (not in order)
            return
        if out.done():
            return
        try:
            out.set_result(combine([f.result() for f in futures]))
        except BaseException as exc:  # a part failed (or combining did): the whole request fails
            if not out.done():
                out.set_exception(exc)

    for f in futures:
        f.add_done_callback(done)
    return out


def submit_split(pipe: Submitter, feeds: Mapping[str, np.ndarray], timeout: float | None) -> Future[Result]:
    """`Pipeline.submit` with ``split_batch=True``: the parts streamed, the answers concatenated."""
    parts = split_feeds(pipe.plan, feeds)
    if len(parts) == 1:
        return pipe.submit(parts[0], timeout=timeout)
    names = [t.name for t in pipe.plan.outputs]
    futures = [pipe.submit(part, timeout=timeout) for part in parts]
    return chain(futures, lambda results: {n: np.concatenate([r[n] for r in results], axis=0) for n in names})


def submit_padded(pipe: Submitter, feeds: Mapping[str, np.ndarray], timeout: float | None,
                  shapes: Shapes) -> Future[Result]:
    """`Pipeline.submit` for a plan with buckets: checked as sent (signature and values), padded
    in, trimmed out."""
    checked = pipe._checked(feeds)
    padded, values = pad_feeds(pipe.plan.inputs, checked, shapes)
    inner = pipe._submit(padded, timeout=timeout)
    dims = list(shapes.buckets)
    specs = pipe.plan.outputs
    return chain([inner], lambda results: trim_outputs(specs, results[0], values, dims))
