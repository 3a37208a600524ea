"""What `corepipe bench` measured: one row per setup, and the ratios, latency and memory
figures read off them (`BenchResult`). Running the setups is `corepipe.cli.bench`."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from ..artifact.sizes import plural
from ..runtime import Timeline


@dataclass
class BenchRow:
    name: str
    throughput: float  # requests per second
    latency_p50_s: float  # one request in flight
    rss_bytes: list[int] = field(default_factory=list)  # per process
    uss_bytes: list[int] = field(default_factory=list)
    handoff_s: float | None = None  # pipeline only: latency minus the stages' own run times
    boundary_s: list[float] = field(default_factory=list)  # ray: mean send-to-arrival per boundary


@dataclass
class BenchResult:
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

    def row(self, name: str) -> BenchRow:
        return next(r for r in self.rows if r.name == name)

    def find(self, prefix: str) -> BenchRow | None:
        """The row whose name starts with ``prefix`` (peers name their precision), if run."""
        return next((r for r in self.rows if r.name.startswith(prefix)), None)

    def memory_ratio(self) -> float | None:
        """Resident memory of all corepipe workers together over one OpenVINO THROUGHPUT process."""
        peer = self.find("openvino THROUGHPUT")
        if peer is None or not peer.rss_bytes:
            return None
        return sum(self.row("corepipe").rss_bytes) / sum(peer.rss_bytes)

    def ratios(self) -> dict[str, float]:
        pipe = self.row("corepipe").throughput
        one = self.row("ort 1 thread").throughput
        out = {
            "vs 1 thread": pipe / one,
            f"vs {self.cores} x 1 thread (ideal)": pipe / (self.cores * one),
            f"vs {threads_row(self.cores)[4:]}": pipe / self.row(threads_row(self.cores)).throughput,
            f"vs {parallel_row(self.cores)}": pipe / self.row(parallel_row(self.cores)).throughput,
        }
        for label, prefix in ((f"vs 1 session shared by {plural(self.cores, 'thread')}", "ort 1 session shared"),
                              ("vs openvino THROUGHPUT", "openvino THROUGHPUT"),
                              ("vs openvino LATENCY", "openvino LATENCY")):
            peer = self.find(prefix)
            if peer is not None:
                out[label] = pipe / peer.throughput
        if self.backend != "local":
            out[f"{self.backend} vs local backend"] = pipe / self.row("corepipe local").throughput
        return out

    def handoff_per_boundary_s(self) -> float | None:
        """Hand-off cost alone: one-in-flight latency minus the stages' run times, over the
        N + 1 hand-offs (client -> stage 0 -> ... -> client)."""
        h = self.row("corepipe").handoff_s
        return None if h is None else h / (len(self.stages) + 1)

    def added_latency_per_boundary_s(self) -> float:
        boundaries = max(1, len(self.stages) - 1)
        return (self.row("corepipe").latency_p50_s - self.row("ort 1 thread").latency_p50_s) / boundaries

    def latency_text(self) -> str:
        """What the pipeline adds to latency, in words; the difference to the 1-thread
        onnxruntime session only where the stages run onnxruntime fp32 too."""
        handoff = f"{(self.handoff_per_boundary_s() or 0) * 1e3:.2f} ms"
        if all(s.get("engine", "onnxruntime") == "onnxruntime" and s.get("precision", "fp32") == "fp32"
               for s in self.stages):
            return (f"Latency added per stage boundary (one request in flight, pipeline vs one 1-thread "
                    f"session): {self.added_latency_per_boundary_s() * 1e3:.2f} ms; hand-off alone (latency "
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
        text = f"Pipeline bound (1 / slowest stage on one core, {max(measured) * 1e3:.1f} ms): {bound:.2f} req/s"
        peer = self.find("openvino THROUGHPUT")
        if peer is not None:
            text += f" = {bound / peer.throughput:.2f} x openvino THROUGHPUT"
        return text + f"; reached {self.row('corepipe').throughput / bound:.0%} of it"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(dataclasses.replace(self, timeline=None))
        del d["timeline"]
        d["ratios"] = self.ratios()
        d["added_latency_per_boundary_s"] = self.added_latency_per_boundary_s()
        d["handoff_per_boundary_s"] = self.handoff_per_boundary_s()
        d["memory_ratio_vs_openvino_throughput"] = self.memory_ratio()
        d["pipeline_bound"] = self.bound_text()
        return d


def threads_row(k: int) -> str:
    """Name of the one-session, K-thread baseline (distinct from the 1-thread one when K is 1)."""
    return f"ort {k} threads" if k > 1 else "ort K=1 thread"


def parallel_row(k: int) -> str:
    """Name of the K-sessions-in-parallel baseline."""
    return f"{k} sessions in parallel" if k > 1 else "K=1 session"
