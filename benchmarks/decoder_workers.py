"""One peer of the decoder benchmark (`benchmarks/decoders.py`) in its own process and python:
``python decoder_workers.py PEER MODEL_DIR THREADS``, then one JSON request a line on stdin
(``{"prompts": [[ids], ...], "new": 64}``), one JSON result a line on stdout.

Peers (greedy, fp32, EOS ignored so every sequence makes ``new`` tokens):

- ``ort``: onnxruntime, whole model, a Python loop; all sequences as one batch tensor (prompts
  right-padded in one prefill, positions and mask per row, the past carried whole);
- ``ov``: the same loop on OpenVINO (the same ONNX, ``INFERENCE_PRECISION_HINT=f32``);
- ``ortgenai``: onnxruntime-genai 0.18 on the same ONNX with a hand-written genai_config.json
  (batch_size = the number of prompts, prompts right-padded with the pad id);
- ``ovgenai``: openvino-genai 2026.4 ``LLMPipeline`` on optimum-intel's fp32 export of the same
  weights (MODEL_DIR/openvino), all prompts in one ``generate`` call;
- ``corepipe-tuned``: ``corepipe.load(MODEL_DIR)`` where MODEL_DIR is an artifact `corepipe tune`
  wrote (its deployment), one thread per sequence (`benchmarks/tune_decoder.py`).

A result: ``ttft`` (s, per sequence), ``itl`` (s, the inter-token gaps), ``wall`` (s, the first
call to the last token), ``tokens`` (new tokens made), ``out`` (the new tokens of each sequence),
``rss`` and ``maxrss`` (bytes, this process now and at its peak), ``cpu`` (CPU seconds of the
run, this process and its children: on a shared machine, the cost the wall clock hides).
Only the ``corepipe`` peer imports corepipe (the others run in the peers' venvs).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _cpu() -> float:
    """CPU seconds of this process and its children (corepipe's stage workers), all threads."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for c in me.children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class Loop:
    """The whole-model batched greedy loop, on onnxruntime or OpenVINO."""

    def __init__(self, engine: str, model: Path, threads: int) -> None:
        if engine == "ort":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            self.inputs = {i.name: i.shape for i in sess.get_inputs()}
            self.outputs = [o.name for o in sess.get_outputs()]
            self.run = lambda feeds: sess.run(self.outputs, feeds)
        else:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(str(model), "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
            self.inputs = {i.any_name: [d.get_length() if d.is_static else "?" for d in i.get_partial_shape()]
                           for i in compiled.inputs}
            self.outputs = [o.any_name for o in compiled.outputs]
            request = compiled.create_infer_request()

            def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                res = request.infer(feeds)
                return [res[o] for o in compiled.outputs]
            self.run = run
        self.pasts = [n for n in self.inputs if n.startswith("past")]
        self.presents = ["present" + n.removeprefix("past_key_values").removeprefix("past") for n in self.pasts]
        self.order = [self.outputs.index(p) for p in self.presents]

    def generate(self, prompts: list[list[int]], new: int) -> dict[str, Any]:
        b, lens = len(prompts), [len(p) for p in prompts]
        lmax = max(lens)
        ids = np.zeros((b, lmax), np.int64)
        mask = np.zeros((b, lmax), np.int64)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
            mask[i, :len(p)] = 1
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask,
                                        "position_ids": np.tile(np.arange(lmax), (b, 1))}
        for name in self.pasts:  # [b, h, 0, d] (optimum) or [2, b, h, 0, d] (legacy)
            shape = [d if isinstance(d, int) else -1 for d in self.inputs[name]]
            sym = [i for i, d in enumerate(shape) if d == -1]
            shape[sym[0]], shape[sym[1]] = b, 0
            feeds[name] = np.zeros(shape, np.float32)
        out: list[list[int]] = [[] for _ in range(b)]
        t0 = time.perf_counter()
        stamps = []
        last = np.array(lens) - 1
        for k in range(new):
            res = self.run(feeds)
            logits = res[self.outputs.index("logits")]
            toks = np.argmax(logits[np.arange(b), last if k == 0 else 0], -1)
            stamps.append(time.perf_counter())
            for i in range(b):
                out[i].append(int(toks[i]))
            if k == new - 1:
                break
            feeds["input_ids"] = toks[:, None].astype(np.int64)
            feeds["attention_mask"] = np.concatenate([feeds["attention_mask"], np.ones((b, 1), np.int64)], 1)
            feeds["position_ids"] = (np.array(lens) + k)[:, None].astype(np.int64)
            for name, j in zip(self.pasts, self.order, strict=True):
                feeds[name] = res[j]
        return {"ttft": [stamps[0] - t0] * b, "itl": np.diff(stamps).tolist(), "wall": stamps[-1] - t0,
                "tokens": b * new, "out": out}


class OrtGenai:
    """onnxruntime-genai 0.18 on the optimum ONNX export, through MODEL_DIR/ortgenai/."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir / "ortgenai"))

    def generate(self, prompts: list[list[int]], new: int) -> dict[str, Any]:
        og, b, lmax = self.og, len(prompts), max(len(p) for p in prompts)
        # pad id 0 (prompts never hold it), RIGHT-padded: with left padding 0.18's later steps
        # differ from the reference on this export (its first token is right, the rest are not)
        ids = np.zeros((b, lmax), np.int32)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
        params = og.GeneratorParams(self.model)
        params.set_search_options(batch_size=b, max_length=lmax + new, min_length=lmax + new, do_sample=False,
                                  past_present_share_buffer=False)
        t0 = time.perf_counter()
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        out: list[list[int]] = [[] for _ in range(b)]
        stamps = []
        while not gen.is_done() and len(stamps) < new:
            gen.generate_next_token()
            toks = gen.get_next_tokens()
            stamps.append(time.perf_counter())
            for i in range(b):
                out[i].append(int(toks[i]))
        return {"ttft": [stamps[0] - t0] * b, "itl": np.diff(stamps).tolist(), "wall": stamps[-1] - t0,
                "tokens": sum(len(o) for o in out), "out": out}


class OvGenai:
    """openvino-genai 2026.4 LLMPipeline on MODEL_DIR/openvino (optimum-intel's fp32 export)."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import openvino as ov
        import openvino_genai as g

        self.ov, self.g = ov, g
        self.pipe = g.LLMPipeline(str(model_dir / "openvino"), "CPU", INFERENCE_PRECISION_HINT="f32",
                                  INFERENCE_NUM_THREADS=threads)

    def generate(self, prompts: list[list[int]], new: int) -> dict[str, Any]:
        g, ov, b, lmax = self.g, self.ov, len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((b, lmax), np.int64)
        mask = np.zeros((b, lmax), np.int64)
        for i, p in enumerate(prompts):  # left-padded, as HF tokenizers pad for generation
            ids[i, lmax - len(p):] = p
            mask[i, lmax - len(p):] = 1
        config = g.GenerationConfig()
        config.max_new_tokens = new
        config.ignore_eos = True
        config.do_sample = False
        t0 = time.perf_counter()
        res = self.pipe.generate(g.TokenizedInputs(ov.Tensor(ids), ov.Tensor(mask)), config)
        wall = time.perf_counter() - t0
        m = res.perf_metrics
        raw = m.raw_metrics
        ttft = [x / 1e6 for x in raw.m_times_to_first_token] or [m.get_ttft().mean / 1e3]  # us; ms
        # m_durations are per token (a step's time / its batch): the gap each sequence sees is
        # between the steps' timestamps (ms)
        itl = (np.diff(list(raw.m_new_token_times)) / 1e3).tolist()
        out = [list(map(int, t)) for t in res.tokens]
        return {"ttft": ttft * (b if len(ttft) == 1 else 1), "itl": itl, "wall": wall,
                "tokens": sum(len(o) for o in out), "out": out,
                "ttft_metric_ms": m.get_ttft().mean, "tpot_metric_ms": m.get_tpot().mean}


class Corepipe:
    """corepipe's ``pipe.generate`` (this checkout's corepipe), one thread per sequence, on an
    artifact compiled from the same ONNX into ``stages`` stages of ``threads`` threads (local
    backend: one worker process per stage). RSS counts this process and its workers."""

    def __init__(self, model_dir: Path, threads: int, stages: int, engine: str = "auto") -> None:
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import corepipe

        deployment = corepipe.Deployment(replicas=1, threads_per_stage=threads, cores=stages * threads)

        self.tmp = tempfile.TemporaryDirectory(prefix="corepipe-decbench-")
        art = Path(self.tmp.name) / "art"
        # KV store rows for the 16 sequences the benchmark runs at most; 128 prompt + 64 new tokens
        corepipe.compile(str(model_dir / "model.onnx"), art, num_cores=stages, max_sequences=16, max_length=256,
                         deployment=deployment, engine=engine)
        self.pipe = corepipe.load(art, backend="local")
        if not hasattr(self.pipe, "generate"):
            self.pipe.close()
            raise RuntimeError("this tree's corepipe has no pipe.generate (issue 25's runtime not merged)")

    def generate(self, prompts: list[list[int]], new: int) -> dict[str, Any]:
        import threading

        b = len(prompts)
        out: list[list[int]] = [[] for _ in range(b)]
        stamps: list[list[float]] = [[] for _ in range(b)]
        errors: list[str] = []

        def one(i: int) -> None:
            try:
                for tok in self.pipe.generate(prompts[i], max_new_tokens=new, timeout=300):
                    stamps[i].append(time.perf_counter())
                    out[i].append(int(tok))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(b)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        return {"ttft": [s[0] - t0 for s in stamps], "itl": [g for s in stamps for g in np.diff(s).tolist()],
                "wall": max(s[-1] for s in stamps) - t0, "tokens": sum(len(o) for o in out), "out": out}

    def rss(self) -> int:
        import psutil

        me = psutil.Process()
        return me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))


