"""A decoder larger than one host, across hosts (issue 26 part 5), on the namespace rig
(`hosts.Hosts`): each of hosts 1-3 declares a memory budget that holds one stage of the decoder
(weights + KV at its bounds) but not the whole, so its 2 stages land on 2 hosts, and the
tokens `pipe.generate` streams equal one host's (`reference_generate`, one onnxruntime session);
a host cut off mid-generation loses its stage, which Ray re-places on the spare host, its KV
rebuilt by replaying the live sequences' tokens, and every stream (16 at once, one KV row each)
goes on with the same tokens; the same through `corepipe serve --backend ray --address HEAD`
(a server process on host 0, 16 streams of the `openai` client, a stage's host cut off).
Host 0 runs the head and the driver and offers no CPU. Links capped at 10 Gbit/s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from typing import Any

import pytest
from decoders import decoder_model_or_skip, prompts, reference_generate
from hosts import HEALTH, Hosts, missing
from serving import Server

import corepipe
from corepipe.runtime.process import module_command

ray = pytest.importorskip("ray")

if why := missing():
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the multi-host tests, but {why}", pytrace=False)
    pytest.skip(f"the multi-host rig cannot run here: {why}", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

DETECT_S = HEALTH["health_check_failure_threshold"] * (
    HEALTH["health_check_period_ms"] + HEALTH["health_check_timeout_ms"]) / 1000
START_S = 60.0
MIXED = [3, 9, 17, 5, 12, 1, 24, 7]


def budget_of(plan: Any) -> int:
    """A host budget that holds the largest stage (weights + KV) but not the whole decoder."""
    sizes = [s.resident_bytes for s in plan.stages]
    budget = int(max(sizes) * 1.1)  # 16 KV rows of 64 tokens make the cut uneven (~4:1)
    assert sum(sizes) > budget, f"stages of {sizes} bytes all fit in {budget}: not larger than one host"
    return budget


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    model = decoder_model_or_skip("gpt2")
    cm = corepipe.compile(model, tmp_path_factory.mktemp("gpt2-hosts") / "a", num_cores=2,
                          max_sequences=16, max_length=64)
    budget = budget_of(cm.plan)
    h = Hosts(4, cpus=[0, 1, 1, 1], memory=[None, budget, budget, budget], gbit=10)
    with h, h.driver():
        yield h, cm.path, model


def _host(h: Hosts, ip: str) -> int:
    return next(i for i in range(h.n) if h.ip(i) == ip)


def _generate_all(pipe: Any, batch: list[list[int]], new: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in batch]

    def one(i: int) -> None:
        out[i] = list(pipe.generate(batch[i], max_new_tokens=new, timeout=120))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_a_decoder_over_one_hosts_budget_streams_one_hosts_tokens(rig) -> None:
    h, path, model = rig
    batch = prompts(1000, 8, MIXED, seed=8)
    want = reference_generate(model, batch, 16)
    with corepipe.load(path, backend="ray", start_timeout=START_S) as pipe:
        hosts = [_host(h, w["ip"]) for w in pipe.placement()]
        assert pipe.data_path == "stream" and len(set(hosts)) == 2 and 0 not in hosts
        got = _generate_all(pipe, batch, 16)
        st = pipe.stats()
    assert got == want
    cross = st.boundaries[1]  # stage 0 -> stage 1: host to host, one message per step
    assert cross.handoffs == sum(s.requests for s in st.stages[:1]) and cross.mean_s > 0
    print(f"\ncross-host hop: {cross.handoffs} steps, mean {cross.mean_s * 1e3:.3f} ms")


def test_a_host_cut_off_mid_generation_replaces_its_stage_and_replays(rig) -> None:
    h, path, model = rig
    batch = prompts(1000, 16, MIXED, seed=9)
    want = reference_generate(model, batch, 32)
    try:
        with corepipe.load(path, backend="ray", start_timeout=START_S, stage_timeout=30) as pipe:
            before = [_host(h, w["ip"]) for w in pipe.placement()]
            victim = before[1]  # the last stage's host: it keeps the KV and samples
            streams = [pipe.generate(p, max_new_tokens=32, timeout=DETECT_S + START_S + 60) for p in batch]
            got = [[next(s)] for s in streams]  # every sequence mid-generation
            h.link(victim, False)  # cut off: it neither sends nor hears anything
            cut_at = time.monotonic()
            for g, s in zip(got, streams):
                g.extend(s)
            resumed_s = time.monotonic() - cut_at
            after = [_host(h, w["ip"]) for w in pipe.placement()]
            counts = pipe.sequences()
            restarts = pipe.stats().stages[1].restarts
    finally:
        _whole(h)
    assert got == want
    assert after[0] == before[0] and after[1] not in (0, *before) and restarts == 1
    assert counts["replays"] >= 1 and counts["finished"] == 16
    print(f"\nhost {victim} cut: stage 1 re-placed on host {after[1]}, streams done {resumed_s:.1f} s later")


def _whole(h: Hosts) -> None:
    """Every host's node up again after a test cut one off."""
    alive = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    for i in range(h.n):
        if h.ip(i) not in alive or not h.alive(i):
            h.restart(i)




