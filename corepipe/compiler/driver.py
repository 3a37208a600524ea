"""`compile`: model in, artifact directory out. Orchestrates graph -> cost -> solver -> files."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..artifact.deployment import Deployment
from ..artifact.dims import ShapeProfile, Shapes
from ..artifact.manifest import open_artifact
from ..artifact.plan import Plan, StagePlan, TensorSpec
from ..artifact.sizes import format_bytes, plural
from ..artifact.target import Target, resolve_target
from ..errors import ArtifactError, CompileError, DoesNotFitError
from .cut import solver
from .cut.assemble import check_engines, engine_notes, make_plan, write_stages
from .cut.choose import Choice, candidates, check_request, resolve_precision
from .cut.cost import estimate_node_seconds
from .cut.fit import check_cuts, not_fit, resolve_cores
from .cut.partition import links_for, make_problem
from .front.flags import parse_compiler_args
from .front.sources import float16_precision, model_source
from .model.graph import analyze
from .shaping.dynamic import analyze_dynamic, batch_dim
from .shaping.shapemodes import ShapeOptions, check_bounds

if TYPE_CHECKING:
    from ..runtime import Pipeline

__all__ = ["compile", "CompiledModel", "parse_compiler_args", "Progress", "BALANCES", "FRONT_END"]

#: How stages are balanced: analytic estimate, timed one core at a time, or timed all at once.
BALANCES = ("estimate", "measure", "load")

#: Prefix of the plan notes a front-end adds (casts it made, the precision an fp16 source chose).
FRONT_END = "front-end: "
#: ``progress(step, done, total)``: called as long steps advance (the CLI draws a bar).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CompiledModel:
    """What `compile` decided, as plain data, and where it was written.

    >>> cm = corepipe.compile("model.onnx", "out/", num_cores=2)   # doctest: +SKIP
    >>> cm.num_cores, cm.stages[0].resident_bytes, cm.path         # doctest: +SKIP
    """

    path: Path
    plan: Plan

    @property
    def num_cores(self) -> int:
        return self.plan.num_cores

    @property
    def stages(self) -> tuple[StagePlan, ...]:
        return self.plan.stages

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.plan.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.plan.outputs

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CompiledModel:
        """Read and verify an artifact directory written by `compile`."""
        return cls(Path(path), open_artifact(path).plan)

    def load(self, backend: str = "local", **kwargs: Any) -> Pipeline:
        """Start a pipeline on this artifact; see `corepipe.load`."""
        from ..runtime import load

        return load(self.path, backend=backend, **kwargs)


def compile(
    model: str | os.PathLike[str] | onnx.ModelProto | Any,
    output_dir: str | os.PathLike[str],
    *,
    example_inputs: Mapping[str, Any] | Sequence[Any] | Any | None = None,
    num_cores: int | str = "auto",
    core_memory: int | str | None = None,
    target: str | Target = "cpu",
    compiler_args: Sequence[str] | None = None,
    balance: str = "estimate",
    cuts: Sequence[int] | None = None,
    engine: str = "auto",
    precision: str | None = None,
    progress: Progress | None = None,
    deployment: Deployment | None = None,
    load_rounds: int = 4,
    load_seconds: float = 3.0,
    output_names: Sequence[str] | None = None,
    export_path: str | os.PathLike[str] | None = None,
    dynamic_dims: Mapping[str, tuple[int, int]] | None = None,
    buckets: str | Mapping[str, Sequence[int]] | None = "auto",
    pad_values: Mapping[str, float] | None = None,
    shape_profile: ShapeProfile | str | None = None,
    state: str | Mapping[str, str] | None = "auto",
    max_sequences: int | None = None,
    max_length: int | None = None,
) -> CompiledModel:
    """Cut ``model`` into pipeline stages, one per core, and write the artifact directory.

    Args:
        model: path to an ``.onnx`` file (external-data weights beside it are fine), a
            ``ModelProto`` (copied, never modified), a TensorFlow SavedModel directory
            (its ``serving_default`` signature, converted by tf2onnx; see
            `corepipe.frontends.tensorflow`) or its `corepipe.frontends.Conversion`, or a
            ``torch.nn.Module`` (exported by torch.onnx from ``example_inputs``; see
            `corepipe.frontends.torchmodule`).
        output_dir: artifact directory to write; an existing artifact there is replaced.
        example_inputs: name -> array; fixes symbolic dims (like Neuron's ``model_feed_dict``)
            and is used when a tensor's shape can only be learnt by running the model. For a
            SavedModel, feed names as in tensorflow-neuron (``'input_1:0'``); for a torch
            module, ``(x, ...)`` positional or ``{"name": x}`` (tensors or arrays).
        num_cores: stage count, or ``"auto"``: the smallest count whose stages each fit
            ``core_memory``, then balanced within that count.
        core_memory: resident-weight capacity of one core (bytes or "64MiB"); default from target.
        target: ``"cpu"`` (this host), ``"inf1"`` (4 cores per device, 16 devices) or a `Target`.
        compiler_args: Neuron-style flags, e.g. ``["--static-weights", "--num-neuroncores", "4"]``;
            ``--auto-cast``, ``--auto-cast-type`` and ``--fp32-cast`` set the precision
            (`corepipe.compiler.front.flags`).
        balance: ``"estimate"`` (analytic cost), ``"measure"`` (time stages on one core and
            move boundaries until the measured stages balance), or ``"load"`` (run the whole
            pipeline with every stage busy, in ``deployment``, measure each stage's busy time
            per request, move boundaries, repeat up to ``load_rounds`` times, keep the fastest
            cut; the plan records each stage's time under load as ``loaded_s``).
        cuts: explicit stage starts as node indices (``[0, c1, ...]`` or without the 0),
            in place of the solver: for experiments and for reproducing a cut by hand.
        engine: ``"auto"`` (default: per stage, the engine that runs it faster on one core of
            this machine: timed by ``"measure"`` and ``"load"``, probed and cached per machine
            by ``"estimate"``, see `corepipe.engines.speeds`), ``"onnxruntime"`` or
            ``"openvino"``. A stage ``"auto"`` cannot run on one engine falls back to the
            other; the plan's ``stages[i].fallback`` says why, ``stages[i].engine_why`` why
            each stage runs where it does.
        precision: ``"fp32"`` (default; exact), ``"bf16"`` (matmuls and convolutions in bf16
            with fp32 accumulation, on openvino), ``"fp16"`` (CPUs with fp16 math only) or
            ``"auto"`` (bf16 where this CPU has native bf16, else fp32). Default: what the
            Neuron flags in ``compiler_args`` say, else fp32 -- except for a SavedModel or
            torch module that computes in fp16 or is given fp16 examples: fp16 where this CPU
            has fp16 math, else ``"auto"`` (`corepipe.compiler.front.sources.float16_precision`).
        progress: optional ``progress(step, done, total)`` callback.
        deployment: replicas x threads per stage on ``deployment.cores`` cores, written into
            the artifact for `load` and `serve` to use by default (and what ``balance="load"``
            measures in). Default: none recorded; ``balance="load"`` then uses 1 x 1.
        load_rounds: cuts ``balance="load"`` measures at most (then the best two again).
        load_seconds: how long ``balance="load"`` streams requests through each cut.
        output_names: torch modules only: names for the outputs (default: the keys of a
            returned dict or ``ModelOutput``, such as ``last_hidden_state`` or ``logits``).
        export_path: keep the ONNX file exported from a torch module or converted from a
            SavedModel at this path (by default it is a temporary file, removed).
        dynamic_dims: symbolic dims (ONNX ``dim_param`` names) that requests may vary in,
            with their ``(min, max)``: ``{"sequence": (1, 128), "batch": (1, 8)}``. The others
            are fixed by ``example_inputs``. Slots and memory are sized for the max; the cut is
            the same for every shape. See `corepipe.compiler.shaping.dynamic`. A torch module takes
            torch.export's ``dynamic_shapes`` here (``{"x": {1: Dim("sequence", max=128)}}``);
            a SavedModel's free dims are named ``"batch"`` (axis 0) and ``"<input>:<axis>"``.
        buckets: with ``dynamic_dims``: ``"auto"`` (default: per stage, a bounded dynamic graph
            or static buckets, whichever measures faster, bucket sizes chosen for the profile),
            ``None`` (every stage dynamic) or ``{"sequence": [16, 32, 64, 128]}``. Requests are
            padded up to their bucket and outputs trimmed back (`corepipe.compiler.shaping.shapemodes`).
        pad_values: model input -> the value padding fills it with (default 0).
        shape_profile: the shapes traffic brings, to balance the cut and choose buckets for:
            a `corepipe.artifact.dims.ShapeProfile` or its text (``"sequence~24:128"``, a
            log-normal with median 24); default: the example inputs' shapes.
        state: a decoder's state pairs (its KV cache): ``"auto"`` (default: optimum's
            ``past_key_values.{i}.key/value`` -> ``present.{i}.key/value`` and the legacy
            ``past.{i}`` -> ``present.{i}``, found by name), ``{"present.0.key":
            "past_key_values.0.key", ...}`` (present -> past), or None (no pairs: the client
            carries the state). A model with pairs compiles into a decoder plan
            (`corepipe.compiler.decoder.decodeplan`): each pair and its layer in one stage, the
            hidden state alone crossing each boundary, every stage dynamic.
        max_sequences: a decoder's sequences in flight at once: the rows of each stage's KV
            store (default 16).
        max_length: a decoder's tokens per sequence, prompt and generated (default: the
            model's ``n_positions`` from the config.json beside it, at most 1024). Each stage's
            resident bytes include its KV store at ``max_sequences x max_length``. A decoder
            needs no ``example_inputs``: the compiler makes its own steps.

    Returns:
        A `CompiledModel` with the plan and the artifact path.

    Raises:
        CompileError: invalid model or options, missing example input, too many cores; a
            dynamic dim the model does not have (listing those it has); buckets whose padding
            changes an answer; an
            engine that is not installed or cannot run a stage (naming the node and op); a
            precision the engine or this CPU cannot run fast (naming what the CPU has); a
            directory that is not a SavedModel, or a front-end that cannot convert the model
            (with the framework's reason, or the extra to install); a ``state`` map naming what
            the model lacks, a cut through a state pair's layer (naming the pair).
        DoesNotFitError: some stage cannot fit ``core_memory`` (a decoder's: with its KV store,
            named); ``.min_cores`` says what would.

    Example:
        >>> cm = corepipe.compile("bert.onnx", "bert_compiled/", num_cores="auto",
        ...                       core_memory="64MiB", example_inputs=feeds)  # doctest: +SKIP
    """
    flags = parse_compiler_args(compiler_args or [])
    if "num_cores" in flags:
        if num_cores != "auto" and num_cores != flags["num_cores"]:
            raise CompileError(
                f"num_cores={num_cores!r} contradicts compiler_args, which ask for "
                f"{flags['num_cores']} cores; give the count once"
            )
        num_cores = flags["num_cores"]
    if balance not in BALANCES:
        raise CompileError(f"balance must be one of {list(BALANCES)}, got {balance!r}")
    resolved = resolve_precision(precision, flags.get("precision"))  # bad values fail before any work
    check_request(engine, resolved)
    tgt = resolve_target(target, core_memory)
    report = progress or (lambda step, done, total: None)
    with model_source(
        model, example_inputs, output_names=output_names, export_path=export_path, report=report,
        dynamic_dims=dynamic_dims,
    ) as src:
        notes = [f"{FRONT_END}{n}" for n in src.notes]
        wanted = float16_precision(src.float16, precision, flags.get("precision"), engine)
        if wanted != precision:
            resolved = resolve_precision(wanted)
            notes.append(f"{FRONT_END}fp16 {'model' if src.float16 == 'model' else 'example inputs'}: "
                         f"precision {wanted!r} ({resolved} on this CPU); pass precision= to choose another")
        from .decoder.decoding import detect_decoder

        dm = detect_decoder(src.model, state, max_sequences, max_length, src.dynamic_dims or dynamic_dims)
        if dm is not None:
            from .decoder.decodeplan import compile_decoder_model

            return CompiledModel(*compile_decoder_model(
                dm, output_dir, balance=balance, buckets=buckets, shape_profile=shape_profile, source=model,
                num_cores=num_cores, tgt=tgt, cuts=cuts, engine=engine, precision=resolved, notes=notes,
                report=report, deployment=deployment))
        shaping = ShapeOptions.make(src.dynamic_dims or dynamic_dims, buckets, pad_values, shape_profile)
        return _compile(src.model, output_dir, src.examples, num_cores=num_cores, tgt=tgt, balance=balance,
                        cuts=cuts, engine=engine, precision=resolved, notes=notes, report=report,
                        deployment=deployment, load_rounds=load_rounds, load_seconds=load_seconds,
                        shaping=shaping)


def _compile(
    model: str | os.PathLike[str] | onnx.ModelProto,
    output_dir: str | os.PathLike[str],
    example_inputs: Mapping[str, np.ndarray] | None,
    *,
    num_cores: int | str,
    tgt: Target,
    balance: str,
    cuts: Sequence[int] | None,
    engine: str,
    precision: str,
    notes: list[str],
    report: Progress,
    deployment: Deployment | None,
    load_rounds: int,
    load_seconds: float,
    shaping: ShapeOptions,
) -> CompiledModel:
    """`compile` once the model is ONNX and the options are checked."""
    report("analyse graph", 0, 1)
    dyn = None
    if shaping.dims is None:
        graph = analyze(model, example_inputs)
        compute = estimate_node_seconds(graph, tgt)
    else:
        dyn = analyze_dynamic(model, shaping.dims, example_inputs, shaping.profile, tgt)
        graph, compute, example_inputs = dyn.graph, dyn.compute, dyn.feeds.examples
    report("analyse graph", 1, 1)
    if cuts is not None:
        num_cores = len(check_cuts(cuts, graph.n)) - 1
    k = resolve_cores(num_cores, graph.n, tgt)
    problem = make_problem(graph, compute, tgt.core_memory)
    try:
        need = solver.min_stages(problem)
    except solver.Infeasible:
        raise not_fit(graph, problem, k, tgt) from None
    if k is None:
        k = need
        if tgt.name != "cpu" and k > tgt.total_cores:
            raise DoesNotFitError(
                f"model needs {plural(k, 'core')} of {format_bytes(tgt.core_memory)} but target "
                f"{tgt.name!r} has {tgt.total_cores}; raise core_memory", min_cores=k, capacity=tgt.core_memory,
                needed=problem_bytes(problem),
            )
    elif need > k:
        raise not_fit(graph, problem, k, tgt)
    report("partition", 0, 1)
    if cuts is not None:
        bounds = check_cuts(cuts, graph.n)
        allowed = problem.allowed()
        bad = [b for b in bounds[1:-1] if not allowed[b]]
        if bad:
            raise CompileError(
                f"cannot cut before node {bad[0]}: {graph.why_uncut(bad[0], bad[0])}; "
                "choose another cut"
            )
        sizes = [solver.stage_memory(problem, bounds[s], bounds[s + 1]) for s in range(k)]
        if max(sizes) > tgt.core_memory:
            raise not_fit(graph, problem, k, tgt, bounds)
    else:
        try:
            bounds = solver.solve(problem, k, links_for(tgt, k))
        except solver.Infeasible:
            places = int(sum(problem.allowed()[1:-1]))
            raise CompileError(
                f"cannot cut this graph into {plural(k, 'stage')}: only {plural(places, 'place')} "
                f"between its nodes may be cut ({graph.why_uncut(0, graph.n)}); use num_cores <= {places + 1}"
            ) from None
    if deployment is not None and deployment.cores_needed(k) > deployment.cores:
        raise CompileError(
            f"deployment {deployment.describe(k)} needs more than the {deployment.cores} cores it "
            "is made for; lower its replicas or threads_per_stage, or raise its cores"
        )
    measured = loaded = None
    if balance == "measure":
        from .cut.measure import measured_balance

        bounds, compute, choices = measured_balance(
            graph, problem, tgt, bounds, example_inputs, report,
            engines=candidates(engine), precision=precision, engine=engine)
        measured = [c.seconds[c.engine] for c in choices]
        problem = make_problem(graph, compute, tgt.core_memory)
    elif balance == "load":
        from .cut.loadbalance import balance_under_load
        from .cut.measure import example_feeds

        chosen: dict[tuple[int, ...], list[Choice]] = {}

        def write_cut(cut: list[int], costs: list[float], directory: Path) -> Path:
            chosen[tuple(cut)] = check_engines(graph, cut, example_inputs, engine, precision, report, reuse=False)
            # Over dynamic dims a trial cut runs every stage on its bounded dynamic graph (the
            # shape modes are chosen once, for the cut that wins).
            trial = make_plan(graph, make_problem(graph, costs, tgt.core_memory), tgt, cut, balance,
                              chosen[tuple(cut)], shapes=None if dyn is None else Shapes(
                                  dims=dyn.feeds.dims, batch=batch_dim(graph.inputs, graph.outputs)))
            write_stages(graph, trial, cut, directory)
            return directory

        lb = balance_under_load(graph, problem, tgt, bounds, example_feeds(graph, example_inputs), write_cut,
                                report, deployment=deployment, rounds=load_rounds, seconds=load_seconds)
        bounds, compute, loaded, choices = lb.bounds, lb.compute, lb.measurement.stage_busy_s, chosen[tuple(lb.bounds)]
        problem = make_problem(graph, compute, tgt.core_memory)
        m = lb.measurement
        notes.append(
            f"balanced under load: {plural(lb.rounds, 'cut')} measured; best {m.throughput:.4g} req/s, "
            f"p50 {m.latency_p50_s * 1e3:.4g} ms with {m.window} in flight")
        if deployment is not None:
            deployment = dataclasses.replace(deployment, throughput=m.throughput, latency_p50_s=m.latency_p50_s,
                                             latency_p99_s=m.latency_p99_s)
    elif cuts is None:  # the engine probe's times move the estimated cut once
        from .cut.probecut import probed_cut

        probed = probed_cut(graph, problem, tgt, bounds, example_inputs, engine, precision, report)
        bounds, choices = probed.bounds, probed.choices
        if probed.compute is not None:
            problem = make_problem(graph, probed.compute, tgt.core_memory)
        notes += [probed.note] if probed.note else []
    else:
        choices = check_engines(graph, bounds, example_inputs, engine, precision, report)
    report("partition", 1, 1)
    shaped = None
    if dyn is not None:
        choices = check_bounds(graph, bounds, dyn, choices, candidates(engine), precision)
        shaped = shaping.choose(graph, bounds, choices, dyn, precision, tgt, problem, report)
        notes += shaped.notes
    plan = make_plan(graph, problem, tgt, bounds, balance, choices, measured=measured, loaded=loaded,
                     deployment=deployment, notes=engine_notes(engine, precision, choices) + notes,
                     **(shaped.plan_fields() if shaped else {}))
    report("write stages", 0, k)
    try:
        final = write_stages(graph, plan, bounds, Path(output_dir), lambda s: report("write stages", s + 1, k))
    except ArtifactError as exc:  # e.g. the output directory holds someone else's files
        raise CompileError(str(exc)) from None
    return CompiledModel(Path(output_dir), final)


def problem_bytes(problem: solver.Problem) -> int:
    return int(sum(problem.weight_bytes))
