"""`corepipe.tune`: measure candidate (replicas, stages, threads) plans under real load against the
peers, choose one by objective, and write it as an artifact with its deployment.

Steps: analyse the model (cost model per stage count); measure the peers with bench's own
harness (same inputs, same run); predict every candidate of the `SearchSpace` and prune;
compile each kept candidate (balanced under load in its own deployment when it has stages to
balance) and measure it with one request per stage worker in flight; choose; answer the
capacity question when asked; then write the chosen artifact, ``tune.png`` and ``tune.json``
into the output directory in one atomic step, so a failure or Ctrl-C anywhere before leaves it
untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil

from ..artifact.deployment import OBJECTIVES, Deployment
from ..artifact.dims import ShapeProfile
from ..artifact.writer import check_output_dir
from ..bench.generation import Workload
from ..bench.mixed import batch_sizes, plan_mixed
from ..bench.mixedrun import base_request
from ..bench.traffic import ModelSource, Traffic, resolve_model
from ..compiler.cut.choose import check_request, resolve_precision
from ..compiler.cut.estimate import estimate_model
from ..compiler.decoder.decoding import detect_decoder
from ..compiler.driver import BALANCES
from ..compiler.driver import compile as compile_model
from ..errors import CorepipeError, DeploymentError
from ..runtime.placement import resolve_cores
from .capacity import answer, parse_duration
from .choose import Point, choose
from .decoder import DEFAULT_SEQUENCES, DecoderSearch, decoder_layers, refuse_request_options, tune_decoder
from .measure import Peers, measure_candidate, watched
from .record import Board, TuneProgress, write_tuned
from .result import TuneResult
from .space import Candidate, CostModel, SearchSpace, select, slowest_shares

__all__ = ["tune", "TuneProgress"]


def tune(
    model: ModelSource,
    out: str | os.PathLike[str],
    *,
    num_cores: int | None = None,
    objective: str = "throughput",
    latency_budget: float | str | None = None,
    precision: str | None = None,
    engine: str = "auto",
    rate: float | None = None,
    p99: float | str | None = None,
    repeats: int = 1,
    progress: TuneProgress | None = None,
    on_point: Callable[[Point], None] | None = None,
    peers: bool = True,
    seconds: float = 3.0,
    balance: str = "load",
    load_rounds: int = 3,
    max_candidates: int = 6,
    max_cores: int = 1024,
    tie: float = 0.03,
    example_inputs: Mapping[str, np.ndarray] | None = None,
    lengths: str | os.PathLike[str] | ShapeProfile | None = None,
    max_batch: int | None = None,
    batch_delay: float | str = "500us",
    concurrency: int | None = None,
    dynamic_dims: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    sequences: int | None = None,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
    max_length: int | None = None,
) -> TuneResult:
    """Measure plans of R replicas x S stages x T threads per stage (R x S x T = K cores) under
    load, against the peers, and write the best as an artifact with its deployment.

    >>> result = corepipe.tune("zoo:mlp", "mlp_tuned/", num_cores=2, seconds=0.5)   # doctest: +SKIP
    >>> result.chosen.replicas, result.chosen.stages, result.chosen.threads          # doctest: +SKIP
    >>> [(p.name, p.req_per_s) for p in result.pareto]                               # doctest: +SKIP

    Args:
        model: an ``.onnx`` path, ``"zoo:NAME"`` or a ModelProto.
        out: the artifact directory to write (new, empty, or an artifact to replace).
        num_cores: K (default: every core this process may run on).
        objective: ``"throughput"`` (most req/s) or ``"latency"`` (least p50 under load).
        latency_budget: only plans whose measured p99 is within it are chosen: seconds, or a
            duration such as ``"150ms"``.
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"``: every candidate
            is compiled at it and the OpenVINO peers run at it (see `corepipe.compile`).
        engine: the candidates' compile engine (``"auto"``: per stage).
        rate, p99: the capacity question, in req/s and seconds (or ``"100ms"``): the cores and replicas of a
            measured plan that hold ``rate`` within a p99 latency of ``p99`` (at most ``max_cores``).
        repeats: measure every point this many times, in turn, keeping each one's best run
            (interference from other work on the machine only ever slows a run).
        progress: called with ``(message, done, total)`` as the search advances.
        on_point: called with each `Point` as it is measured (a live table).
        peers: measure the peers in the same run: onnxruntime 1 and K threads, K sessions, one
            session shared by K threads, OpenVINO THROUGHPUT and LATENCY.
        seconds: how long each measurement streams requests (longer: steadier figures).
        balance: how candidates with several stages are cut: ``"load"`` (default: under the
            load they are measured at), ``"measure"`` or ``"estimate"``.
        load_rounds: the cuts ``balance="load"`` tries per candidate (as `corepipe.compile`).
        max_candidates: candidates measured (the cost model prunes the rest).
        tie: figures within this fraction of the best on the objective count as equal; the
            better one on the other axis is chosen among them (`corepipe.tune.choose`).
        example_inputs: the request to send (default: the built-in model's, else random).
        lengths: mixed traffic, as `corepipe.bench`'s: every candidate is compiled with those
            dims free (buckets chosen for the traffic) and measured on requests drawn with
            ``seed``; the peers get the same requests.
        max_batch: also measure every plan with dynamic batching at 2, 4, ... ``max_batch``
            (the same artifact, no new compile), with a closed loop of ``concurrency``
            clients (default 2 x ``max_batch``); the chosen batch size is in the result and
            the plan's notes (load or serve it with that ``max_batch``).
        batch_delay: how long a merged batch waits for more (`corepipe.load`'s).
        concurrency: clients in a closed loop for every measurement of a candidate.
        dynamic_dims: the range each dim is compiled for (default: the lengths' own, and the
            batch up to ``max_batch``).
        sequences, prompt_tokens, new_tokens, max_length: a decoder's workload and bound (only for
            a model with state pairs, see below): ``sequences`` at once under the throughput
            objective (default 16; the latency objective runs one), prompts of ``prompt_tokens``
            random ids, ``new_tokens`` generated each (greedy); ``max_length`` as `corepipe.compile`.

    A decoder (a model with state pairs, `corepipe.compile`'s ``state``) is tuned in tokens
    (`corepipe.tune.decoder`): each candidate compiled as a decoder plan and run with
    ``pipe.generate`` under the objective's workload, against onnxruntime's whole-model loop
    with K threads; the result's ``unit`` is ``"token"`` (``req_per_s`` is tokens/s, ``p50_s``
    the p50 time between tokens, ``ttft_s`` the time to first token). ``rate``/``p99``,
    ``lengths``, ``max_batch``, ``concurrency``, ``example_inputs`` and ``dynamic_dims`` count
    requests and are refused for a decoder; ``balance`` and ``load_rounds`` do not apply.

    Returns:
        A `TuneResult`: ``.chosen``, ``.points``, ``.peers``, ``.pareto``, ``.capacity``,
        ``.path``; the artifact, ``tune.png`` and ``tune.json`` are in ``out``.

    Raises:
        DeploymentError: K over the cores available, no plan within the latency budget, a
            rate no core count up to ``max_cores`` holds, or an option that does not apply to
            the model (a decoder's request options, or a one-shot model's decoder workload).
            Nothing is written then.
        CompileError, ArtifactError: as `corepipe.compile`; ``out`` holds foreign files.
        CorepipeError: no matplotlib (``tune.png`` is part of what it writes).
    """
    started = time.perf_counter()
    latency_budget, p99 = _seconds(latency_budget), _seconds(p99)
    if objective not in OBJECTIVES:
        raise DeploymentError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if (rate is None) != (p99 is None):
        raise DeploymentError("the capacity question needs both a rate and a p99 latency: pass rate= and p99=")
    if balance not in BALANCES:
        raise CorepipeError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    asked = {"rate": rate, "lengths": lengths, "max_batch": max_batch, "concurrency": concurrency,
             "example_inputs": example_inputs, "dynamic_dims": dynamic_dims or None}  # what a decoder refuses
    if concurrency is None and max_batch is not None:
        concurrency = 2 * max_batch
    traffic = Traffic(inputs=example_inputs, seconds=seconds, concurrency=concurrency, seed=seed)
    use = resolve_cores(num_cores)
    prec = resolve_precision(precision)
    check_request(engine, prec)
    check_output_dir(out)  # before minutes of measuring, not after
    if importlib.util.find_spec("matplotlib") is None:  # tune.png is part of the artifact it writes
        raise CorepipeError("tune draws tune.png with matplotlib: pip install 'corepipe[plot]'")
    board = Board(progress, on_point)
    decoder_options = {"sequences": sequences, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                       "max_length": max_length}
    with tempfile.TemporaryDirectory(prefix="corepipe-tune-") as tmp:
        work = Path(tmp)
        board.say("analyse the model")
        path, zoo_feeds = resolve_model(model, work)
        dm = detect_decoder(path, "auto", None, None, None)
        if dm is not None:
            refuse_request_options(asked)
            if not (sequences is None or sequences >= 1) or prompt_tokens < 1 or new_tokens < 2:
                raise DeploymentError(f"a decoder's workload needs sequences >= 1, prompt_tokens >= 1 and new_tokens "
                                      f">= 2 (a time between tokens), got {sequences}, {prompt_tokens}, {new_tokens}")
            n = 1 if objective == "latency" else (sequences or DEFAULT_SEQUENCES)
            search = DecoderSearch(path, decoder_layers(dm.pairs), use, Workload(n, prompt_tokens, new_tokens, seconds, seed),
                                   board, work, prec, engine, sequences or (None if objective == "latency" else n),
                                   max_length)
            result = tune_decoder(search, model=_name(model), objective=objective, latency_budget=latency_budget,
                                  tie=tie, repeats=repeats, peers=peers, max_candidates=max_candidates, out=out,
                                  host=_host())
            board.say("write the artifact")
            result.seconds = time.perf_counter() - started
            write_tuned(result, search.artifacts[result.chosen.name][1],
                        (f"tuned for {result.objective} in tokens: {result.workload}",))
            return result
        if any(v is not None for k, v in decoder_options.items() if k in ("sequences", "max_length")) \
                or (prompt_tokens, new_tokens) != (32, 64):
            raise DeploymentError("sequences=, prompt_tokens=, new_tokens= and max_length= describe a decoder's "
                                  "workload, and this model has no state pairs (it is tuned in requests): leave them "
                                  "out, or pass example_inputs=/lengths=/concurrency= for its requests")
        m = _prepare(path, zoo_feeds, work, traffic, len(use), lengths, max_batch, dynamic_dims)
        harness = Peers(m.path, m.feeds, use, m.traffic, prec, work, ov_batches=m.ov_batches, ranges=m.ranges)
        peer_runs = harness.measurers() if peers else []
        board.total = repeats * (len(peer_runs) + min(max_candidates, len(m.pool)))
        _measure_peers(board, peer_runs)
        costs = _cost_model(m, harness, board.best, len(use))
        chosen_c, pruned_c = select(m.pool, costs, objective=objective, keep=max_candidates)
        board.total = repeats * (len(peer_runs) + len(chosen_c) * len(m.space.batches))
        plans = _Plans(m, work, use, costs, board, prec=prec, engine=engine, balance=balance,
                       load_rounds=load_rounds, seconds=seconds, batch_delay=batch_delay, repeats=repeats)
        for i, c in enumerate(chosen_c):
            plans.compile_and_measure(i, c)
        for _ in range(repeats - 1):  # again, in the same order: a noisy moment hits one run, not all
            _measure_peers(board, peer_runs, " (again)")
            plans.measure_again()
        result = _choose(board, model, len(use), objective, latency_budget, tie, repeats, prec, out,
                         pruned=[(c, costs.predict(c)) for c in pruned_c if costs.fits(c)],
                         question=None if rate is None or p99 is None else (rate, p99, max_cores))
        board.say("write the artifact")
        result.seconds = time.perf_counter() - started
        write_tuned(result, plans.artifacts[result.chosen.name][1])
    return result


@dataclasses.dataclass
class _Model:
    """The model as the search sees it: its file, the request (or mixed requests) every
    measurement sends, the candidates the cost model starts from, and the options every
    candidate is compiled with over dynamic dims."""

    path: Path
    inputs: Mapping[str, np.ndarray] | None
    feeds: Any
    traffic: Traffic
    space: SearchSpace
    est: Any
    pool: list[Candidate]
    shaping: dict[str, Any]
    ov_batches: list[int]
    ranges: Callable[[int], dict[str, Any]] | None


def _prepare(path: Path, zoo_feeds: Any, work: Path, traffic: Traffic, k: int, lengths: Any, max_batch: int | None,
             dynamic_dims: Mapping[str, tuple[int, int]] | None) -> _Model:
    """Resolve and analyse the model, and the requests of mixed traffic where there is some.

    Raises:
        DeploymentError: no plan of R x S x T = K cores exists for the model.
    """
    inputs = traffic.inputs or zoo_feeds
    mixed, base, ov_batches = None, None, [1]
    shaping: dict[str, Any] = {}
    if lengths is not None or max_batch is not None or dynamic_dims:
        graph = onnx.load(str(path), load_external_data=False)
        mixed = plan_mixed(graph, lengths, max_batch, dynamic_dims)
        traffic = dataclasses.replace(traffic, profile=mixed.profile)
        base = base_request(graph, mixed, inputs)
        one = {mixed.batch: 1} if mixed.batch else {}
        inputs = mixed.example(base, {**(mixed.profile.typical() if mixed.profile else {}), **one})
        shaping = {"dynamic_dims": mixed.dims, "shape_profile": mixed.profile}
        if max_batch is not None and mixed.profile is None:
            ov_batches = batch_sizes(max_batch)
    space = SearchSpace(k, batches=tuple(batch_sizes(max_batch)) if max_batch else (1,))
    est = estimate_model(path, set(space.stage_counts()), example_inputs=inputs)
    feeds: Any = traffic.feeds(list(est.inputs), zoo_feeds)
    ranges = None
    if mixed is not None and base is not None:
        feeds = mixed.requests(base, dataclasses.replace(traffic, requests=256))
        ranges = functools.partial(mixed.ov_ranges, base)
    pool = space.bounded(est.min_stages, est.max_stages).candidates()
    if not pool:
        raise DeploymentError(
            f"no plan of R x S x T = {k} cores exists for this model: it needs at least "
            f"{est.min_stages} stages and can be cut into at most {est.max_stages}")
    return _Model(path, inputs, feeds, traffic, space, est, pool, shaping, ov_batches, ranges)


def _measure_peers(board: Board, peer_runs: list[tuple[str, Callable[[], Point]]], again: str = "") -> None:
    """Each peer once, in order (the 1-thread session first: it sizes the others' runs)."""
    for what, measure in peer_runs:
        board.say(f"peer: {what}{again}")
        board.add(watched(measure))


def _cost_model(m: _Model, harness: Peers, measured: Mapping[str, Point], k: int) -> CostModel:
    """The cost model that prunes candidates, calibrated on the peers measured (where they were)."""
    one_s, kthreads_s = harness.calibrated(measured)
    return CostModel(one_core_s=one_s or m.est.one_core_s, cores=k, k_thread_s=kthreads_s,
                     slowest_share=slowest_shares(m.est.stage_seconds), weight_bytes=m.est.weight_bytes,
                     memory_bytes=int(psutil.virtual_memory().available * 0.8))


class _Plans:
    """The candidates: each compiled (balanced under load in its own deployment when it has
    stages to balance) and measured, with its batching variants on the same artifact."""

    def __init__(self, m: _Model, work: Path, use: list[int], costs: CostModel, board: Board, *, prec: str,
                 engine: str, balance: str, load_rounds: int, seconds: float, batch_delay: float | str,
                 repeats: int) -> None:
        self.m, self.work, self.use, self.costs, self.board = m, work, use, costs, board
        self.prec, self.engine, self.balance, self.load_rounds = prec, engine, balance, load_rounds
        self.seconds, self.batch_delay, self.repeats = seconds, batch_delay, repeats
        self.artifacts: dict[str, tuple[Candidate, Path]] = {}

    def _how(self, c: Candidate) -> str:
        return self.balance if c.stages > 1 else "estimate"

    def _measure(self, c: Candidate, art: Path) -> Point:
        return measure_candidate(c, art, self.m.feeds, self.use, self.m.traffic, self.costs, self._how(c),
                                 self.prec, self.board.say, batch_delay=self.batch_delay)

    def compile_and_measure(self, i: int, c: Candidate) -> None:
        """Compile candidate ``c`` and measure it and its batching variants; a candidate that
        fails to compile (a cut the graph does not allow) is recorded and the others go on."""
        board, how = self.board, self._how(c)
        board.say(f"{c.label}: compile ({how} balance)")

        def sub(step: str, done: int, total: int, label: str = c.label) -> None:
            if total <= 1 and done >= total:  # a one-part step's end reads as its start: say it once
                return
            board.say(f"{label}: {step}" + (f" {done}/{total}" if total > 1 and ": " not in step else ""))

        try:
            cm = compile_model(
                self.m.path, self.work / f"cand{i}", num_cores=c.stages, example_inputs=self.m.inputs,
                balance=how, engine=self.engine, precision=self.prec,
                deployment=Deployment(replicas=c.replicas, threads_per_stage=c.threads, cores=len(self.use)),
                load_rounds=self.load_rounds, load_seconds=self.seconds, progress=sub, **self.m.shaping)
        except CorepipeError as exc:
            board.failed.append((c.label, str(exc)))
            board.total -= self.repeats * len(self.m.space.batches)
            return
        for variant in self.m.space.batched(c):  # batching variants share the artifact
            self.artifacts[variant.label] = (variant, cm.path)
            board.add(self._measure(variant, cm.path))

    def measure_again(self) -> None:
        for c, art in self.artifacts.values():
            self.board.add(self._measure(c, art))


def _choose(board: Board, model: ModelSource, k: int, objective: str, latency_budget: float | None, tie: float,
            repeats: int, prec: str, out: str | os.PathLike[str], *, pruned: list[Any],
            question: tuple[float, float, int] | None) -> TuneResult:
    """The plan chosen among the points measured, and the capacity question's answer if asked."""
    points = list(board.best.values())
    chosen = choose(points, objective, latency_budget, tie=tie)
    capacity = None
    if question is not None:
        rate, p99, max_cores = question
        capacity = answer(points, rate, p99, measured_cores=k, max_cores=max_cores)
    return TuneResult(
        model=_name(model), cores=k, objective=objective, latency_budget_s=latency_budget, points=points,
        pruned=pruned, chosen=chosen, path=Path(out), host=_host(),
        seconds=0.0, capacity=capacity, failed=board.failed, repeats=repeats, tie=tie, precision=prec,
    )


def _seconds(value: float | str | None) -> float | None:
    if isinstance(value, str):
        return parse_duration(value)
    if value is not None and not value > 0:
        raise DeploymentError(f"a latency must be a positive number of seconds, got {value!r}")
    return value


def _host() -> str:
    return f"{os.uname().machine}, {len(resolve_cores(None))} cores"


def _name(model: ModelSource) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return "ModelProto"
