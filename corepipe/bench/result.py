"""What `corepipe.bench` measured: one `BenchRow` per setup, the `Ratio` of the pipeline's
throughput over each other setup's, and the texts read off them (`BenchResult`).

A ratio between two setups that ran at different precisions (the pipeline at bf16, onnxruntime
at fp32) is never shown bare: a `Ratio` carries both precisions and prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..artifact.sizes import format_bytes, plural
from ..runtime import Timeline

__all__ = ["BenchRow", "BenchResult", "Ratio", "ideal_key", "ms", "num"]


def num(x: float) -> str:
    """Three significant figures without exponents: 64,770 / 8.21 / 0.0155."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.2g}"


def ms(seconds: float) -> str:
    """Milliseconds with three significant figures and no exponent: 41.3, 2.05, 0.0123."""
    return num(seconds * 1e3)


@dataclass(frozen=True)
class BenchRow:
    """One setup, measured.

    Attributes:
        setup: what ran (``"ort 1 thread"``, ``"openvino THROUGHPUT (2 streams)"``, ``"corepipe"``).
        kind: ``"peer"`` or ``"corepipe"``.
        engine: ``"onnxruntime"``, ``"openvino"``, or the pipeline's stages' (``"openvino"``,
            ``"onnxruntime+openvino"``).
        precision: the precision it computed at (``"fp32"``, ``"bf16"``; mixed stages:
            ``"bf16+fp32"``).
        req_per_s: throughput, requests per second.
        p50_s, p99_s: latency per request with ``in_flight`` requests in flight.
        in_flight: requests in flight while the latency was taken (1: a request alone).
        rate_in_flight: pipeline only: the most requests in flight while ``req_per_s`` was
            measured (the pipeline kept full), where that differs from ``in_flight``.
        process_rss, process_uss: resident and unique memory of each process of the setup.
        handoff_s: pipeline only: one-in-flight latency minus the stages' own run times.
        boundary_s: pipeline only (ray): mean send-to-arrival time per boundary.
        mean_batch: pipeline only, with dynamic batching: requests per merged pipeline request
            over the throughput run (None without batching).
        requests_digest: `corepipe.bench.reqfile.requests_digest` of the requests the setup was
            given (the peers' and the pipeline's are equal when they ran the same requests).
    """

    setup: str
    kind: str
    engine: str
    precision: str
    req_per_s: float
    p50_s: float
    p99_s: float
    in_flight: int = 1
    process_rss: tuple[int, ...] = ()
    process_uss: tuple[int, ...] = ()
    handoff_s: float | None = None
    boundary_s: tuple[float, ...] = ()
    mean_batch: float | None = None
    requests_digest: str = ""
    rate_in_flight: int | None = None

    @property
    def rss_bytes(self) -> int:
        """Resident memory of all the setup's processes together."""
        return sum(self.process_rss)


@dataclass(frozen=True)
class Ratio:
    """The pipeline's requests per second over one other setup's (``float(r)`` is the value).

    ``str(r)`` reads ``"0.83x"``, or ``"1.61x (bf16 over fp32)"`` when the two ran at different
    precisions: such a ratio measures the precision as much as the pipeline.
    """

    over: str
    value: float
    precision: str
    over_precision: str

    @property
    def across_precisions(self) -> bool:
        return self.precision != self.over_precision

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:.2f}x" + (f" ({self.precision} over {self.over_precision})"
                                       if self.across_precisions else "")


def ideal_key(cores: int) -> str:
    """The ratio over K ideal copies of the 1-thread session."""
    return f"{cores} x ort 1 thread (ideal)"


