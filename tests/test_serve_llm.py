"""`corepipe serve` on a decoder artifact, driven by the clients LLM users have: the `openai`
package (completions, chat, streaming, a cancel mid-stream by closing the stream), `curl -N` for
server-sent events, and KServe v2's generate extension. One real server (a corpus GPT-2 compiled
into 2 stages, with its local tokenizer) serves the module; greedy tokens are checked against the
onnxruntime whole-model loop (`tests/decoders.reference_generate`), and the KV rows of every stage
return to 0 after a client goes away.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time

import pytest
from decoders import decoder_dir, decoder_model_or_skip, reference_generate, tokenizer
from serving import TOKEN, Server, auth, get, post

import corepipe

openai = pytest.importorskip("openai")
pytest.importorskip("jinja2")

pytestmark = pytest.mark.slow
ROWS, QUEUE = 4, 2


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model = decoder_model_or_skip("gpt2")
    art = corepipe.compile(model, tmp_path_factory.mktemp("llm") / "gpt2", num_cores=2, max_sequences=ROWS).path
    server = Server.start(art, "--token", TOKEN, "--max-queue", str(QUEUE))
    try:
        yield server, model
    finally:
        server.stop()


def client(server):
    return openai.OpenAI(base_url=f"http://{server.http}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def series(server, name, **labels):
    """The value of one series on /metrics (0 where absent)."""
    text = get(server, "/metrics")[1].decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")) or (
                want and line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def rows_in_use(server):
    return sum(series(server, "corepipe:kv_cache_rows_in_use", model_name="gpt2", stage=k) for k in range(2))


def settle(server, timeout=20.0):
    """Wait until no KV row is in use in any stage; return what is left."""
    deadline = time.monotonic() + timeout
    while (left := rows_in_use(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_models_and_completions_equal_the_reference(llm):
    server, model = llm
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["gpt2"]
    ids = [5, 17, 42, 7, 99]
    want = reference_generate(model, [ids], 10)[0]
    out = c.completions.create(model="gpt2", prompt=ids, max_tokens=10, temperature=0)
    choice = out.choices[0]
    assert choice.token_ids == want
    assert choice.text == tokenizer(model).decode(want, skip_special_tokens=True)
    assert out.usage.prompt_tokens == 5 and out.usage.completion_tokens == len(want)
    text = "Once upon a time"
    prompt = tokenizer(model).encode(text).ids
    out = c.completions.create(model="gpt2", prompt=text, max_tokens=6, temperature=0, n=2)
    assert [ch.token_ids for ch in out.choices] == [reference_generate(model, [prompt], 6)[0]] * 2
    assert out.usage.prompt_tokens == 2 * len(prompt)


def test_chat_uses_the_tokenizers_template(llm):
    server, model = llm
    messages = [{"role": "user", "content": "hello there"}]
    template = json.loads((decoder_dir("gpt2") / "tokenizer_config.json").read_text())["chat_template"]
    import jinja2

    rendered = jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    prompt = tokenizer(model).encode(rendered, add_special_tokens=False).ids
    out = client(server).chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].token_ids == reference_generate(model, [prompt], 8)[0]
    assert out.usage.prompt_tokens == len(prompt)


def test_streaming_gives_one_chunk_per_token(llm):
    server, model = llm
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    want = reference_generate(model, [ids], 12)[0]
    chunks = list(client(server).completions.create(model="gpt2", prompt=ids, max_tokens=12, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}))
    tokens = [c.choices[0].token_ids for c in chunks if c.choices and c.choices[0].token_ids]
    assert tokens == [[t] for t in want]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == len(want)
    chat = list(client(server).chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=5, temperature=0, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    assert sum(len(c.choices[0].token_ids) for c in chat if c.choices) == 5


def test_closing_the_stream_cancels_the_sequence_and_frees_its_kv(llm):
    server, _ = llm
    cancelled = series(server, "corepipe:request_success_total", model_name="gpt2", finished_reason="cancelled")
    stream = client(server).completions.create(model="gpt2", prompt=[1, 2, 3], max_tokens=200, temperature=0.8,
                                               seed=1, stream=True)
    got = 0
    for chunk in stream:
        got += len(chunk.choices[0].token_ids) if chunk.choices else 0
        if got >= 3:
            break
    assert rows_in_use(server) >= 1  # the sequence still holds its row in both stages
    stream.close()
    assert settle(server) == 0
    after = series(server, "corepipe:request_success_total", model_name="gpt2", finished_reason="cancelled")
    assert after == cancelled + 1


def test_curl_n_streams_server_sent_events(llm):
    server, model = llm
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    ids = [11, 12, 13]
    want = reference_generate(model, [ids], 6)[0]
    body = json.dumps({"model": "gpt2", "prompt": ids, "max_tokens": 6, "temperature": 0, "stream": True})
    out = subprocess.run([curl, "-sN", f"http://{server.http}/v1/completions", "-H", f"Authorization: Bearer {TOKEN}",
                          "-H", "Content-Type: application/json", "-d", body], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    events = [line[len("data: "):] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    tokens = [t for e in events[:-1] for t in json.loads(e)["choices"][0]["token_ids"]]
    assert tokens == want
    gen = subprocess.run([curl, "-sN", f"http://{server.http}/v2/models/gpt2/generate_stream", "-H",
                          f"Authorization: Bearer {TOKEN}", "-d", json.dumps(
                              {"input_ids": ids, "parameters": {"max_tokens": 6, "temperature": 0}})],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert [t for e in re.findall(r"^data: (.*)$", gen, re.M) for t in json.loads(e)["token_ids"]] == want


def test_kserve_generate(llm):
    server, model = llm
    text = "The pipeline"
    prompt = tokenizer(model).encode(text).ids
    status, _, data = post(server, "/v2/models/gpt2/generate",
                           json.dumps({"text_input": text, "parameters": {"max_tokens": 7, "temperature": 0}}))
    assert status == 200, data
    out = json.loads(data)
    assert out["model_name"] == "gpt2" and out["token_ids"] == reference_generate(model, [prompt], 7)[0]
    assert out["text_output"] == tokenizer(model).decode(out["token_ids"], skip_special_tokens=True)


def test_errors_in_openais_shape(llm):
    server, _ = llm
    c = client(server)
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "gpt2" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="gpt2", prompt=[1, 2], max_tokens=100000)
    assert "max_length" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="gpt2", prompt=[1, 2], max_tokens=2, temperature=-1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="wrong", max_retries=0).models.list()
    status, _, data = post(server, "/v1/chat/completions", json.dumps({"model": "gpt2", "messages": "hi"}))
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"


def test_a_full_store_queues_then_refuses_with_retry_after(llm):
    server, _ = llm
    body = json.dumps({"model": "gpt2", "prompt": [1, 2, 3], "max_tokens": 200, "temperature": 1.0, "stream": True})
    conns = []
    try:
        for _ in range(ROWS + QUEUE):  # every row taken, then the wait full
            conn = http.client.HTTPConnection(server.http, timeout=60)
            conn.request("POST", "/v1/completions", body=body, headers={**auth(), "Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conns.append(conn)
        status, headers, data = post(server, "/v1/completions", body)
        assert status == 429, data
        assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
        assert json.loads(data)["error"]["type"] == "rate_limit_error"
    finally:
        for conn in conns:
            conn.close()
    assert settle(server) == 0


def test_llm_metrics_under_vllms_names(llm):
    server, _ = llm
    client(server).completions.create(model="gpt2", prompt=[1, 2, 3, 4], max_tokens=5, temperature=0)
    for name in ("corepipe:time_to_first_token_seconds_count", "corepipe:inter_token_latency_seconds_count",
                 "corepipe:time_per_output_token_seconds_count", "corepipe:prompt_tokens_total",
                 "corepipe:generation_tokens_total"):
        assert series(server, name, model_name="gpt2") > 0, name
    text = get(server, "/metrics")[1].decode()
    for name in ("corepipe:num_requests_running", "corepipe:num_requests_waiting", "corepipe:kv_cache_usage_perc",
                 "corepipe_requests_in_flight"):
        assert name in text


def test_stop_strings_end_the_choice_before_them(llm):
    server, model = llm
    ids = [21, 22, 23, 24]
    full = tokenizer(model).decode(reference_generate(model, [ids], 16)[0], skip_special_tokens=True)
    stop = full[6:9]
    want = full[:full.find(stop)]
    c = client(server)
    out = c.completions.create(model="gpt2", prompt=ids, max_tokens=16, temperature=0, stop=[stop])
    assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="gpt2", prompt=ids, max_tokens=16, temperature=0, stop=stop, stream=True) if ch.choices)
    assert streamed == want
    assert settle(server) == 0


def test_infer_on_a_decoder_points_to_generate(llm):
    server, _ = llm
    body = json.dumps({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]})
    status, _, data = post(server, "/v2/models/gpt2/infer", body)
    assert status == 400 and b"/v1/completions" in data
    assert series(server, "corepipe_requests_total", model="gpt2", protocol="openai") > 0


def test_without_a_tokenizer_prompts_are_ids_and_text_is_ids(tmp_path):
    model = decoder_model_or_skip("gpt2")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(model, bare / "model.onnx")  # no tokenizer.json beside it: the artifact carries none
    art = corepipe.compile(bare / "model.onnx", tmp_path / "ids_only", num_cores=2, max_sequences=2).path
    server = Server.start(art)
    try:
        c = openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="-", max_retries=0, timeout=60)
        out = c.completions.create(model="ids_only", prompt=[7, 8, 9], max_tokens=5, temperature=0)
        assert out.choices[0].text == " ".join(str(t) for t in out.choices[0].token_ids)
        assert out.choices[0].token_ids == reference_generate(model, [[7, 8, 9]], 5)[0]
        with pytest.raises(openai.BadRequestError, match="no tokenizer"):
            c.completions.create(model="ids_only", prompt="text", max_tokens=2)
        with pytest.raises(openai.BadRequestError, match="cannot chat"):
            c.chat.completions.create(model="ids_only", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        assert server.stop() == 0
