"""Shared by benchmarks/mixed_lengths.py and benchmarks/dynamic_batching.py: the models (built in
code, random weights), the setups measured on the same requests with corepipe.bench's own
harness, rounds taken in turns, and the Markdown of a run.

Each benchmark has two steps: ``prepare`` (export and compile: CPU-heavy, run it under
/work/bin/cp-test) and ``measure`` (every setup, in rounds, on the artifacts prepared: run it
under /work/bin/cp-bench, which gives it the machine alone).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's corepipe
from corepipe.artifact.manifest import open_artifact
from corepipe.bench.result import BenchRow, ms

__all__ = ["export_bert", "resnet_with_batch_dim", "rounds", "markdown", "save_feeds", "load_feeds",
           "compiled", "stage_engines"]


def export_bert(directory: Path, seq: int = 128) -> tuple[Path, dict[str, np.ndarray]]:
    """BERT-base (transformers' default config, random weights, seed 0) exported by torch.onnx's
    legacy exporter at opset 17 with dynamic batch and sequence axes, as most published BERT
    files are (and as tests/corpus exports its small ones); and a request at ``seq`` tokens."""
    import torch

    from corepipe.frontends.transformers import build_transformers

    module, inputs = build_transformers("bert", seq=seq)
    names = list(inputs)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"}, pooler_output={0: "batch"})
    path = directory / "bert.onnx"
    with torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in inputs.values()), str(path), input_names=names,
                          output_names=["last_hidden_state", "pooler_output"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    return path, {k: np.asarray(v) for k, v in inputs.items()}


def resnet_with_batch_dim(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """corepipe's zoo ResNet-50 (random weights) with its batch axis symbolic (``batch``): every
    op of it (Conv, pools, Flatten(axis=1), Gemm) takes any batch; and its example request."""
    import onnx

    from corepipe import zoo

    model, feeds = zoo.get("resnet50")
    g = model.graph
    for vi in [*g.input, *g.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del g.value_info[:]
    path = directory / "resnet50_batch.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path, feeds


def compiled(cm: Any, seconds: float) -> dict[str, Any]:
    """What ``prepare`` records of one compile: its time, each stage's shape mode, the buckets."""
    buckets = cm.plan.shapes.buckets if cm.plan.shapes else {}
    return {"compile_s": seconds, "modes": [s.shape_mode for s in cm.stages],
            "buckets": {k: list(v) for k, v in buckets.items()}}


def stage_engines(art: Path) -> list[dict[str, Any]]:
    """Each stage's engine and precision, as a bench row shows them."""
    return [{"engine": s.engine, "precision": s.precision} for s in open_artifact(art).plan.stages]


def save_feeds(path: Path, feeds: Mapping[str, np.ndarray]) -> None:
    np.savez(path, **dict(feeds))  # type: ignore[arg-type]


def load_feeds(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def rounds(setups: Mapping[str, Callable[[], BenchRow]], count: int, log: Callable[[str], None] = print
           ) -> dict[str, list[BenchRow]]:
    """Every setup once per round, in the same order, ``count`` rounds: a noisy moment hits one
    round of each, not all of one. ``{setup: its rows}``."""
    out: dict[str, list[BenchRow]] = {name: [] for name in setups}
    for r in range(count):
        for name, measure in setups.items():
            row = measure()
            out[name].append(row)
            log(f"round {r + 1}: {name}: {row.req_per_s:.2f} req/s, p50 {ms(row.p50_s)} ms, p99 {ms(row.p99_s)} ms")
    return out


def _median_row(rows: Sequence[BenchRow]) -> BenchRow:
    return sorted(rows, key=lambda r: r.req_per_s)[len(rows) // 2]


def ratio(measured: Mapping[str, list[BenchRow]], a: str, b: str) -> tuple[float, list[float]]:
    """``a`` over ``b``: the median over rounds of each round's ratio, and the rounds'."""
    per = [x.req_per_s / y.req_per_s for x, y in zip(measured[a], measured[b])]
    return float(statistics.median(per)), per


def markdown(title: str, command: str, how: str, measured: Mapping[str, list[BenchRow]],
             targets: Sequence[tuple[str, str, str | Sequence[str], float]], notes: Sequence[str] = ()) -> str:
    """A RESULTS.md section: one row per setup (median round; p99 beside every figure), then
    each target ``(label, a, b or several bs (the best of them), goal)`` as a ratio to three
    decimals with every round's, and whether it is met."""
    lines = [f"### {title}", "", f"`{command}` under `/work/bin/cp-bench` ({how})", "",
             "| setup | precision | req/s (median round) | p50 ms | p99 ms | in flight | every round req/s |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, rows in measured.items():
        m = _median_row(rows)
        lines.append(f"| {name} | {m.precision} | {m.req_per_s:,.2f} | {ms(m.p50_s)} | {ms(m.p99_s)} | {m.in_flight} "
                     f"| {', '.join(f'{r.req_per_s:.2f}' for r in rows)} |")
    lines += ["", "| target | ratio (median of rounds) | rounds | goal | |", "|---|---:|---|---:|---|"]
    for label, a, b, goal in targets:
        if isinstance(b, str):
            value, per = ratio(measured, a, b)
        else:  # over the best of several setups, round by round
            per = [x.req_per_s / max(measured[o][i].req_per_s for o in b) for i, x in enumerate(measured[a])]
            value = float(statistics.median(per))
        lines.append(f"| {label} | **{value:.3f}** | {', '.join(f'{p:.3f}' for p in per)} | >= {goal:.2f} "
                     f"| {'met' if value >= goal else '**missed**'} |")
    lines += ["", *notes]
    return "\n".join(lines).rstrip() + "\n"


def dump(path: Path | None, measured: Mapping[str, list[BenchRow]], extra: Mapping[str, Any]) -> None:
    """Every row as JSON (for the record)."""
    if path is None:
        return
    data = {name: [r.__dict__ for r in rows] for name, rows in measured.items()}
    path.write_text(json.dumps({"rows": data, **extra}, indent=1, default=float))
