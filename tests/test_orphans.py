"""Segments a SIGKILLed client leaves in /dev/shm are removed by the next pipeline started
(`corepipe.runtime.segments.sweep_orphans`, issue 27)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_gone

import corepipe
from corepipe import zoo
from corepipe.runtime.segments import sweep_orphans


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_segments_of_processes_that_are_gone(tmp_path):
    dead, mine = _dead_pid(), os.getpid()
    names = [f"corepipe_{dead}_0123456789ab", f"corepipe_{mine}_0123456789ab", "corepipe_x_1", f"other_{dead}_ab"]
    for name in names:
        (tmp_path / name).write_bytes(b"\0")
    assert sweep_orphans(tmp_path) == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


_CLIENT = textwrap.dedent("""
    import json, sys, time, numpy as np, corepipe
    pipe = corepipe.load(sys.argv[1])
    feeds = {s.name: np.ones(s.shape, s.dtype) for s in pipe.plan.inputs}
    pipe.run(feeds)
    print(json.dumps({"pids": pipe.worker_pids(), "shm": pipe.shm_names()}), flush=True)
    while True:
        list(pipe.map([feeds] * 4))
""")


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX shared memory in /dev/shm (Linux)")
def test_segments_of_a_sigkilled_client_are_swept_at_the_next_start(tmp_path):
    model, feeds = zoo.get("mlp")
    art = tmp_path / "art"
    corepipe.compile(model, art, example_inputs=feeds, num_cores=2)
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(corepipe.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # Its own process group: kill -9 of the group takes the client, its workers and Python's
    # resource tracker (which would otherwise unlink the segments), as a killed job's group is.
    proc = subprocess.Popen([sys.executable, str(script), str(art)], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        info = json.loads(proc.stdout.readline())
        time.sleep(0.3)  # mid-stream
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_gone(info["pids"], timeout=10) == []
    left = [name for name in info["shm"] if (Path("/dev/shm") / name).exists()]
    assert left == info["shm"], "the kill left nothing to sweep: the test no longer shows the sweep"
    with corepipe.load(art) as pipe:  # the next start sweeps
        out = pipe.run({k: np.asarray(v) for k, v in feeds.items()})
        assert out
    assert [name for name in info["shm"] if (Path("/dev/shm") / name).exists()] == []
