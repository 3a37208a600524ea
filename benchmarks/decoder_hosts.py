"""A decoder larger than one host across namespace hosts (issue 26 part 5): `pipe.generate` on
the ``ray`` backend, its 2 stages on 2 hosts whose memory budgets each hold one stage, against
the same plan with both stages on one host (budget not reserved), alternating in one run.

Per setup: tokens/s of 8 concurrent sequences (prompts 32, 32 new, greedy); the mean hand-off
of the stage-0 -> stage-1 boundary per step message (`stats().boundaries[1]`, send to arrival),
the message's mean bytes and their wire time at the cap. The rig: host 0 the head and driver (no
CPU), host 1 two CPUs (the one-host setup), hosts 2-3 one CPU; every link capped (``--gbit``).
Needs root. Tokens are checked equal between the setups and `reference_generate`.

    flock /tmp/corepipe-bench.lock python benchmarks/decoder_hosts.py --gbit 10 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))  # the rig (tests/hosts.py) and the corpus (tests/decoders.py)


def _run(pipe: Any, batch: list[list[int]], new: int) -> tuple[list[list[int]], float]:
    out: list[list[int]] = [[] for _ in batch]

    def one(i: int) -> None:
        out[i] = list(pipe.generate(batch[i], max_new_tokens=new, timeout=300))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.perf_counter() - start


def measure(path: Path, batch: list[list[int]], new: int, **options: Any) -> dict[str, Any]:
    import corepipe

    with corepipe.load(path, backend="ray", start_timeout=120, **options) as pipe:
        _run(pipe, batch[:2], 4)  # warm
        before = pipe.stats().boundaries[1]
        steps0 = pipe.sequences()["steps"]
        tokens, wall = _run(pipe, batch, new)
        after = pipe.stats().boundaries[1]
        steps = pipe.sequences()["steps"] - steps0
        ips = [w["ip"] for w in pipe.placement()]
    hops = after.handoffs - before.handoffs
    hop_s = (after.mean_s * after.handoffs - before.mean_s * before.handoffs) / max(hops, 1)
    return {"tokens": tokens, "tok_s": sum(map(len, tokens)) / wall, "hop_ms": hop_s * 1e3, "steps": steps,
            "hosts": len(set(ips))}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2", help="corpus name (tests/decoders.py): gpt2 or gpt2-bench")
    ap.add_argument("--gbit", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--new", type=int, default=32)
    args = ap.parse_args(argv)
    from decoders import decoder_model, prompts, reference_generate
    from hosts import Hosts

    import corepipe

    model = decoder_model(args.model)
    tmp = tempfile.mkdtemp(prefix="corepipe-dechosts-")
    cm = corepipe.compile(model, Path(tmp) / "a", num_cores=2, max_sequences=max(8, args.sequences),
                          max_length=32 + args.new)
    sizes = [s.resident_bytes for s in cm.plan.stages]
    budget = int(max(sizes) * 1.25)
    assert sum(sizes) > budget
    width = cm.plan.boundaries[1][0].shape[-1]
    batch = prompts(1000 if args.model == "gpt2" else 8192, args.sequences, [32], seed=1)
    want = reference_generate(model, batch, args.new)
    setups = {"one host": {"stage_resources": [{"cp_h1": 0.5}, {"cp_h1": 0.5}], "reserve_memory": False},
              "2 hosts": {}}
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    with Hosts(4, cpus=[0, 2, 1, 1], memory=[None, budget, budget, budget], gbit=args.gbit) as h, h.driver():
        time.sleep(2)
        for _ in range(args.rounds):
            for name, options in setups.items():
                r = measure(cm.path, batch, args.new, **options)
                assert r["tokens"] == want, f"{name}: tokens differ from one onnxruntime session"
                got[name].append(r)
                print(name, {k: v for k, v in r.items() if k != "tokens"}, flush=True)
    row_bytes = width * 4 + 8 * 8  # hidden state of one token + its header words
    msg_bytes = (sum(map(len, batch)) + len(batch) * args.new) * row_bytes / statistics.mean(
        r["steps"] for r in got["2 hosts"])
    wire_ms = msg_bytes * 8 / (args.gbit * 1e9) * 1e3
    print(f"\nmodel {args.model}: stages {sizes} bytes resident, host budget {budget}; width {width}")
    print("| setup | hosts | tok/s per round | hop ms per step message (stage 0 -> 1) |")
    print("|---|---:|---|---|")
    for name, rs in got.items():
        rates = ", ".join(f"{r['tok_s']:.1f}" for r in rs)
        hops = ", ".join(f"{r['hop_ms']:.3f}" for r in rs)
        print(f"| {name} | {rs[0]['hosts']} | {rates} | {hops} |")
    ratio = [b["tok_s"] / a["tok_s"] for a, b in zip(got["one host"], got["2 hosts"])]
    extra = [b["hop_ms"] - a["hop_ms"] for a, b in zip(got["one host"], got["2 hosts"])]
    print(f"\n2 hosts / one host tok/s per round: {', '.join(f'{x:.2f}' for x in ratio)}")
    print(f"mean message {msg_bytes:.0f} B: wire time {wire_ms * 1e3:.2f} us at {args.gbit:g} Gbit/s; "
          f"cross-host hop minus same-host hop per round: {', '.join(f'{x:.3f} ms' for x in extra)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
