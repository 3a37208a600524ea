"""``corepipe compile``, ``corepipe inspect`` and ``corepipe run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.text import Text

from ..artifact.deployment import Deployment
from ..artifact.manifest import open_artifact
from ..compiler.cut.choose import ENGINE_CHOICES, PRECISION_CHOICES
from ..compiler.driver import BALANCES, parse_compiler_args
from ..compiler.driver import compile as compile_model
from ..frontends.tensorflow import convert_saved_model, is_saved_model
from . import report
from ._app import (
    app,
    backend_options,
    cli_errors,
    err,
    out,
    print_plan,
    print_run,
    start_pipeline,
    stream,
)
from ._inputs import (
    check_model,
    length_requests,
    load_model,
    load_npz,
    npz_requests,
    parse_input_shape,
    random_requests,
)
from .decoderopts import MaxLength, MaxSequences, State, decoder_kwargs
from .options import CoresAlias, NumCores, core_count, core_flag, usable_cores
from .pictures import check_plot, draw_timeline, plan_figure, save_picture, saved
from .report import plural
from .save import NpzWriter
from .shapeopts import Buckets, Dynamic, PadValues, Profile, model_summary, shape_kwargs

__all__ = ["compile_cmd", "inspect_cmd", "run_cmd"]


# ------------------------------------------------------------------------------------ compile
@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(
        help="Path to an .onnx file, a TensorFlow SavedModel directory (its serving_default "
        "signature, converted by tf2onnx), or zoo:NAME for a built-in model (zoo:resnet50, "
        "zoo:bert, zoo:mlp, ...).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Artifact directory to write (an existing artifact is replaced).",
        show_default=False)],
    num_cores: Annotated[str | None, typer.Option(
        "--num-cores", "-n", metavar="N",
        help="Stages (one per core), or auto: the fewest cores whose memory holds every stage "
        "(default: auto; alias: --cores, -k).", show_default=False,
    )] = None,
    cores: CoresAlias = None,
    core_memory: Annotated[str | None, typer.Option(
        "--core-memory", metavar="SIZE",
        help="Resident-weight capacity of one core, e.g. 64MiB (default: the target's).",
        show_default=False)] = None,
    target: Annotated[str, typer.Option(
        "--target", "-t", metavar="cpu|inf1|ray|ray:N",
        help="Hardware: cpu (this host), inf1 (16 devices x 4 cores), ray (one stage per Ray node; ray:N: at "
        "most N nodes, --core-memory a node's budget for weights).")] = "cpu",
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", metavar="NAME=SHAPE:DTYPE",
        help="Fix an input's symbolic dims, e.g. input_ids=1x128:int64 (repeatable; the "
        "values are ones; overrides --inputs). For a SavedModel, NAME is a signature input "
        "('input_1:0' style names work) and DTYPE defaults to the signature's.",
        show_default=False)] = None,
    signature: Annotated[str, typer.Option(
        "--signature", metavar="KEY", help="SavedModel only: the signature to compile.",
    )] = "serving_default",
    inputs_file: Annotated[Path | None, typer.Option(
        "--inputs", metavar="FILE.npz", help="Example input arrays, one per model input name.",
        show_default=False)] = None,
    balance: Annotated[str, typer.Option(
        "--balance", metavar="estimate|measure|load",
        help="Balance stages on the analytic cost estimate (the default here: no model runs, so it "
        "takes seconds), on stages timed one core at a time, or on the whole pipeline run under load "
        "(every stage busy; needs a core per stage). bench defaults to measure, tune to load.",
    )] = "estimate",
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png",
        help="Also draw the plan: one bar per stage for time, weights and hand-off (.png, .svg, "
        ".pdf; needs matplotlib).", show_default=False)] = None,
    compiler_args: Annotated[list[str] | None, typer.Option(
        "--compiler-arg", metavar="FLAG",
        help="Neuron-style flag, repeatable: --compiler-arg --static-weights "
        "--compiler-arg=--num-neuroncores=4 --compiler-arg=--auto-cast=matmult.", show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        "--engine", "-e", metavar="auto|onnxruntime|openvino",
        help="Engine per stage. auto: openvino wherever it computes the stage right (checked "
        "against onnxruntime), onnxruntime elsewhere; with --balance measure, the faster one.")] = "auto",
    precision: Annotated[str | None, typer.Option(
        "--precision", "-p", metavar="fp32|bf16|fp16|auto",
        help="fp32 (exact), bf16 (matmuls and convolutions in bf16, fp32 accumulation; needs "
        "avx512_bf16 or AMX), fp16 (CPUs with fp16 math), auto (bf16 where the CPU has it). "
        "Default: the --compiler-arg casting flags, else fp32.", show_default=False)] = None,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", min=1, metavar="R",
        help="Deployment to record (and to balance under, with --balance load): copies of the "
        "pipeline. `corepipe tune` chooses one by measurement.", show_default=False)] = None,
    threads_per_stage: Annotated[int | None, typer.Option(
        "--threads-per-stage", "-T", min=1, metavar="T", help="Deployment to record: cores per stage.",
        show_default=False)] = None,
    dynamic: Dynamic = None,
    buckets: Buckets = None,
    pad_values: PadValues = None,
    shape_profile: Profile = None,
    state: State = None,
    max_sequences: MaxSequences = None,
    max_length: MaxLength = None,
) -> None:
    """Compile MODEL into a pipeline artifact and print its stages.

    Examples:

    ```
    corepipe compile zoo:resnet50 -o resnet_compiled/ --num-cores 4
    corepipe compile zoo:bert -o bert_compiled/ --core-memory 128MiB
    corepipe compile zoo:bert -o bert16/ -n 2 --precision bf16 --balance measure
    corepipe compile model.onnx -o out/ --input x=1x3x224x224:float32
    corepipe compile model.onnx -o out/ --compiler-arg=--num-neuroncores=4
    corepipe compile model.onnx -o out/ --compiler-arg=--auto-cast=none
    corepipe compile zoo:resnet50 -o rn2/ --num-cores 2 --balance load
    corepipe compile rn50_savedmodel/ -o rn50/1 -i input_1:0=1x224x224x3:float16
    corepipe compile m.onnx -o d/ --dynamic sequence=1:128 --dynamic batch=1:8
    corepipe compile m.onnx -o b/ --dynamic sequence=1:128 --buckets sequence=64
    corepipe compile gpt2.onnx -o g/ -n 2 --max-sequences 8 --max-length 512
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        count, _ = core_count(num_cores, cores, auto=True)
        shaping = shape_kwargs(dynamic, buckets, pad_values, shape_profile) | decoder_kwargs(
            state, max_sequences, max_length)
        if plot is not None:
            check_plot(plot, "--plot")
        if balance not in BALANCES:
            raise typer.BadParameter(f"--balance must be one of {', '.join(BALANCES)}, got {balance!r}")
        deployment = None
        if replicas is not None or threads_per_stage is not None:
            if count is None:
                raise typer.BadParameter("--replicas and --threads-per-stage need --num-cores N (the stages)")
            r, t = replicas or 1, threads_per_stage or 1
            deployment = Deployment(replicas=r, threads_per_stage=t, cores=r * int(count) * t)
        if engine not in ENGINE_CHOICES:
            raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINE_CHOICES)}, got {engine!r}")
        if precision is not None and precision not in PRECISION_CHOICES:
            raise typer.BadParameter(
                f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
        flags = [f for arg in compiler_args or () for f in arg.split()]
        parse_compiler_args(flags)  # fail on a bad flag before any work
        check_model(model, saved_model=True)
        onnx_model, loaded = load_model(model)
        examples: dict[str, Any] = dict(loaded)
        if inputs_file is not None:
            examples.update(load_npz(inputs_file))
        savedmodel = is_saved_model(model)
        for text in inputs or ():
            name, shape, dtype = parse_input_shape(text)
            # A SavedModel input given no dtype takes its signature's: pass the shape alone.
            examples[name] = shape if savedmodel and dtype is None else np.ones(shape, np.dtype(dtype or "float32"))
        with report.compile_progress(err) as progress:
            if savedmodel:
                progress("convert TF", 0, 1)
                conv = convert_saved_model(model, examples, signature=signature,
                                           dynamic=list(shaping.get("dynamic_dims") or ()))
                progress("convert TF", 1, 1)
                for feed, name in conv.feed_names.items():
                    if feed != name:
                        err.print(Text(f"input {feed!r} feeds signature input {name!r}"))
            elif signature != "serving_default":
                raise typer.BadParameter(f"--signature applies to SavedModel directories; {model!r} is not one")
            cm = compile_model(
                conv if savedmodel else onnx_model, output,
                example_inputs=None if savedmodel else (examples or None),
                num_cores="auto" if count is None else count,
                core_memory=core_memory, target=target, compiler_args=flags, balance=balance,
                engine=engine, precision=precision, progress=progress, deployment=deployment, **shaping,
            )
        print_plan(cm.plan, cm.path, f"{model}: {plural(cm.num_cores, 'stage')}")
        if plot is not None:
            saved(save_picture(plan_figure(cm.plan, model), plot), "plan")


# ------------------------------------------------------------------------------------ inspect
@app.command("inspect")
def inspect_cmd(
    artifact: Annotated[Path, typer.Argument(
        help="Artifact directory written by `corepipe compile`, or an .onnx model (its inputs, "
        "outputs and symbolic dims, the names --dynamic takes).", show_default=False)],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the manifest's plan as JSON (stable, sorted keys) instead.")] = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE.png",
        help="Also draw the plan: one bar per stage for time, weights and hand-off, coloured by "
        "core (.png, .svg, .pdf; needs matplotlib).", show_default=False)] = None,
) -> None:
    """Verify an artifact (manifest, hashes, paths) and print its stages, with the engine and
    precision of each (and why a stage fell back to another engine).

    Examples:

    ```
    corepipe inspect resnet_compiled/
    corepipe inspect resnet_compiled/ --plot plan.png
    corepipe inspect resnet_compiled/ --json | jq '.stages[].resident_bytes'
    corepipe inspect out/ --json | jq '.stages[] | [.engine, .precision]'
    corepipe inspect bert.onnx
    ```
    """
    with cli_errors():
        if artifact.is_file():
            out.print(Text(model_summary(artifact)))
            return
        if plot is not None:
            check_plot(plot, "--plot")
        art = open_artifact(artifact)
        if plot is not None:
            saved(save_picture(plan_figure(art.plan, str(artifact)), plot), "plan")
        if as_json:
            typer.echo(json.dumps(art.plan.to_dict(), indent=2, sort_keys=True))
            return
        plan = art.plan
        sig = "; ".join(
            f"{kind} " + ", ".join(f"{t.name} {t.describe()}" for t in specs)
            for kind, specs in (("inputs", plan.inputs), ("outputs", plan.outputs))
        )
        out.print(Text(
            f"artifact {artifact}: corepipe {art.corepipe_version}, source sha256 "
            f"{art.source_sha256[:12]}, verified\n{sig}"
        ))
        print_plan(plan, artifact, plural(plan.num_cores, "stage"))


@app.command("run")
def run_cmd(
    artifact: Annotated[Path, typer.Argument(
        help="Artifact directory written by `corepipe compile`.", show_default=False)],
    requests: Annotated[int | None, typer.Option(
        "--requests", "-r", min=1, metavar="N",
        help="Requests to stream (default: 100, or the requests in --inputs).",
        show_default=False)] = None,
    inputs_file: Annotated[Path | None, typer.Option(
        "--inputs", metavar="FILE.npz",
        help="Real inputs: one array per input name, either one request or a stack [R, ...] "
        "of R requests (cycled).", show_default=False)] = None,
    save: Annotated[Path | None, typer.Option(
        "--save", metavar="FILE.npz",
        help="Keep the outputs: one stack [R, ...] per output name, streamed to disk (refused "
        "up front when the disk lacks the room). Without it, outputs are dropped as they come.",
        show_default=False)] = None,
    timeline: Annotated[Path | None, typer.Option(
        "--timeline", metavar="FILE.png",
        help="Draw when each request ran on each stage (a Gantt chart of the last 10,000 "
        "requests; .png, .svg, .pdf; needs matplotlib).", show_default=False)] = None,
    backend: Annotated[str, typer.Option(
        "--backend", "-b", metavar="local|inline|ray",
        help="local: one pinned process per stage; inline: all stages in this process; ray: one "
        "Ray actor per stage, on this machine or a cluster.")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", metavar="auto|ray://HOST:PORT",
        help="Ray cluster to run on (--backend ray): 'auto' joins the cluster of `ray start`; "
        "default: a private Ray instance on this machine.", show_default=False)] = None,
    placement: Annotated[str | None, typer.Option(
        "--placement", metavar="PACK|SPREAD|STRICT_SPREAD",
        help="How Ray places the stages on nodes (--backend ray; default PACK).",
        show_default=False)] = None,
    num_cores: NumCores = None,
    cores: CoresAlias = None,
    max_in_flight: Annotated[int | None, typer.Option(
        "--max-in-flight", min=1, metavar="N",
        help="Requests in the pipeline at once (default: the backend's).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the random inputs.")] = 0,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", metavar="LO:HI|~MEDIAN:CAP|V,V,...|FILE",
        help="Over dynamic dims: random requests at lengths drawn as `corepipe bench --lengths` draws them "
        "(--seed); without it every request is at the largest shapes.", show_default=False)] = None,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", min=1, metavar="R", help="Copies of the pipeline, each on its own cores (default: the "
        "artifact's deployment, else 1).", show_default=False)] = None,
    threads_per_stage: Annotated[int | None, typer.Option(
        "--threads-per-stage", "-T", min=1, metavar="T", help="Cores per stage (default: the artifact's "
        "deployment, else an even share).", show_default=False)] = None,
) -> None:
    """Stream requests through a compiled pipeline; print throughput, latency and stage stats.

    Without --inputs, requests are random and deterministic (--seed): floats N(0, 1), integers
    uniform in [0, 100) (valid token ids for embedding tables of at least 100 rows), bools 0/1.
    Memory stays flat whatever --requests is: outputs are dropped as they arrive unless --save
    keeps them. --num-cores N runs the workers on the first N cores this process may use
    (default: all; stages share cores when they outnumber them).

    The deployment (replicas x threads per stage) is the artifact's when `corepipe tune` wrote
    one; --replicas and --threads-per-stage override it.

    Examples:

    ```
    corepipe run resnet_compiled/ --requests 200
    corepipe run resnet_compiled/ --requests 200 --timeline timeline.png
    corepipe run bert_compiled/ --inputs tokens.npz --save outputs.npz
    corepipe run bert_compiled/ --backend ray --address auto
    corepipe run bert_tuned/ --replicas 1 --threads-per-stage 2
    corepipe run bert_dyn/ --lengths "~24:128" --requests 500
    ```
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        n_cores, _ = core_count(num_cores, cores, available=len(usable_cores()))
        if n_cores is not None and backend in ("inline", "ray"):
            raise typer.BadParameter(
                f"{core_flag(num_cores, cores)} picks the cores of the local backend's workers; the "
                f"{backend} backend " + ("runs every stage in this process" if backend == "inline" else
                                         "leaves cores to Ray (--threads-per-stage CPUs per stage)")
                + ": drop the flag or use --backend local")
        arrays = load_npz(inputs_file) if inputs_file is not None else None
        if timeline is not None:
            check_plot(timeline, "--timeline")
        plan = open_artifact(artifact).plan  # the signature, verified before the run starts
        if arrays is not None and lengths is not None:
            raise typer.BadParameter("--lengths draws random requests and --inputs sends yours: give one of them")
        shapes = ""
        if arrays is not None:
            pool = npz_requests(plan.inputs, arrays)
        else:
            mixed, shapes = length_requests(plan, lengths, requests or 100, seed)
            pool = mixed or random_requests(plan.inputs, min(requests or 100, 8), seed)
        count = requests or (len(pool) if arrays is not None else 100)
        # Refuse a --save that cannot fit before any worker starts.
        writer = NpzWriter(save, plan.outputs, count) if save is not None else None
        options: dict[str, Any] = backend_options(backend, address, placement)
        if max_in_flight is not None:
            options["max_in_flight"] = max_in_flight
        options.update(replicas=replicas, threads_per_stage=threads_per_stage)
        if n_cores is not None:
            options["cores"] = usable_cores()[: int(n_cores)]
        try:
            pipe = start_pipeline(artifact, backend, **options)  # verifies the artifact first
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        try:
            seconds = stream(pipe, pool, count, "requests", sink=writer)
            if writer is not None:
                path = writer.finish()
                writer = None
                out.print(Text(f"saved the outputs of {plural(count, 'request')} to {path}"))
            print_run(pipe, count, seconds, shapes=shapes)
            if timeline is not None:
                # with replicas, each keeps its own timeline: draw the first one's
                title = f"corepipe run {artifact}" + (f" (replica 0 of {pipe.replicas})" if pipe.replicas > 1 else "")
                draw_timeline(pipe.timeline(), timeline, title,
                              [s.core for s in pipe.stats().stages if s.replica == 0], pipe.backend)
        except KeyboardInterrupt:
            pipe.close(timeout=2.0)  # after Ctrl-C, do not wait for a long queue to drain
            raise
        finally:
            if writer is not None:
                writer.abort()
            pipe.close()
