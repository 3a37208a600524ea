"""`corepipe serve --backend ray` on a decoder artifact (issue 26): one real server process whose
pipeline is one Ray actor per stage (a private Ray instance on the loopback), driven by the
`openai` client: completions (and KServe's generate) and a streamed chat equal to the
onnxruntime whole-model loop (`tests/decoders.reference_generate`), a stream closed mid-way
frees its KV row in every stage,
an actor killed with kill -9 under 16 concurrent streams is re-placed and its KV rebuilt by
replay (every stream ends with the undisturbed tokens), and SIGTERM leaves no Ray process (no
actor, no raylet, no GCS) behind. One server serves the module: Ray's start-up costs seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import psutil
import pytest
from conftest import wait_gone
from decoders import decoder_model_or_skip, prompts, reference_generate, tokenizer
from serving import TOKEN, Server, post
from test_serve_llm import client, rows_in_use, series, settle

import corepipe

openai = pytest.importorskip("openai")
pytest.importorskip("jinja2")
pytest.importorskip("ray")

pytestmark = pytest.mark.slow
ROWS, QUEUE, STREAMS = 8, 8, 16


def ray_processes(server: Server) -> list[psutil.Process]:
    """Every process the server started: Ray's GCS, raylet and agents, and the stage actors (the
    raylet's children; only this server's, whatever other Ray instances run on the machine)."""
    try:
        return psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def actors(server: Server) -> list[psutil.Process]:
    return [p for p in ray_processes(server) if _title(p).startswith("ray::DecoderActor")]


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model = decoder_model_or_skip("gpt2")
    art = corepipe.compile(model, tmp_path_factory.mktemp("llmray") / "gpt2", num_cores=2, max_sequences=ROWS).path
    server = Server.start(art, "--backend", "ray", "--token", TOKEN, "--max-queue", str(QUEUE), timeout=240)
    started = ray_processes(server)
    try:
        yield server, model
    finally:
        server.kill()  # a no-op after the SIGTERM test
        for p in started + actors(server):  # whatever a failed test left: never leak a Ray node
            try:
                p.kill()
            except psutil.Error:
                pass


def test_the_pipeline_runs_on_ray_actors(llm):
    server, _ = llm
    assert len(actors(server)) == 2  # one actor per stage
    assert all(series(server, "corepipe:kv_cache_bytes", model_name="gpt2", stage=k) > 0 for k in range(2))
    assert not server.workers()  # no local worker process
    assert series(server, "corepipe_model_ready", model="gpt2") == 1


def test_completions_equal_the_reference(llm):
    server, model = llm
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["gpt2"]
    ids = [5, 17, 42, 7, 99]
    out = c.completions.create(model="gpt2", prompt=ids, max_tokens=10, temperature=0)
    assert out.choices[0].token_ids == reference_generate(model, [ids], 10)[0]
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == 10
    text = "Once upon a time"
    prompt = tokenizer(model).encode(text).ids
    out = c.completions.create(model="gpt2", prompt=text, max_tokens=6, temperature=0, n=2)
    want = reference_generate(model, [prompt], 6)[0]
    assert [ch.token_ids for ch in out.choices] == [want] * 2
    assert out.choices[0].text == tokenizer(model).decode(want, skip_special_tokens=True)
    status, _, data = post(server, "/v2/models/gpt2/generate",
                           json.dumps({"text_input": text, "parameters": {"max_tokens": 6, "temperature": 0}}))
    assert status == 200 and json.loads(data)["token_ids"] == want  # KServe v2's generate extension


def test_chat_streams_one_chunk_per_token(llm):
    server, model = llm
    messages = [{"role": "user", "content": "hello there"}]
    chunks = list(client(server).chat.completions.create(
        model="gpt2", messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    tokens = [c.choices[0].token_ids for c in chunks if c.choices and c.choices[0].token_ids]
    prompt_tokens = chunks[-1].usage.prompt_tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(len(t) == 1 for t in tokens) and len(tokens) == 8
    whole = client(server).chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
    assert [t[0] for t in tokens] == whole.choices[0].token_ids
    assert whole.usage.prompt_tokens == prompt_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tokenizer(model).decode(whole.choices[0].token_ids, skip_special_tokens=True)


def test_closing_a_stream_frees_its_kv_row_in_every_stage(llm):
    server, _ = llm
    cancelled = series(server, "corepipe:request_success_total", model_name="gpt2", finished_reason="cancelled")
    stream = client(server).completions.create(model="gpt2", prompt=[1, 2, 3], max_tokens=60, temperature=0.8,
                                               seed=1, stream=True)
    got = 0
    for chunk in stream:
        got += len(chunk.choices[0].token_ids) if chunk.choices else 0
        if got >= 3:
            break
    held = [series(server, "corepipe:kv_cache_rows_in_use", model_name="gpt2", stage=k) for k in range(2)]
    assert held == [1, 1]  # the sequence holds its row in both stages
    stream.close()
    assert settle(server) == 0
    assert series(server, "corepipe:num_requests_running", model_name="gpt2") == 0
    after = series(server, "corepipe:request_success_total", model_name="gpt2", finished_reason="cancelled")
    assert after == cancelled + 1


async def _streams(server: Server, batch: list[list[int]], new: int, started: asyncio.Event,
                   first: int) -> list[list[int]]:
    """``batch`` as concurrent streamed completions; ``started`` is set once ``first`` of them
    have their first token."""
    c = openai.AsyncOpenAI(base_url=f"http://{server.http}/v1", api_key=TOKEN, max_retries=0, timeout=180)
    going = 0

    async def one(ids: list[int]) -> list[int]:
        nonlocal going
        out: list[int] = []
        stream = await c.completions.create(model="gpt2", prompt=ids, max_tokens=new, temperature=0, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].token_ids:
                if not out:
                    going += 1
                    if going >= first:
                        started.set()
                out.extend(chunk.choices[0].token_ids)
        return out

    try:
        return await asyncio.gather(*(one(p) for p in batch))
    finally:
        await c.close()


def test_an_actor_killed_under_16_streams_replays_the_same_tokens(llm):
    server, model = llm
    batch = prompts(1000, STREAMS, [3, 9, 5, 12], seed=8)
    new = 24
    want = reference_generate(model, batch, new)
    restarts = sum(series(server, "corepipe_stage_restarts_total", model="gpt2", stage=k) for k in range(2))
    victim = actors(server)[0]

    async def run() -> list[list[int]]:
        started = asyncio.Event()
        task = asyncio.ensure_future(_streams(server, batch, new, started, ROWS))
        await asyncio.wait_for(started.wait(), 120)  # every KV row generating, the other 8 waiting
        os.kill(victim.pid, signal.SIGKILL)
        return await task

    got = asyncio.run(run())
    assert got == want
    assert sum(series(server, "corepipe_stage_restarts_total", model="gpt2", stage=k) for k in range(2)) == restarts + 1
    assert victim.pid not in {p.pid for p in actors(server)} and len(actors(server)) == 2
    assert settle(server) == 0 and rows_in_use(server) == 0


def test_sigterm_leaves_no_ray_process(llm):
    server, _ = llm
    procs = ray_processes(server)
    titles = [_title(p) for p in procs]
    assert sum(t.startswith("ray::DecoderActor") for t in titles) == 2
    assert any("raylet" in t for t in titles) and any("gcs_server" in t for t in titles)
    assert server.stop(timeout=90) == 0
    names = {p.pid: t for p, t in zip(procs, titles)}
    alive = wait_gone(list(names), timeout=30)
    assert alive == [], f"left running after SIGTERM: {[names[pid][:80] for pid in alive]}"


def test_sigterm_to_the_whole_process_group_exits_0_and_leaves_nothing(tmp_path):
    """As `timeout`, `kill -- -PGID` or a service manager stop it: Ray's daemons get the SIGTERM
    too and the raylet dies at once (they block SIGINT only); the server still closes, exits 0
    (not Ray's exit 1 after a minute waiting for it) and no actor outlives it."""
    model = decoder_model_or_skip("gpt2")
    art = corepipe.compile(model, tmp_path / "gpt2", num_cores=2, max_sequences=2).path
    server = Server.start(art, "--backend", "ray", timeout=240)
    try:
        c = openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="-", max_retries=0, timeout=60)
        assert c.completions.create(model="gpt2", prompt=[4, 5], max_tokens=3, temperature=0).choices[0].token_ids == \
            reference_generate(model, [[4, 5]], 3)[0]
        procs = ray_processes(server)
        names = {p.pid: _title(p) for p in procs}
        assert sum(t.startswith("ray::DecoderActor") for t in names.values()) == 2
        os.killpg(server.proc.pid, signal.SIGTERM)  # start_new_session: the group is the server's
        assert server.proc.wait(timeout=60) == 0, "\n".join(server.lines[-20:])
        alive = wait_gone(list(names), timeout=30)
        assert alive == [], f"left running: {[names[pid][:80] for pid in alive]}"
    finally:
        for p in ray_processes(server):
            p.kill()
        server.kill()
