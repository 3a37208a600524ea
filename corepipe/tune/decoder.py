"""`corepipe.tune` for a decoder (a model with state pairs): candidate plans of R replicas x S
stages x T threads per stage, each compiled as a decoder plan and measured with
``pipe.generate`` under the objective's workload, against onnxruntime's whole-model loop in
the same run.

The workload is the objective's:

- ``latency``: one sequence at a time; the plan with the least p50 time between tokens wins
  (a sequence runs on one replica: R replicas of S x T cores answer it as one would, and hold R
  times the sequences; on a busy machine one core alone may beat two that wait for each other);
- ``throughput``: ``sequences`` (default 16) at once; the most tokens/s wins.

A point's ``req_per_s`` is then tokens/s, its ``p50_s``/``p99_s`` the times between tokens and
``ttft_s`` the p50 time to first token (`TuneResult.unit` is ``"token"``). The peer is one
onnxruntime session with K threads running all the workload's sequences as one batch tensor
(`corepipe.bench.generation`). The cost model of one-shot plans does not apply (a decoder's
step cost depends on the batch of sequences in it): with more candidates than
``max_candidates``, the ones the objective favours are kept (latency: more threads per stage,
fewer stages, then fewer replicas; throughput: more replicas and stages) and the rest listed as
not measured.

Options that count requests (``rate``/``p99``, ``lengths``, ``max_batch``, ``concurrency``,
``example_inputs``, ``dynamic_dims``) do not apply to decoders and are refused up front.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact.deployment import Deployment
from ..artifact.manifest import open_artifact
from ..bench.generation import GenFigures, Workload, measure_generate, measure_loop
from ..compiler.cut.loadbalance import CpuWatch
from ..compiler.driver import compile as compile_model
from ..errors import CorepipeError, DeploymentError
from ..runtime import load
from ..runtime.sequences.pipeline import vocab_size
from .choose import Point, choose
from .record import Board
from .result import TuneResult
from .space import Candidate, candidates

__all__ = ["DecoderSearch", "tune_decoder", "decoder_candidates", "decoder_layers", "refuse_request_options", "DEFAULT_SEQUENCES"]

#: Sequences at once under the throughput objective when not told (the issue's 16).
DEFAULT_SEQUENCES = 16


def refuse_request_options(given: dict[str, Any]) -> None:
    """Raise `DeploymentError` naming the options given that count requests, not tokens."""
    why = {
        "rate": "the capacity question (rate=, p99=) is asked in requests/s and a decoder's unit is the token",
        "lengths": "lengths= draws one-shot requests; a decoder's prompts are prompt_tokens= long",
        "max_batch": "each decoder stage batches the decode steps waiting for it (continuous batching)",
        "concurrency": "a decoder's clients are its sequences: pass sequences=",
        "example_inputs": "a decoder's requests are prompts of random token ids (prompt_tokens=)",
        "dynamic_dims": "a decoder plan's dims come from its state pairs and max_length=",
    }
    bad = [k for k, v in given.items() if v is not None and k in why]
    if bad:
        reasons = "; ".join(f"{k}=: {why[k]}" for k in bad)
        raise DeploymentError(
            f"this model is a decoder, whose plans tune measures in tokens with pipe.generate: "
            f"{', '.join(k + '=' for k in bad)} do{'es' if len(bad) == 1 else ''} not apply ({reasons}); possible: leave "
            f"{'it' if len(bad) == 1 else 'them'} out and choose the workload with objective=, sequences=, "
            "prompt_tokens=, new_tokens=", possible="leave them out; use sequences=, prompt_tokens=, new_tokens=")


def decoder_layers(pairs: Sequence[Any]) -> int:
    """Layers of a decoder: the distinct layer numbers in its pasts' names (else one per pair)."""
    found = {m.group(1) for p in pairs if (m := re.search(r"\.(\d+)(?:\.|$)", p.past))}
    return len(found) or len(pairs)


def decoder_candidates(k: int, layers: int, objective: str, keep: int) -> tuple[list[Candidate], list[Candidate]]:
    """(measured, not measured): the R x S x T = ``k`` plans with S <= ``layers``, ordered as the
    objective favours them (latency: more threads first, then fewer stages, then fewer replicas;
    throughput: more replicas and stages first), the first ``keep`` measured."""
    pool = candidates(k, max_stages=min(k, max(1, layers)))
    if objective == "latency":
        pool = sorted(pool, key=lambda c: (-c.threads, c.stages, c.replicas))
    else:
        pool = sorted(pool, key=lambda c: (c.threads, -c.replicas))
    return pool[:keep], pool[keep:]


