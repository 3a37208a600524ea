"""Short-heavy and uniform text traffic (issue 17's targets): BERT-base with its sequence dim free
against the padded static pipeline and OpenVINO THROUGHPUT on a dynamic-shape model, all at the
same precision, on the same requests.

BERT-base (random weights) as tests/corpus exports BERT: torch.onnx's legacy exporter, dynamic
batch and sequence axes. `prepare` compiles it for 2 cores three times: with ``sequence`` free
in 1..128 for each traffic (``buckets="auto"``, balanced and bucketed for that traffic's
profile), and static at 128 tokens. `measure` draws the requests (fixed seed; the same for every
setup) and measures, in rounds taken in turns:

- corepipe with the sequence free (each request at its own length, or padded to its bucket);
- corepipe's static pipeline at 128, every request padded to 128 (what users do today);
- OpenVINO THROUGHPUT (2 streams) on the exported model reshaped to batch 1, sequence 1..128,
  fed the same requests;
- with ``--ort``: 2 onnxruntime sessions in parallel (fp32: onnxruntime has no fast bf16).

    /work/bin/cp-test python benchmarks/mixed_lengths.py prepare /tmp/ml --precision bf16
    /work/bin/cp-bench python benchmarks/mixed_lengths.py measure /tmp/ml --traffic lognormal --markdown out.md
    /work/bin/cp-bench python benchmarks/mixed_lengths.py measure /tmp/ml --traffic uniform --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import traffic_support as ts

import corepipe
from corepipe.bench.mixed import plan_mixed
from corepipe.bench.peers import PeerSetup, measure_peer
from corepipe.bench.pipeline import measure_pipeline
from corepipe.bench.reqfile import write_requests
from corepipe.bench.traffic import Traffic

#: traffic -> (--lengths spec, its targets over the padded static pipeline and over OpenVINO)
TRAFFIC = {"lognormal": ("~24:128", 2.0, 1.0), "uniform": ("8:128", 1.3, None)}
RANGE = {"sequence": (1, 128)}


def prepare(out: Path, precision: str, balance: str, which: list[str]) -> None:
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    path, feeds = ts.export_bert(out)
    ts.save_feeds(out / "feeds.npz", feeds)
    graph = onnx.load(str(path), load_external_data=False)
    made: dict[str, Any] = {"precision": precision, "balance": balance}
    for name in which:
        mixed = plan_mixed(graph, TRAFFIC[name][0], None, dynamic_dims=RANGE)
        assert mixed.profile is not None
        t0 = time.perf_counter()
        cm = corepipe.compile(path, out / f"dyn_{name}", num_cores=2, example_inputs=mixed.example(
            feeds, mixed.profile.typical()), dynamic_dims=RANGE, shape_profile=mixed.profile, precision=precision,
            balance=balance)
        made[name] = ts.compiled(cm, time.perf_counter() - t0)
        print(name, made[name], flush=True)
    t0 = time.perf_counter()
    corepipe.compile(path, out / "static128", num_cores=2, example_inputs=feeds, precision=precision, balance=balance)
    made["static_compile_s"] = time.perf_counter() - t0
    (out / "prepared.json").write_text(json.dumps(made, indent=1))


def measure(out: Path, name: str, requests: int, count: int, ort: bool, markdown: Path | None) -> None:
    import onnx

    made = json.loads((out / "prepared.json").read_text())
    precision = made["precision"]
    path, feeds = out / "bert.onnx", ts.load_feeds(out / "feeds.npz")
    spec, over_static, over_ov = TRAFFIC[name]
    mixed = plan_mixed(onnx.load(str(path), load_external_data=False), spec, None, dynamic_dims=RANGE)
    traffic = Traffic(requests=requests, warmup=5, profile=mixed.profile, seed=0)
    reqs = mixed.requests(feeds, traffic)
    inputs = out / f"requests_{name}.npz"
    write_requests(inputs, reqs)
    cores = sorted(os.sched_getaffinity(0))[:2]
    dyn, static = out / f"dyn_{name}", out / "static128"
    info = made[name]
    me = f"corepipe, sequence free ({'/'.join(info['modes'])})"
    padded = "corepipe padded static (sequence 128)"
    ov = "openvino THROUGHPUT (2 streams), dynamic model"
    peer = PeerSetup(ov, "ov_throughput", "openvino", precision, 2, 2, "openvino THROUGHPUT")
    setups = {
        me: lambda: measure_pipeline(dyn, reqs, traffic, "local", {"cores": cores}, stages=ts.stage_engines(dyn), setup=me)[0],
        padded: lambda: measure_pipeline(static, mixed.padded(reqs), traffic, "local", {"cores": cores},
                                         stages=ts.stage_engines(static), setup=padded)[0],
        ov: lambda: measure_peer(peer, path, inputs, cores, requests, 5, ranges=mixed.ov_ranges(feeds)),
    }
    if ort:
        two = PeerSetup("2 onnxruntime sessions in parallel", "parallel", "onnxruntime", "fp32", 1, 1, "ort x2")
        setups[two.setup] = lambda: measure_peer(two, path, inputs, cores, requests, 2)
    measured = ts.rounds(setups, count)
    lengths = [int(r["input_ids"].shape[1]) for r in reqs]
    targets: list[tuple[str, str, Any, float]] = [(f"{me} over {padded}", me, padded, over_static)]
    if over_ov is not None:
        targets.append((f"{me} over {ov}", me, ov, over_ov))
    how = (f"2 cores; BERT-base, random weights, {precision}; {requests} requests, lengths {spec} drawn with seed 0 "
           f"(mean {sum(lengths) / len(lengths):.1f}, {min(lengths)}..{max(lengths)}); {count} rounds; corepipe "
           f"sequence 1..128, stages {info['modes']}, buckets {info['buckets'] or 'none'}; p50/p99: corepipe one "
           "request at a time, OpenVINO with 2 in flight")
    text = ts.markdown(f"BERT-base, {name} lengths {spec}, {precision}, 2 cores",
                       f"python benchmarks/mixed_lengths.py measure DIR --traffic {name} --requests {requests} "
                       f"--rounds {count}" + (" --ort" if ort else ""), how, measured, targets)
    print(text)
    if markdown is not None:
        with open(markdown, "a") as f:
            f.write(text + "\n")
    ts.dump(out / f"measured_{name}.json", measured, {"lengths": lengths, "prepared": made})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--balance", default="measure")
    p.add_argument("--traffic", default="lognormal,uniform")
    m = sub.add_parser("measure")
    m.add_argument("dir", type=Path)
    m.add_argument("--traffic", choices=sorted(TRAFFIC), default="lognormal")
    m.add_argument("--requests", type=int, default=200)
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--ort", action="store_true")
    m.add_argument("--markdown", type=Path)
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.dir, a.precision, a.balance, a.traffic.split(","))
    else:
        measure(a.dir, a.traffic, a.requests, a.rounds, a.ort, a.markdown)


if __name__ == "__main__":
    main()