def _host_of_pid(h: Hosts, pid: int) -> int | None:
    """The rig host whose network namespace process ``pid`` runs in (None: not the rig's)."""
    ns = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True).stdout.strip()
    return next((i for i in range(h.n) if h.ns(i) == ns), None)


async def _openai_streams(url: str, model: str, batch: list[list[int]], new: int, going: asyncio.Event) -> list[list[int]]:
    import openai

    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=DETECT_S + START_S + 120)
    first: list[int] = []

    async def one(i: int) -> list[int]:
        out: list[int] = []
        stream = await c.completions.create(model=model, prompt=batch[i], max_tokens=new, temperature=0, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].token_ids:
                if not out:
                    first.append(i)
                    if len(first) == len(batch):
                        going.set()
                out.extend(chunk.choices[0].token_ids)
        return out

    try:
        return list(await asyncio.gather(*(one(i) for i in range(len(batch)))))
    finally:
        await c.close()


def test_serve_on_ray_across_hosts_streams_through_a_host_cut(rig) -> None:
    pytest.importorskip("openai")
    import psutil

    h, path, model = rig
    batch = prompts(1000, 16, MIXED, seed=10)
    want = reference_generate(model, batch, 24)
    argv, env = module_command("corepipe", "serve", str(path), "--backend", "ray", "--address", h.address,
                               "--http-port", "0", "--grpc-port", "0", "--max-queue", "16")
    env.update({k: v for k, v in h.env().items() if k.startswith("RAY_")})
    # Started from this thread, which is in host 0's namespace (the rig's driver): so is the server.
    proc = subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    server = Server(proc)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        for _ in range(int((START_S + 60) / 0.1)):  # bounded: the server says it is ready, or dies
            if server.grpc or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert server.grpc and proc.poll() is None, "the server did not get ready:\n" + "\n".join(server.lines)
        actors = [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []).startswith(
            "ray::DecoderActor")]
        hosts = sorted(i for i in (_host_of_pid(h, p.pid) for p in actors) if i is not None)  # not others' Ray
        assert len(hosts) == 2 and len(set(hosts)) == 2 and 0 not in hosts
        victim = hosts[-1]

        async def run() -> list[list[int]]:
            going = asyncio.Event()
            task = asyncio.ensure_future(_openai_streams(f"http://{server.http}", path.name, batch, 24, going))
            await asyncio.wait_for(going.wait(), START_S)  # all 16 mid-generation
            h.link(victim, False)
            return await task

        got = asyncio.run(run())
        assert got == want
        assert server.stop(timeout=90) == 0, "\n".join(server.lines[-20:])
    finally:
        server.kill()
        _whole(h)