@dataclass
class BenchResult:
    """Every setup one `corepipe.bench` run measured, on the same inputs and cores.

    Attributes:
        rows: the peers in the order measured, then ``"corepipe"`` (and ``"corepipe local"``
            when another backend was measured against the local one).
        stages: the pipeline's stages as compiled (nodes, bytes, engine, precision, times).
        precision, engine: asked of the compiler (``precision`` resolved: ``"auto"`` -> what ran).
    """

    model: str
    cores: int
    requests: int
    weight_bytes: int
    rows: list[BenchRow]
    stages: list[dict[str, Any]]
    compile_s: float
    host: str
    precision: str = "fp32"
    engine: str = "auto"
    #: The pipeline's requests of the throughput measurement (fill included), for a Gantt chart.
    timeline: Timeline | None = field(default=None, repr=False)
    stage_cores: list[str] = field(default_factory=list)  # the cores each stage ran on
    backend: str = "local"  # the "corepipe" row's; another adds a "corepipe local" row
    traffic: str = ""  # mixed traffic in words (lengths drawn, batching, clients); "" for one request

    def row(self, setup: str) -> BenchRow:
        """The row named ``setup``.

        Raises:
            KeyError: no such row (the message lists the rows).
        """
        for r in self.rows:
            if r.setup == setup:
                return r
        raise KeyError(f"no row {setup!r}; the rows are {[r.setup for r in self.rows]}")

    def find(self, prefix: str) -> BenchRow | None:
        """The row whose setup starts with ``prefix`` (peers name their K), if it ran."""
        return next((r for r in self.rows if r.setup.startswith(prefix)), None)

    @property
    def pipeline(self) -> BenchRow:
        """The corepipe pipeline's row (on ``backend``)."""
        return self.row("corepipe")

    @property
    def ratios(self) -> dict[str, Ratio]:
        """The pipeline's throughput over every other row's (keyed by its setup), and over K
        ideal copies of the 1-thread session (`ideal_key`). Each `Ratio` says when the two
        ran at different precisions."""
        pipe = self.pipeline
        out: dict[str, Ratio] = {}
        for r in self.rows:
            if r is not pipe:
                out[r.setup] = Ratio(r.setup, pipe.req_per_s / r.req_per_s, pipe.precision, r.precision)
            if r.setup == "ort 1 thread":
                key = ideal_key(self.cores)
                out[key] = Ratio(key, pipe.req_per_s / (self.cores * r.req_per_s), pipe.precision, r.precision)
        return out

    def memory_ratio(self) -> float | None:
        """Resident memory of all corepipe workers together over one OpenVINO THROUGHPUT process."""
        peer = self.find("openvino THROUGHPUT")
        if peer is None or not peer.rss_bytes:
            return None
        return self.pipeline.rss_bytes / peer.rss_bytes

    def handoff_per_boundary_s(self) -> float | None:
        """Hand-off cost alone: one-in-flight latency minus the stages' run times, over the
        N + 1 hand-offs (client -> stage 0 -> ... -> client)."""
        h = self.pipeline.handoff_s
        return None if h is None else h / (len(self.stages) + 1)

    def added_latency_per_boundary_s(self) -> float | None:
        """One-in-flight p50 of the pipeline minus the 1-thread session's, per stage boundary
        (``None`` without that peer)."""
        one = self.find("ort 1 thread")
        if one is None:
            return None
        return (self.pipeline.p50_s - one.p50_s) / max(1, len(self.stages) - 1)

    def latency_text(self) -> str:
        """What the pipeline adds to latency, in words; the difference to the 1-thread
        onnxruntime session only where the stages run onnxruntime fp32 too."""
        handoff = f"{ms(self.handoff_per_boundary_s() or 0)} ms"
        added = self.added_latency_per_boundary_s()
        if added is not None and all(s.get("engine", "onnxruntime") == "onnxruntime"
                                     and s.get("precision", "fp32") == "fp32" for s in self.stages):
            return (f"Latency added per stage boundary (one request in flight, pipeline vs one 1-thread "
                    f"session): {ms(added)} ms; hand-off alone (latency "
                    f"minus the stages' run times, per hand-off incl. client in/out): {handoff}")
        return (f"Hand-off alone (one request in flight: latency minus the stages' run times, per hand-off "
                f"incl. client in/out): {handoff} (the stages run another engine or precision than the "
                "1-thread onnxruntime session, so the latency difference to it is not the pipeline's cost)")

    def bound_text(self) -> str | None:
        """The pipeline's own bound, 1 / slowest stage measured on one core, against the
        strongest peer and against what the pipeline reached."""
        measured = [s["measured_s"] for s in self.stages if s.get("measured_s")]
        if len(measured) != len(self.stages):
            return None
        bound = 1.0 / max(measured)
        text = f"Pipeline bound (1 / slowest stage measured alone on one core, {ms(max(measured))} ms): " \
               f"{num(bound)} req/s"
        peer = self.find("openvino THROUGHPUT")
        if peer is not None:
            text += f" = {bound / peer.req_per_s:.2f} x openvino THROUGHPUT"
        return text + f"; reached {self.pipeline.req_per_s / bound:.0%} of it"

    def memory_text(self) -> str:
        mem = self.memory_ratio()
        return (f"Resident memory: corepipe workers {' + '.join(format_bytes(x) for x in self.pipeline.process_rss)} "
                f"RSS for {format_bytes(self.weight_bytes)} of weights"
                + (f"; {mem:.2f}x one OpenVINO THROUGHPUT process" if mem is not None else ""))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every field but the timeline, every row with its ``rss_bytes``,
        the ratios (value and precisions) and the texts."""
        d: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "timeline"}
        for row, out in zip(self.rows, d["rows"]):
            out["rss_bytes"] = row.rss_bytes
        d["ratios"] = {k: {"value": r.value, "precision": r.precision, "over_precision": r.over_precision}
                       for k, r in self.ratios.items()}
        d["added_latency_per_boundary_s"] = self.added_latency_per_boundary_s()
        d["handoff_per_boundary_s"] = self.handoff_per_boundary_s()
        d["memory_ratio_vs_openvino_throughput"] = self.memory_ratio()
        d["pipeline_bound"] = self.bound_text()
        return d

    def to_markdown(self, command: str | None = None) -> str:
        """The result as a Markdown section (for benchmarks/RESULTS.md); ``command``: what
        produced it, quoted under the heading."""
        return "\n".join(_markdown(self, command)) + "\n"


def _mib(values: Sequence[int]) -> str:
    return " + ".join(f"{x / 2**20:.0f}" for x in values)


def _markdown(result: BenchResult, command: str | None) -> list[str]:
    ref = result.find("ort 1 thread")
    how = (f"{result.host}; {plural(result.requests, 'request')}; weights {format_bytes(result.weight_bytes)}; "
           f"compile {result.compile_s:.1f} s; engine {result.engine}, precision {result.precision}")
    lines = [
        f"### {result.model}, {result.cores} cores, {result.precision}", "",
        (f"`{command}` ({how})" if command else f"({how})"), "",
        *([f"Traffic: {result.traffic}.", ""] if result.traffic else []),
        "| setup | precision | req/s | x ort 1 thread (fp32) | p50 ms | p99 ms | in flight | RSS MiB per process "
        "| USS MiB per process |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in result.rows:
        lines.append(f"| {row.setup} | {row.precision} | {row.req_per_s:,.2f} | "
                     f"{'-' if ref is None else f'{row.req_per_s / ref.req_per_s:.2f}'} | "
                     f"{ms(row.p50_s)} | {ms(row.p99_s)} | {row.in_flight} | {_mib(row.process_rss)} | "
                     f"{_mib(row.process_uss)} |")
    lines += ["", f"Ratios (corepipe {result.pipeline.precision} throughput over each setup): " + ", ".join(
        f"{k} **{r}**" for k, r in result.ratios.items()), ""]
    mem = result.memory_ratio()
    peer = result.find("openvino THROUGHPUT")
    if mem is not None and peer is not None:
        lines += [f"Resident memory of all corepipe workers together over one OpenVINO THROUGHPUT process: "
                  f"**{mem:.2f}x** ({_mib([result.pipeline.rss_bytes])} MiB vs {_mib([peer.rss_bytes])} MiB RSS)", ""]
    bound = result.bound_text()
    if bound is not None:
        lines += [bound, ""]
    lines.append(result.latency_text())
    if result.pipeline.boundary_s:
        lines.append(f"{result.backend} hand-off per boundary (send to arrival, one request in flight; "
                     "client in, stage to stage, out to client): "
                     + ", ".join(f"{ms(x)} ms" for x in result.pipeline.boundary_s))
    lines.append("Stages: " + "; ".join(
        f"stage {s['index']}: {s['nodes']} nodes, {format_bytes(s['resident_bytes'])}, "
        f"{s.get('engine', 'onnxruntime')} {s.get('precision', 'fp32')}"
        + (f", measured {ms(s['measured_s'])} ms" if s.get("measured_s") else "")
        + (f", under load {ms(s['loaded_s'])} ms" if s.get("loaded_s") else "")
        + (" (fallback)" if s.get("fallback") else "")
        for s in result.stages))
    return lines