class CorepipeTuned(Corepipe):
    """``corepipe.load(ART)`` with the deployment `corepipe tune` wrote into ART (the MODEL_DIR
    argument), then as `Corepipe`."""

    def __init__(self, art: Path) -> None:  # no compile: the artifact is tune's
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import corepipe

        self.pipe = corepipe.load(art, backend="local")


def make(peer: str, model_dir: Path, threads: int, stages: int) -> Any:
    if peer == "corepipe-tuned":  # MODEL_DIR is an artifact written by corepipe tune
        return CorepipeTuned(model_dir)
    if peer == "corepipe":  # S stages x 1 thread
        return Corepipe(model_dir, 1, stages)
    if peer == "corepipe-ov":  # as corepipe, every stage on OpenVINO (the choice before decode steps were timed)
        return Corepipe(model_dir, 1, stages, engine="openvino")
    if peer == "corepipe-1x2":  # 1 stage x 2 threads: what a latency plan may pick for 1 sequence
        return Corepipe(model_dir, 2, 1)
    if peer in ("ort", "ov"):
        return Loop(peer, model_dir / "model.onnx", threads)
    if peer == "ortgenai":
        return OrtGenai(model_dir, threads)
    if peer == "ovgenai":
        return OvGenai(model_dir, threads)
    raise SystemExit(f"unknown peer {peer!r}: expected ort, ov, ortgenai or ovgenai")


def main(peer: str, model_dir: str, threads: str, stages: str = "2") -> None:
    t0 = time.perf_counter()
    try:
        runner = make(peer, Path(model_dir), int(threads), int(stages))
    except Exception as e:  # the driver's rows for this peer say why
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0, "rss": _rss()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        cpu0 = _cpu()
        try:
            res = runner.generate(req["prompts"], req["new"])
        except Exception as e:  # one bad run is reported, the worker stays up
            res = {"error": f"{type(e).__name__}: {e}"}
        res["cpu"] = _cpu() - cpu0
        res["rss"] = runner.rss() if hasattr(runner, "rss") else _rss()
        res["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