@dataclass
class DecoderSearch:
    """One decoder tune run: the model at ``path`` on the cores ``use``, under ``workload``."""

    path: Path
    layers: int
    use: list[int]
    workload: Workload
    board: Board
    work: Path
    precision: str
    engine: str
    max_sequences: int | None
    max_length: int | None

    def __post_init__(self) -> None:
        self.artifacts: dict[str, tuple[Candidate, Path]] = {}
        self.reference: list[list[int]] | None = None  # the peer's first round: tokens to compare

    def peer(self) -> Point:
        """onnxruntime's whole-model loop, one session with K threads, the workload as one batch."""
        k = len(self.use)
        name = f"onnxruntime loop, {k} thread{'s' if k != 1 else ''}"
        self.board.say(f"peer: {name} ({self.workload.describe()})")
        watch = CpuWatch()
        fig = measure_loop(self.path, k, self.workload)
        if self.reference is None:
            self.reference = fig.outputs[:self.workload.sequences]
        return self._point(name, "peer", fig, watch, None, "whole model, one batch tensor")

    def compile_and_measure(self, i: int, c: Candidate) -> None:
        """Compile ``c`` as a decoder plan and measure it; a plan that fails to compile or run is
        recorded in ``board.failed`` and the others go on."""
        board = self.board
        board.say(f"{c.label}: compile")

        said: list[str] = []

        def sub(step: str, done: int, total: int) -> None:
            if step not in said:  # each compile step once, however many parts it has
                said.append(step)
                board.say(f"{c.label}: {step}")

        try:
            cm = compile_model(
                self.path, self.work / f"cand{i}", num_cores=c.stages, engine=self.engine, precision=self.precision,
                deployment=Deployment(replicas=c.replicas, threads_per_stage=c.threads, cores=len(self.use)),
                max_sequences=self.max_sequences, max_length=self.max_length, progress=sub)
        except CorepipeError as exc:
            board.failed.append((c.label, str(exc)))
            return
        spec = cm.plan.decoder
        assert spec is not None
        need = self.workload.prompt_tokens + self.workload.new_tokens
        if need > spec.max_length:
            raise DeploymentError(
                f"the workload needs {need} tokens per sequence (prompt_tokens {self.workload.prompt_tokens} + "
                f"new_tokens {self.workload.new_tokens}) but the plan holds max_length {spec.max_length}; "
                f"possible: fewer tokens, or max_length={need}", possible=f"max_length={need}")
        self.artifacts[c.label] = (c, cm.path)
        self.measure(c, cm.path)

    def measure(self, c: Candidate, art: Path) -> None:
        self.board.say(f"{c.label}: generate ({self.workload.describe()})")
        try:
            plan = open_artifact(art).plan
            assert plan.decoder is not None
            with load(art, replicas=c.replicas, threads_per_stage=c.threads, cores=self.use) as pipe:
                watch = CpuWatch()
                fig = measure_generate(pipe, self.workload, vocab_size(plan, plan.decoder) or 2)
        except CorepipeError as exc:
            self.board.failed.append((c.label, f"generate failed: {exc}"))
            self.artifacts.pop(c.label, None)
            return
        note = ""
        if self.reference is not None:
            same = fig.outputs[:len(self.reference)] == self.reference
            note = "tokens = the loop's" if same else "tokens differ from the loop's"
        self.board.add(self._point(c.label, "candidate", fig, watch, c, note))

    def measure_again(self) -> None:
        for c, art in list(self.artifacts.values()):
            self.measure(c, art)

    def _point(self, name: str, kind: str, fig: GenFigures, watch: CpuWatch, c: Candidate | None, note: str) -> Point:
        ttft = fig.pct("ttft", 50)
        return Point(name, kind, fig.tokens_per_s, fig.pct("itl", 50), fig.pct("itl", 99), candidate=c,
                     note="; ".join(x for x in (f"TTFT p50 {ttft * 1e3:.4g} ms", note) if x),
                     foreign_cpu=watch.foreign_share(), precision="fp32" if c is None else self.precision,
                     ttft_s=ttft)


def tune_decoder(search: DecoderSearch, *, model: str, objective: str, latency_budget: float | None, tie: float,
                 repeats: int, peers: bool, max_candidates: int, out: str | os.PathLike[str], host: str
                 ) -> TuneResult:
    """Measure the peer and every kept candidate (``repeats`` times, in turn), and choose."""
    board, k = search.board, len(search.use)
    kept, dropped = decoder_candidates(k, search.layers, objective, max_candidates)
    for c in dropped:
        board.failed.append((c.label, f"not measured: over max_candidates={max_candidates}"))
    board.total = repeats * (int(peers) + len(kept))
    for r in range(repeats):  # in the same order each time: a noisy moment hits one run, not all
        if peers:
            board.add(search.peer())
        if r == 0:
            for i, c in enumerate(kept):
                search.compile_and_measure(i, c)
        else:
            search.measure_again()
    points = list(board.best.values())
    if not any(p.kind == "candidate" for p in points):
        raise DeploymentError("no decoder plan could be compiled and run: " + "; ".join(
            f"{name}: {why}" for name, why in board.failed))
    chosen = choose(points, objective, latency_budget, tie=tie)
    return TuneResult(model=model, cores=k, objective=objective, latency_budget_s=latency_budget, points=points,
                      pruned=[], chosen=chosen, path=Path(out), host=host, seconds=0.0, failed=board.failed,
                      repeats=repeats, tie=tie, precision=search.precision, unit="token",
                      workload=search.workload.describe())
