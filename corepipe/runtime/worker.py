"""A pipeline worker: one process per stage, pinned to its core(s), weights loaded once.

Loop: wait for a FULL slot in the incoming ring and a free slot in the outgoing ring, run the
stage on in-place views of the incoming tensors, write the outgoing tensors, publish, free the
incoming slot. A failure of one request travels downstream as an ERROR slot with the stage-tagged
message; the worker goes on. On an epoch change (the client is recovering from a dead worker)
the worker drops what it holds, acknowledges, and waits for the client's go.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time

from .bell import Bell, wait_any
from .phases import phases_from_env
from .shm import ERROR, FULL, OK, Control, Ring, encode_error

__all__ = ["worker_main"]

_POLL_S = 0.2


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the parent dies (we also poll getppid as a fallback)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
        ring_in = Ring.attach(cfg["ring_in"], specs_in, cfg["slots"], stamps)
        ring_out = Ring.attach(cfg["ring_out"], specs_out, cfg["slots"], stamps)
    except BaseException as exc:  # report why we could not start, then exit
        message = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000]
        try:
            os.write(fds["report"], message)
        except OSError:
            pass
        control.set(k, Control.READY, -1)
        sys.exit(3)
    in_full = Bell(r=fds["in_full"])
    in_free = Bell(w=fds["in_free"])
    out_full = Bell(w=fds["out_full"])
    out_free = Bell(r=fds["out_free"])
    wake = Bell(r=fds["wake"])
    epoch = control.epoch
    control.set(k, Control.HEARTBEAT, time.time())
    control.set(k, Control.ACK, epoch)
    control.set(k, Control.PID, os.getpid())
    control.set(k, Control.READY, 1)
    idx = 0  # slot sequence number in both rings for this epoch
    slots = cfg["slots"]
    # Per-phase counters (COREPIPE_PHASES; None, and never touched, when off): see phases.py.
    ph = phases_from_env(f"stage{k}", ("wait", "header", "bind", "engine", "after", "publish"), process_cpu=True)
    if ph is not None:
        ph.wrap(runner.engine, "run_bound", 2, 3)

    def alive() -> bool:
        control.set(k, Control.HEARTBEAT, time.time())  # an idle worker proves it is not stuck
        return not control.shutdown and os.getppid() == parent

    while alive():
        if control.epoch != epoch:
            # Recovery: drop everything, acknowledge, wait for the client's go.
            epoch = control.epoch
            control.set(k, Control.BUSY_SINCE, 0.0)
            control.set(k, Control.ACK, epoch)
            while alive() and control.go_epoch < epoch and control.epoch == epoch:
                wait_any([wake], _POLL_S)
            idx = 0
            continue
        s = idx % slots
        if ring_in.state(s) != FULL or ring_in.epoch(s) != epoch:
            wait_any([in_full, wake], _POLL_S)
            continue
        if ring_out.state(s) != 0:
            wait_any([out_free, wake], _POLL_S)
            continue
        if ph is not None:
            ph.lap(0)
        rid = ring_in.request_id(s)
        control.set(k, Control.CURRENT, rid)
        start, enter = time.time(), time.monotonic()
        control.set(k, Control.BUSY_SINCE, start)
        status, error = OK, ""
        if ring_in.status(s) == ERROR:
            status, error = ERROR, ring_in.error(s)  # an upstream failure: pass it on
        else:
            try:
                views = ring_in.read(s)
                if ph is not None:
                    ph.lap(1)
                runner.run_into(views, ring_out, s, request_id=rid)
            except Exception as exc:  # StageError, or a tensor over its compiled size
                status, error = ERROR, encode_error(exc, k)
            if ph is not None:
                ph.lap(4)
        if control.epoch != epoch:
            continue  # a recovery began while we ran: this result belongs to a dead epoch
        # Count before publishing: once the result is visible the client may read stats(), and
        # they must already include this request.
        control.set(k, Control.BUSY_S, control.get(k, Control.BUSY_S) + (time.time() - start))
        control.set(k, Control.REQUESTS, control.get(k, Control.REQUESTS) + 1)
        control.set(k, Control.BUSY_SINCE, 0.0)
        ring_out.stamp(s, ring_in, k, enter, time.monotonic())  # this request's path, for timelines
        ring_out.publish(s, epoch=epoch, seq=idx, request_id=rid, status=status, error=error)
        out_full.ring()
        ring_in.free(s)
        in_free.ring()
        idx += 1
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
