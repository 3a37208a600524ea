"""Stage batching: a ``local`` worker runs the requests queued in its incoming ring as one batch.

When a worker finds more than one request waiting (consecutive FULL slots of this epoch, each
OK) and as many free slots in its outgoing ring, it stacks them along the model's batch dim
into one prepared buffer per input (one copy), frees their incoming slots (so the stage before
refills them while the batch runs: holding them, two stages that batch took turns), runs its
engine once, and writes each request's rows of every output into that request's own outgoing
slot; the worker then publishes them in order, each with its own request id and timestamps. Nothing waits for company: a batch is
only what is already queued, so an idle pipeline answers as fast as before.

It is on where `load` is given ``stage_batch`` (see `stage_batch_rows`) and the plan allows it:
a one-shot plan (no decoder) with a dynamic batch dim (``dynamic_dims={"batch": (1, N)}``),
whose every tensor entering and leaving the stage has that dim as axis 0. A group of requests
is merged only when they agree in shape past axis 0 and their rows fit one of the shapes the
stage's engine was compiled for (with buckets on the batch dim, the group shrinks to a sum
that is a bucket). Like client-side dynamic batching (`corepipe.runtime.batcher`), it assumes
what a batch dim means: each row's answer depends on that row alone.

Results never change: a batch that fails (a fault of one request the engine found) is run
again one request at a time, so only the request that causes it fails; after a worker died,
its replacement runs the replayed requests one at a time, so a request that kills its worker
is found alone and failed after its second death, as without batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..artifact.plan import Plan, TensorSpec
from ..errors import DeploymentError
from .phases import Phases
from .shm import ERROR, OK, Ring, encode_error

__all__ = ["StageBatcher", "run_batch", "stage_batch_rows"]


def stage_batch_rows(plan: Plan, stage_batch: int | bool | None) -> int:
    """Rows one engine call of a stage may take: ``stage_batch`` as given to `load`, checked.

    ``None``, ``False``, 0 or 1: off (0). ``True``: the batch dim's max. An int N >= 2: N rows.

    Raises:
        DeploymentError: stage batching asked of a plan without a dynamic batch dim, a decoder
            plan, or past the batch dim's max.
    """
    if stage_batch is None or stage_batch is False or (stage_batch is not True and stage_batch in (0, 1)):
        return 0
    shapes = plan.shapes
    if plan.decoder is not None or shapes is None or shapes.batch is None:
        why = "a decoder plan batches its steps itself" if plan.decoder is not None else "this artifact has none"
        raise DeploymentError(
            f"stage_batch={stage_batch!r} runs queued requests as one batch along a dynamic batch dim, and {why}; "
            "compile with dynamic_dims={'batch': (1, 8)} naming the model's batch dim, or leave stage_batch out")
    top = shapes.dims[shapes.batch][1]
    if stage_batch is True:
        return top
    if type(stage_batch) is not int or not 2 <= stage_batch <= top:
        raise DeploymentError(f"stage_batch={stage_batch!r} must be True or an int within 2..{top} (the batch dim "
                              f"{shapes.batch!r} was compiled for up to {top} rows)")
    return stage_batch


def _batched_axis(specs: Sequence[TensorSpec], batch: str) -> bool:
    """Whether every tensor of ``specs`` has the batch dim ``batch`` as its axis 0."""
    return all(spec.dims and spec.dims[0] == batch for spec in specs)


class StageBatcher:
    """Stage ``index``'s batching, prepared once in its worker (see the module docstring).

    Args:
        runner: the stage's `corepipe.engines.StageRunner` (its engine and stage plan).
        plan: the artifact's plan.
        index: the stage.
        rows: `stage_batch_rows`; 0 turns it off.
        ring_in, ring_out: the worker's rings.

    ``on`` tells whether this stage batches at all; `group` finds a batch at a position of the
    rings; `run_batch` takes it (`take`), computes it into the outgoing slots (`compute`), or
    runs its requests one at a time when it fails (`alone`).
    """

    def __init__(self, runner: Any, plan: Plan, index: int, rows: int, ring_in: Ring, ring_out: Ring) -> None:
        self.runner = runner
        self.engine = runner.engine
        self.rows = rows
        self.ring_in, self.ring_out = ring_in, ring_out
        shapes = plan.shapes
        batch = shapes.batch if shapes is not None else None
        self.on = bool(rows > 1 and batch is not None and runner.plan.inputs
                       and _batched_axis(ring_in.specs, batch) and _batched_axis(ring_out.specs, batch))
        self._inputs = list(runner.plan.inputs)
        self._outputs = list(runner.plan.outputs)
        self._carried = list(runner.plan.carried)
        before = {t.name: t for t in ring_in.specs}
        self._after = {t.name: t for t in ring_out.specs}
        self._in_specs = [before[name] for name in self._inputs]
        # One buffer per engine input, sized for the batch dim's max: the batch is copied in
        # there, run, and each request's rows of the outputs copied to its own slot. (No output
        # is bound in place: over dynamic dims the compiler marks every boundary tensor as sized
        # by the data, so the engine returns fresh arrays and each is checked, as `StageRunner`
        # does for one request.)
        self._bufs = [np.empty(max(spec.nbytes, 1) if self.on else 1, np.uint8) for spec in self._in_specs]
        self._variants = [v for v in getattr(self.engine, "variants", ())]
        # (rows, shapes past axis 0) -> (input views, output shapes), or None: the engine takes no such batch
        self._shapes: dict[tuple[Any, ...], tuple[list[np.ndarray], list[tuple[int, ...]]] | None] = {}
        self.alone_until = 0  # requests of the first epoch to run alone (replays after a death)

    # -- finding a batch ---------------------------------------------------------------------
    def group(self, idx: int, epoch: int) -> int:
        """How many requests from position ``idx`` of both rings to run as one batch (1: alone).

        They are FULL slots of ``epoch``, each OK, with a free outgoing slot each, agreeing in
        shape past axis 0, within ``rows`` rows and a shape the engine was compiled for."""
        ring_in, ring_out = self.ring_in, self.ring_out
        si, so = ring_in.slots, ring_out.slots
        first = ring_in.read(idx % si)
        rest = tuple(first[name].shape[1:] for name in self._inputs)
        total = first[self._inputs[0]].shape[0] if self._inputs else 1
        counts = [total]
        j = 1
        while j < si and j < so:
            s = (idx + j) % si
            if not ring_in.ready(s, epoch) or ring_in.status(s) != OK or ring_out.state((idx + j) % so) != 0:
                break
            views = ring_in.read(s)
            if tuple(views[name].shape[1:] for name in self._inputs) != rest:
                break
            r = views[self._inputs[0]].shape[0] if self._inputs else 1
            if total + r > self.rows:
                break
            total += r
            counts.append(total)
            j += 1
        while j > 1 and self._batch(counts[j - 1], rest) is None:
            j -= 1  # the engine takes no batch of these rows (a bucketed batch dim): fewer
        return j

    def _fits(self, shapes: list[tuple[int, ...]]) -> bool:
        """Whether one of the engine's compiled input shapes takes inputs of ``shapes``."""
        if not self._variants:
            return True
        return any(all(len(shape) == len(axes) and all(lo <= n <= hi for n, (lo, hi) in zip(shape, axes))
                       for shape, axes in zip(shapes, ranges)) for ranges in self._variants)

    def _batch(self, rows: int, rest: tuple[tuple[int, ...], ...]) -> tuple[list[np.ndarray], list[tuple[int, ...]]] | None:
        """Views of the input buffers at ``rows`` rows, and the output shapes they give (made
        once per shape); None where the engine was compiled for no such batch."""
        key = (rows, rest)
        if key in self._shapes:
            return self._shapes[key]
        shapes = [(rows, *r) for r in rest]
        found = None
        if self._fits(shapes):
            ins = [buf[: int(np.prod(shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize]
                   .view(spec.dtype).reshape(shape) for buf, spec, shape in zip(self._bufs, self._in_specs, shapes)]
            values: dict[str, int] = {}
            for spec, shape in zip(self._in_specs, shapes):
                for axis, dim in enumerate(spec.dims):
                    if dim is not None:
                        values[dim] = shape[axis]
            outs = [self._after[name].shape_for(values) for name in self._outputs]
            if all(s is not None for s in outs):
                found = (ins, [s for s in outs if s is not None])
        if len(self._shapes) >= 64:
            del self._shapes[next(iter(self._shapes))]
        self._shapes[key] = found
        return found

    # -- running it --------------------------------------------------------------------------
    def take(self, idx: int, k: int, enter: float, stage: int) -> _Taken:
        """Copy the ``k`` requests from position ``idx`` into the batch buffers, and their
        carried tensors and upstream timestamps into their outgoing slots: from then on their
        incoming slots may be freed (the stage before fills them while this batch runs)."""
        ring_in, ring_out = self.ring_in, self.ring_out
        si, so = ring_in.slots, ring_out.slots
        members = [ring_in.read((idx + j) % si) for j in range(k)]
        rows = [m[self._inputs[0]].shape[0] for m in members]
        rest = tuple(members[0][name].shape[1:] for name in self._inputs)
        found = self._batch(sum(rows), rest)
        assert found is not None, "group() only forms batches the engine takes"
        ins, want = found
        for i, name in enumerate(self._inputs):
            np.concatenate([m[name] for m in members], axis=0, out=ins[i])
        views, shapes = [], []
        for j, m in enumerate(members):
            s, t = (idx + j) % si, (idx + j) % so
            mine = {name: (rows[j], *shape[1:]) for name, shape in zip(self._outputs, want)}
            mine.update({name: m[name].shape for name in self._carried})
            views.append(ring_out.views(t, mine))
            shapes.append(mine)
            for name in self._carried:
                views[j][name][...] = m[name]
            ring_out.stamp(t, ring_in, stage, enter, enter, upstream_slot=s)
        rids = [ring_in.request_id((idx + j) % si) for j in range(k)]
        return _Taken(idx, rows, ins, want, views, shapes, rids)

    def compute(self, taken: _Taken) -> None:
        """Run a batch from `take` as one engine call and write each request's rows of the
        outputs into its outgoing slot. Raises whatever the engine raised, or ValueError for an
        output of the wrong shape: the caller then runs the requests one at a time."""
        outs = self.engine.run(dict(zip(self._inputs, taken.ins)))
        for name, got, shape in zip(self._outputs, outs, taken.want):
            spec = self._after[name]
            if got.shape != shape or str(got.dtype) != spec.dtype:
                raise ValueError(f"{name!r} came out {got.dtype}{list(got.shape)} for a batch of "
                                 f"{sum(taken.rows)} rows, not {spec.dtype}{list(shape)}")
        off = 0
        for j, r in enumerate(taken.rows):
            for name, out in zip(self._outputs, outs):
                taken.views[j][name][...] = out[off:off + r]
            self.ring_out.mark((taken.idx + j) % self.ring_out.slots, taken.shapes[j])
            off += r

    def alone(self, taken: _Taken, stage: int) -> list[tuple[int, str]]:
        """Each request of a batch that failed, run by itself from the batch buffers (its
        incoming slot may hold another request by now): (status, error) each."""
        outcomes: list[tuple[int, str]] = []
        off = 0
        for j, r in enumerate(taken.rows):
            boundary = {name: buf[off:off + r] for name, buf in zip(self._inputs, taken.ins)}
            boundary.update({name: taken.views[j][name] for name in self._carried})
            try:
                self.runner.run_into(boundary, self.ring_out, (taken.idx + j) % self.ring_out.slots,
                                     request_id=taken.rids[j])
                outcomes.append((OK, ""))
            except Exception as exc:  # StageError, or a tensor over its compiled size
                outcomes.append((ERROR, encode_error(exc, stage)))
            off += r
        return outcomes


class _Taken(NamedTuple):
    """A batch copied out of the incoming ring (`StageBatcher.take`)."""

    idx: int
    rows: list[int]
    ins: list[np.ndarray]
    want: list[tuple[int, ...]]
    views: list[dict[str, np.ndarray]]
    shapes: list[dict[str, tuple[int, ...]]]
    rids: list[int]


def run_batch(batcher: StageBatcher, idx: int, many: int, stage: int, enter: float, release: Callable[[], None],
              ph: Phases | None) -> tuple[list[tuple[int, str]], int, list[int]]:
    """The ``many`` requests from position ``idx`` run as one batch, or, if the batch fails,
    one at a time (so only a request that fails alone fails). ``release`` frees their incoming
    slots once they are copied, before the engine runs. Returns each one's (status, error) for
    its outgoing slot, the engine calls made, and their request ids."""
    if ph is not None:
        ph.lap(1)
    taken = batcher.take(idx, many, enter, stage)
    release()
    runs = 1
    try:
        batcher.compute(taken)
        outcomes = [(OK, "")] * many
    except Exception:  # one request's fault fails the batch: find it by running them alone
        outcomes = batcher.alone(taken, stage)
        runs += many
    if ph is not None:
        ph.lap(4)
    return outcomes, runs, taken.rids
