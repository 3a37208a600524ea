"""The worker loop of a decoder stage (started by `corepipe.runtime.worker` for a decoder plan).

Like the plain worker, it pins itself, loads its stage once, follows the client's epochs (drop
everything on a recovery, acknowledge, wait for the go) and moves slots from its input ring to its
output ring. Unlike it, it keeps its layers' KV (`store.KVStore`) and batches: whatever decode
steps wait in its input ring run as one engine call and leave as one message. A step that fails
leaves as an error slot that still carries its header, so the client fails just those sequences.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..bell import Bell, wait_any
from ..shm import EMPTY, ERROR, OK, Control, Ring, encode_error
from .header import NEW, merge
from .rings import HEADER

__all__ = ["decoder_main"]

_POLL_S = 0.2


def decoder_main(cfg: dict[str, Any]) -> None:
    """Run stage ``cfg["stage"]`` of a decoder artifact until shutdown or the client's death."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client owns Ctrl-C and closes us
    fds, parent, k = cfg["fds"], cfg["parent_pid"], int(cfg["stage"])
    control = Control.attach(cfg["control"], cfg["num_stages"])
    try:
        if cfg["cores"]:
            try:
                os.sched_setaffinity(0, set(cfg["cores"]))
            except (AttributeError, OSError):
                pass
        from ...artifact.manifest import open_artifact
        from ...artifact.plan import TensorSpec
        from .inline import load_stages

        artifact = open_artifact(cfg["artifact"], verify_hashes=False)  # the engine re-verifies its bytes
        stage = load_stages(artifact, cfg["threads"], [k])[0]
        stamps = int(cfg.get("stamps", 0))  # the slots' timestamp room (unused here, but it shapes the header)
        ring_in = Ring.attach(cfg["ring_in"], [TensorSpec.from_dict(t) for t in cfg["specs_in"]], cfg["slots_in"], stamps)
        ring_out = Ring.attach(cfg["ring_out"], [TensorSpec.from_dict(t) for t in cfg["specs_out"]], cfg["slots_out"], stamps)
    except BaseException as exc:  # report why we could not start, then exit
        try:
            os.write(fds["report"], f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000])
        except OSError:
            pass
        control.set(k, Control.READY, -1)
        sys.exit(3)
    in_full, in_free = Bell(r=fds["in_full"]), Bell(w=fds["in_free"])
    out_full, out_free, wake = Bell(w=fds["out_full"]), Bell(r=fds["out_free"]), Bell(r=fds["wake"])
    epoch = control.epoch
    clock = time.monotonic  # the supervisor's clock for heartbeats and deadlines
    for field, value in ((Control.HEARTBEAT, clock()), (Control.ACK, epoch), (Control.PID, os.getpid()),
                         (Control.READY, 1)):
        control.set(k, field, value)
    slots_in, slots_out = int(cfg["slots_in"]), int(cfg["slots_out"])
    got = put = 0  # messages read from the input ring, written to the output ring, this epoch

    def alive() -> bool:
        control.set(k, Control.HEARTBEAT, clock())
        return not control.shutdown and os.getppid() == parent

    def ready(i: int) -> bool:
        return ring_in.ready(i % slots_in, epoch)

    while alive():
        if control.epoch != epoch:  # recovery: drop everything, acknowledge, wait for the go
            epoch = control.epoch
            control.set(k, Control.BUSY_SINCE, 0.0)
            control.set(k, Control.ACK, epoch)
            while alive() and control.go_epoch < epoch and control.epoch == epoch:
                wait_any([wake], _POLL_S)
            got = put = 0
            continue
        if not ready(got):
            wait_any([in_full, wake], _POLL_S)
            continue
        so = put % slots_out
        if ring_out.state(so) != EMPTY:
            wait_any([out_free, wake], _POLL_S)
            continue
        start = clock()
        control.set(k, Control.BUSY_SINCE, start)
        taken = [got]
        first = ring_in.read(got % slots_in)
        messages = [(first[HEADER], {n: v for n, v in first.items() if n != HEADER})]
        status, error = OK, ""
        if ring_in.status(got % slots_in) == ERROR:
            status, error = ERROR, ring_in.error(got % slots_in)  # an upstream failure: pass it on
        elif int(first[HEADER][:, NEW].max()) == 1:
            # continuous batching: every decode step already waiting joins this engine call
            while len(taken) < slots_in and ready(got + len(taken)):
                s = (got + len(taken)) % slots_in
                if ring_in.status(s) == ERROR:
                    break
                views = ring_in.read(s)
                if int(views[HEADER][:, NEW].max()) != 1:
                    break
                messages.append((views[HEADER], {n: v for n, v in views.items() if n != HEADER}))
                taken.append(got + len(taken))
        head, tensors = merge(messages)
        out: dict[str, np.ndarray] = {}
        if status == OK:
            try:
                out = stage.step(head, tensors)
            except Exception as exc:
                status, error = ERROR, encode_error(exc, k)
        if control.epoch != epoch:
            continue  # a recovery began while we ran: this result belongs to a dead epoch
        try:
            ring_out.write(so, {HEADER: head, **(out if status == OK else _empty(ring_out, head))})
        except Exception as exc:  # a tensor larger than its slot: fail the step, not the stage
            status, error = ERROR, encode_error(exc, k)
            ring_out.write(so, {HEADER: head, **_empty(ring_out, head)})
        control.set(k, Control.BUSY_S, control.get(k, Control.BUSY_S) + (clock() - start))
        control.set(k, Control.REQUESTS, control.get(k, Control.REQUESTS) + 1)
        control.set(k, Control.RUNS, control.get(k, Control.RUNS) + 1)
        control.set(k, Control.BUSY_SINCE, 0.0)
        ring_out.publish(so, epoch=epoch, seq=put, request_id=int(head[0, 0]), status=status, error=error)
        out_full.ring()
        for i in taken:
            ring_in.free(i % slots_in)
        in_free.ring()
        got += len(taken)
        put += 1
    ring_in.close()
    ring_out.close()
    control.close()


def _empty(ring: Ring, head: np.ndarray) -> dict[str, np.ndarray]:
    """Zero-row tensors for the non-header tensors of an error slot."""
    return {s.name: np.zeros((0, *s.shape[1:]), dtype=s.dtype) for s in ring.specs if s.name != HEADER}
