"""A pipeline worker: one process per stage, pinned to its core(s), weights loaded once.

Loop: wait for a FULL slot in the incoming ring and a free slot in the outgoing ring, run the
stage on in-place views of the incoming tensors, write the outgoing tensors, publish, free the
incoming slot. Per request it does only that: the slot's views and the engine's binding are made
once per slot (and shape), the control words are written through one memoryview, and a wait
spins for ``spin_s`` (a worker on cores of its own) before it sleeps on its eventfd doorbell.
With stage batching on (``load(stage_batch=)``), the requests queued behind the next one run with
it as one engine call (`corepipe.runtime.stagebatch`). A failure of one request travels
downstream as an ERROR slot with the stage-tagged message; the worker goes on. On an epoch change (the client is recovering from a dead worker)
the worker drops what it holds, acknowledges, and waits for the client's go.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import sys
import time
from typing import Any

from .bell import Bell, SwitchBell, fence, spin_until, wait_any
from .phases import phases_from_env
from .shm import ERROR, OK, Control, Ring, encode_error
from .stagebatch import StageBatcher, run_batch

__all__ = ["worker_main"]

_POLL_S = 0.2


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the parent dies (we also poll getppid as a fallback)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _landed(ring: Ring, s: int, epoch: int, words: Any) -> bool:
    """Whether slot ``s`` of ``ring`` holds a request of ``epoch``, or a recovery began."""
    return ring.ready(s, epoch) or words[0] != epoch


def worker_main(config_json: str) -> None:
    """Entry point of a worker process (``python -m corepipe.runtime.worker CONFIG``).

    ``config_json`` holds plain data only: artifact path, stage, cores, shared-memory names and
    the inherited pipe descriptors of the doorbells. No tensor ever travels through it.
    """
    cfg = json.loads(config_json)
    _die_with_parent()
    if os.getppid() != cfg["parent_pid"]:
        sys.exit(0)  # the client died before we could ask to follow it
    if cfg.get("decoder"):  # a decoder stage: steps of sequences, its KV kept here
        from .sequences.worker import decoder_main

        decoder_main(cfg)
        return
    fds = cfg["fds"]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client owns Ctrl-C and closes us
    parent = cfg["parent_pid"]
    k = int(cfg["stage"])
    control = Control.attach(cfg["control"], cfg["num_stages"])
    try:
        if cfg["cores"]:
            try:
                os.sched_setaffinity(0, set(cfg["cores"]))
            except (AttributeError, OSError):
                pass
        from ..artifact.manifest import open_artifact
        from ..artifact.plan import TensorSpec
        from ..engines import StageRunner

        artifact = open_artifact(cfg["artifact"], verify_hashes=False)  # the runner re-verifies its own bytes
        # Spin-waiting keeps a multi-threaded stage's threads awake between operators; without it
        # each parallel operator waits for a sleeping thread to wake (a 2-thread ResNet-50 stage
        # ran at half speed). Only where the stage's cores are its own: spinning on a core that
        # another stage shares would take it from that stage.
        runner = StageRunner(artifact, k, threads=cfg["threads"], spin=bool(cfg.get("spin", False)))
        specs_in = [TensorSpec.from_dict(t) for t in cfg["specs_in"]]
        specs_out = [TensorSpec.from_dict(t) for t in cfg["specs_out"]]
        stamps = int(cfg.get("stamps", 0))  # timestamp room in each slot header (see shm.py)
        ring_in = Ring.attach(cfg["ring_in"], specs_in, cfg["slots_in"], stamps)
        ring_out = Ring.attach(cfg["ring_out"], specs_out, cfg["slots_out"], stamps)
    except BaseException as exc:  # report why we could not start, then exit
        message = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000]
        try:
            os.write(fds["report"], message)
        except OSError:
            pass
        control.set(k, Control.READY, -1)
        sys.exit(3)
    n = int(cfg["num_stages"])
    in_full = Bell(r=fds["in_full"])
    out_free = Bell(r=fds["out_free"])
    wake = Bell(r=fds["wake"])
    # Toward the client (stage 0's free slots, the last stage's results) a bell wakes whichever
    # client thread listens: one waiting in result(), or its service thread (bell.SwitchBell).
    client = (Bell(w=fds["callers"]), Bell(w=fds["service"]))
    in_free = SwitchBell(*client, control.listening, control.feed_wait) if k == 0 else Bell(w=fds["in_free"])
    out_full = SwitchBell(*client, control.listening) if k == n - 1 else Bell(w=fds["out_full"])
    epoch = control.epoch
    clock = time.monotonic  # one clock for busy time, deadlines and timelines (all processes)
    control.set(k, Control.HEARTBEAT, clock())
    control.set(k, Control.ACK, epoch)
    control.set(k, Control.PID, os.getpid())
    control.set(k, Control.READY, 1)
    # Prepared once: the control words this worker writes, the slot counts, the spin budget.
    cw, base = control.view, control.base(k)
    w_requests, w_busy, w_runs = base + Control.REQUESTS, base + Control.BUSY_S, base + Control.RUNS
    w_since, w_current, w_beat = base + Control.BUSY_SINCE, base + Control.CURRENT, base + Control.HEARTBEAT
    slots_in, slots_out = int(cfg["slots_in"]), int(cfg["slots_out"])
    spin_s = float(cfg.get("spin_s", 0.0))
    w_sleep_in, w_sleep_out = base + Control.SLEEP_IN, base + Control.SLEEP_OUT
    # The neighbours' sleep words (-1: the client's end, whose SwitchBell decides itself).
    next_sleeps = control.base(k + 1) + Control.SLEEP_IN if k < n - 1 else -1
    prev_sleeps = control.base(k - 1) + Control.SLEEP_OUT if k > 0 else -1
    idx = 0  # request sequence number in both rings for this epoch
    # Per-phase counters (COREPIPE_PHASES; None, and never touched, when off): see phases.py.
    ph = phases_from_env(f"stage{k}", ("wait", "header", "bind", "engine", "after", "publish"), process_cpu=True)
    if ph is not None:
        ph.wrap(runner.engine, "run_bound", 2, 3)
        ph.wrap(runner.engine, "run", 2, 3)  # a stage over dynamic dims runs, then copies
    # Stage batching (stagebatch.py): None where off. A restarted worker runs the requests it
    # replays (the first ``alone`` of its first epoch) one at a time, to find one that kills it.
    made = StageBatcher(runner, artifact.plan, k, int(cfg.get("stage_batch", 0)), ring_in, ring_out)
    made.alone_until = int(cfg.get("alone", 0))
    batcher = made if made.on else None
    first_epoch = epoch

    def release(first: int, count: int) -> None:
        """Free a batch's incoming slots as soon as it is copied out (stage batching), so the
        stage before refills them while the batch runs; ring it only if it sleeps."""
        for j in range(count):
            ring_in.free((first + j) % slots_in)
        fence()
        if prev_sleeps < 0 or cw[prev_sleeps]:
            in_free.ring()

    def alive() -> bool:
        cw[w_beat] = clock()  # an idle worker proves it is not stuck
        return not cw[2] and os.getppid() == parent  # words[2]: shutdown

    while True:
        if cw[0] != epoch or cw[2]:  # words[0]: the epoch; words[2]: shutdown
            if not alive():
                break
            # Recovery: drop everything, acknowledge, wait for the client's go.
            epoch = control.epoch
            cw[w_since] = 0.0
            control.set(k, Control.ACK, epoch)
            while alive() and control.go_epoch < epoch and control.epoch == epoch:
                wait_any([wake], _POLL_S)
            idx = 0
            continue
        s, t = idx % slots_in, idx % slots_out
        if not ring_in.ready(s, epoch):
            if not (spin_s and spin_until(functools.partial(_landed, ring_in, s, epoch, cw), spin_s)):
                if not alive():
                    break
                cw[w_sleep_in] = 1.0  # ring me (the producer looks after it publishes)
                fence()
                if not ring_in.ready(s, epoch):
                    wait_any([in_full, wake], _POLL_S)
                cw[w_sleep_in] = 0.0
            continue
        if ring_out.state(t) != 0:
            if not alive():
                break
            cw[w_sleep_out] = 1.0
            fence()
            if ring_out.state(t) != 0:
                wait_any([out_free, wake], _POLL_S)
            cw[w_sleep_out] = 0.0
            continue
        # Stage batching: the requests queued behind this one, as one engine call (1: alone).
        many = 1
        if batcher is not None and ring_in.status(s) == OK and (idx >= batcher.alone_until or epoch != first_epoch):
            many = batcher.group(idx, epoch)
        if ph is not None:
            ph.lap(0)
        rid = ring_in.request_id(s)
        enter = clock()
        cw[w_current] = rid
        cw[w_since] = enter
        rids: list[int] | None = None  # a batch's: its incoming slots are free already
        if many > 1:
            assert batcher is not None
            outcomes, runs, rids = run_batch(batcher, idx, many, k, enter, functools.partial(release, idx, many), ph)
        elif ring_in.status(s) == ERROR:
            outcomes, runs = [(ERROR, ring_in.error(s))], 0  # an upstream failure: pass it on
        else:
            outcomes, runs = [(OK, "")], 1
            try:
                views = ring_in.read(s)
                if ph is not None:
                    ph.lap(1)
                runner.run_into(views, ring_out, t, request_id=rid)
            except Exception as exc:  # StageError, or a tensor over its compiled size
                outcomes = [(ERROR, encode_error(exc, k))]
            if ph is not None:
                ph.lap(4)
        if cw[0] != epoch:
            continue  # a recovery began while we ran: these results belong to a dead epoch
        # Count before publishing: once a result is visible the client may read stats(), and
        # they must already include this request.
        leave = clock()
        cw[w_busy] += leave - enter
        cw[w_requests] += many
        cw[w_runs] += runs
        cw[w_since] = 0.0
        for j, (status, error) in enumerate(outcomes):
            sj, tj = (idx + j) % slots_in, (idx + j) % slots_out
            if rids is None:
                ring_out.stamp(tj, ring_in, k, enter, leave, upstream_slot=sj)  # each request's path, for timelines
                ring_out.publish(tj, epoch=epoch, seq=idx + j, request_id=ring_in.request_id(sj), status=status,
                                 error=error)
                ring_in.free(sj)
            else:  # the upstream stamps were copied as the batch was taken
                ring_out.stamp(tj, ring_out, k, enter, leave, upstream_slot=tj)
                ring_out.publish(tj, epoch=epoch, seq=idx + j, request_id=rids[j], status=status, error=error)
        fence()  # then ring only a neighbour that sleeps: a busy one costs no syscall
        if next_sleeps < 0 or cw[next_sleeps]:
            out_full.ring()
        if rids is None and (prev_sleeps < 0 or cw[prev_sleeps]):
            in_free.ring()
        idx += many
        if ph is not None:
            ph.lap(5)
    if ph is not None:
        ph.thread_done("worker")
        ph.dump()
    ring_in.close()
    ring_out.close()
    control.close()


if __name__ == "__main__":
    worker_main(sys.argv[1])
