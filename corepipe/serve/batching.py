"""How a served model takes batches and variable shapes, in Triton's and KServe's terms.

Triton describes a model with ``max_batch_size``: 0 when the model has no batch dim of its own
(its ``dims`` are the full shapes), N > 0 when every input and output has a batch dim first that
requests may fill up to N (its ``dims`` then leave that dim out). A dim that varies is ``-1``.
corepipe reports its models the same way, as Triton's ONNX backend would describe them:

- a model with a dynamic batch dim (``dynamic_dims={"batch": (1, B)}``): ``max_batch_size`` is
  ``--max-batch`` when given (and dynamic batching merges requests up to it), else B; a request
  of up to B rows runs as one tensor, a larger one (up to ``max_batch_size``) in chunks of B;
- a model compiled at batch 1: ``max_batch_size`` 0 and ``dims`` ``[1, ...]`` (so
  ``perf_analyzer --shape input_ids:1,37`` names the batch of 1); a request of N rows along
  axis 0 is still taken, as N requests streamed through the pipeline (``split_batch``);
- any other model: ``max_batch_size`` 0; requests have the compiled shapes.

Everything here is pure: `ServedModel` asks it once per model and once per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact.plan import Plan, TensorSpec
from ..artifact.valuechecks import ValueChecker
from ..errors import InputError
from ..runtime.batches import batch_rows, split_feeds

__all__ = ["Batching", "batching_of", "kserve_shape", "triton_dims", "parts_of"]


@dataclass(frozen=True)
class Batching:
    """A served model's batch dim, as the server takes it.

    Attributes:
        rows: rows one pipeline request holds along axis 0 (the batch dim's max, or 1 for a model
            compiled at batch 1); None for a model without a batch axis.
        max_batch_size: Triton's: the most rows one request may carry; 0 when the model has no
            dynamic batch dim (its dims then include axis 0).
        merge: rows dynamic batching merges waiting requests into (0: no merging).
        delay_us: how long the oldest waiting request waits for others, in microseconds.
    """

    rows: int | None = None
    max_batch_size: int = 0
    merge: int = 0
    delay_us: int = 0


def batching_of(plan: Plan, max_batch: int | None = None, batch_delay_s: float = 0.0) -> Batching:
    """How the server takes batches for ``plan``, given ``--max-batch`` (None: not given)."""
    try:
        rows: int | None = batch_rows(plan)
    except InputError:
        return Batching()
    dynamic = plan.shapes is not None and plan.shapes.batch is not None
    if not dynamic:
        return Batching(rows=rows)
    assert rows is not None
    top = max_batch if max_batch is not None else rows
    merge = min(top, rows) if max_batch is not None and max_batch > 1 else 0
    return Batching(rows=rows, max_batch_size=top, merge=merge,
                    delay_us=round(batch_delay_s * 1e6) if merge else 0)


def kserve_shape(spec: TensorSpec) -> list[int]:
    """A tensor's shape in KServe metadata: ``-1`` for each dim that varies (a dynamic dim, a
    data-dependent size, the batch dim of a model that takes batches)."""
    if spec.dynamic and spec.is_static:  # sized by the data alone: nothing known per axis
        return [-1] * len(spec.shape)
    return [hi if lo == hi else -1 for lo, hi in spec.ranges()]


def triton_dims(spec: TensorSpec, batching: Batching) -> list[int]:
    """A tensor's ``dims`` in Triton's model configuration: without the batch dim when
    ``max_batch_size`` > 0, ``-1`` where a dim varies."""
    shape = kserve_shape(spec)
    return shape[1:] if batching.max_batch_size > 0 else shape


def _rows(feeds: Mapping[str, Any]) -> int:
    """The largest axis 0 among the request's arrays (0 when none has one)."""
    return max((v.shape[0] for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim), default=0)


def parts_of(plan: Plan, batching: Batching, feeds: Any) -> list[dict[str, np.ndarray]]:
    """The pipeline requests one served request makes: itself, or, when it carries more rows than
    one pipeline request holds, its rows in chunks (`corepipe.runtime.batches.split_feeds`),
    after the plan's index ranges are checked on the whole batch (so a bad value is named at
    its place in the request, and no part runs for a request that fails).

    Raises:
        InputError: more rows than ``max_batch_size``; a ragged batch (inputs with different
            row counts), a part that does not match the signature, or a value out of range.
    """
    if batching.rows is None or not isinstance(feeds, Mapping):
        return [feeds]
    n = _rows(feeds)
    if batching.max_batch_size and n > batching.max_batch_size:
        raise InputError(
            f"a batch of {n} rows is more than this model's max_batch_size {batching.max_batch_size}: "
            f"send at most {batching.max_batch_size} rows per request (or serve with --max-batch {n})")
    if n <= batching.rows:
        return [dict(feeds)]
    parts = split_feeds(plan, feeds)
    ValueChecker([c for c in plan.input_checks if c.kind == "range"])(
        {name: np.concatenate([p[name] for p in parts]) for name in parts[0]})
    return parts
