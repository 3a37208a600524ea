"""``corepipe serve``: KServe v2 over HTTP and gRPC, TF-Serving predict and Prometheus metrics."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ._app import app, cli_errors, err, out
from .options import CoresAlias, NumCores, core_count, core_flag, usable_cores

__all__ = ["serve_cmd", "parse_cores", "parse_size"]


def parse_cores(text: str, flag: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``."""
    cores: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise typer.BadParameter(f"{flag} {text!r}: give core ids like 0,1 or ranges like 0-3")
        cores.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return sorted(set(cores))


def parse_size(text: str) -> int:
    """``"64MiB"`` -> 67108864; plain digits are bytes."""
    units = {"": 1, "B": 1, "KB": 1000, "KIB": 2**10, "MB": 10**6, "MIB": 2**20, "GB": 10**9, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if not num.replace(".", "", 1).isdigit() or unit not in units:
        raise typer.BadParameter(f"--max-body-bytes {text!r}: give a size like 8MiB, 500KB or 1048576")
    return int(float(num) * units[unit])


def _per_model(items: list[str] | None, flag: str, form: str) -> dict[str, str]:
    """``["bert=0-3", ...]`` -> ``{"bert": "0-3"}``: a repeatable per-model flag's values."""
    out = {}
    for item in items or ():
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise typer.BadParameter(f"{flag} {item!r}: use {form}")
        out[name] = value
    return out


@app.command("serve")
def serve_cmd(
    path: Annotated[Path, typer.Argument(
        metavar="PATH", help="An artifact directory (one model, named after it), or a repository: a "
        "directory of artifacts, one model per subdirectory.", show_default=False)],
    http_port: Annotated[int, typer.Option("--http-port", metavar="PORT", help="HTTP port (KServe v2 "
                                           "REST, TF-Serving predict, /metrics); 0: any free port.")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", metavar="PORT", help="gRPC port (KServe v2 "
                                           "GRPCInferenceService); 0: any free port.")] = 8001,
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to bind. The default "
                                      "serves this machine only; use 0.0.0.0 to expose it (then set "
                                      "--token).")] = "127.0.0.1",
    backend: Annotated[str, typer.Option("--backend", "-b", metavar="local|inline|ray",
                                         help="Pipeline backend for every model.")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", metavar="auto|ray://HOST:PORT", help="Ray cluster for --backend ray: 'auto' joins "
        "the cluster of `ray start` (default: a private Ray instance on this machine).",
        show_default=False)] = None,
    num_cores: NumCores = None,
    cores: CoresAlias = None,
    core_ids: Annotated[str | None, typer.Option(
        "--core-ids", metavar="LIST", help="Which cores the models may use, e.g. 0-7 (default: the "
        "first --num-cores of those this process may run on, or all).", show_default=False)] = None,
    split: Annotated[str, typer.Option(
        "--split", metavar="auto|divide|share",
        help="How models share the cores: divide (each its own, in proportion to its stages x threads "
        "x replicas), share (all use all), auto (divide when they fit, else share).")] = "auto",
    model_cores: Annotated[list[str] | None, typer.Option(
        "--model-cores", metavar="NAME=LIST", help="Give one model its own cores, e.g. bert=0-3 "
        "(repeatable; overrides --split for it).", show_default=False)] = None,
    max_in_flight: Annotated[int | None, typer.Option(
        "--max-in-flight", min=1, metavar="N", help="Requests in one model's pipeline at once (default: the "
        "backend's, 2 x stages + 2).", show_default=False)] = None,
    max_queue: Annotated[int | None, typer.Option(
        "--max-queue", min=0, metavar="N", help="Requests that may wait for room beyond that; more get 503 with "
        "Retry-After (default: 4 x max-in-flight).", show_default=False)] = None,
    max_body: Annotated[str | None, typer.Option(
        "--max-body-bytes", metavar="SIZE", help="HTTP body limit, e.g. 64MiB (default per model: its "
        "inputs as JSON, 24 bytes a value, + 1 MiB).", show_default=False)] = None,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", envvar="COREPIPE_SERVE_TOKEN", help="Require 'Authorization: Bearer TOKEN' on every "
        "request but the health probes (better set through COREPIPE_SERVE_TOKEN: flags show in ps).",
        show_default=False)] = None,
    drain: Annotated[float, typer.Option(
        "--drain-timeout", min=0, metavar="SECONDS", help="Seconds accepted requests may take to finish after SIGTERM.")] = 30.0,
    restart: Annotated[str, typer.Option(
        "--restart", metavar="backoff|give-up",
        help="A stage that keeps dying: backoff restarts it after a growing wait (--backoff doubling to "
        "--backoff-max), reporting not-ready meanwhile; give-up fails its model for good.")] = "backoff",
    max_deaths: Annotated[int, typer.Option(
        "--max-deaths", min=1, metavar="N", help="Deaths within 60 s after which a stage counts as one that keeps "
        "dying.")] = 3,
    backoff: Annotated[float, typer.Option(
        "--backoff", min=0, metavar="SECONDS", help="First wait, in seconds, before restarting a stage that keeps dying; "
        "it doubles with each further death.")] = 0.5,
    backoff_max: Annotated[float, typer.Option(
        "--backoff-max", min=0, metavar="SECONDS", help="Longest wait, in seconds, before restarting a stage.")] = 30.0,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, metavar="N", help="Models with a dynamic batch dim: the most rows one request may "
        "carry (Triton's max_batch_size; default: the dim's max), and dynamic batching: waiting requests merged "
        "up to N rows. Models compiled at batch 1 take batches as their items, streamed.",
        show_default=False)] = None,
    batch_delay: Annotated[str, typer.Option(
        "--batch-delay", metavar="DURATION", help="With --max-batch: how long the oldest waiting request waits "
        "for others to merge with it, e.g. 500us or 2ms.")] = "0",
    stage_batch: Annotated[int | None, typer.Option(
        "--stage-batch", min=1, metavar="N", help="--backend local, models with a dynamic batch dim: each stage "
        "runs the requests waiting at it as one engine call of up to N rows (pays where a batch costs less than "
        "its rows run alone; off by default).", show_default=False)] = None,
    input_format: Annotated[list[str] | None, typer.Option(
        "--input-format", metavar="NAME=NCHW|NHWC", help="Declare the layout of a model's image inputs (3 dims "
        "past the batch dim), shown as Triton's format in its model config, e.g. resnet=NCHW (repeatable).",
        show_default=False)] = None,
    labels: Annotated[list[str] | None, typer.Option(
        "--labels", metavar="NAME=FILE", help="Class names for a model's classification answers "
        "(Triton's label_filename: one name a line; repeatable).", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log model loading and shutdown.")] = False,
) -> None:
    """Serve compiled models over KServe v2 (HTTP and gRPC), TF-Serving REST and Prometheus.

    KServe v2 / Triton clients work unmodified: tritonclient (HTTP, gRPC; JSON or binary tensors), perf_analyzer.

    HTTP: /v2/health/ready, /v2/models/NAME/infer, /v2/models/NAME/config, /v1/models/NAME:predict, /metrics.

    Decoders (artifacts compiled from a model with past_key_values) also speak OpenAI's API, streaming
    tokens as server-sent events (the openai client, curl -N, AIPerf): /v1/completions,
    /v1/chat/completions (the tokenizer's chat template), /v1/models; and KServe v2's
    /v2/models/NAME/generate and /generate_stream. --max-queue bounds the sequences waiting for a KV row
    (then 429 with Retry-After).

    gRPC: inference.GRPCInferenceService. SIGTERM drains accepted requests, closes the pipelines, exits 0.

    Examples:

      corepipe serve resnet_compiled/

      corepipe serve models/ --http-port 8080 --grpc-port 8081 --split divide

      corepipe serve models/ --core-ids 0-7 --model-cores bert=0-3

      corepipe serve bert_dynamic/ --max-batch 8 --batch-delay 500us

      COREPIPE_SERVE_TOKEN=s3cret corepipe serve models/ --host 0.0.0.0

      corepipe serve gpt2_compiled/     # a decoder: OpenAI API at :8000/v1

      corepipe serve gpt2_compiled/ --backend ray   # one Ray actor per stage

      curl -N localhost:8000/v1/completions -d '{"prompt": "hi", "stream": true}'

      perf_analyzer -m resnet_compiled -u 127.0.0.1:8001 -i grpc --concurrency-range 1:4

      perf_analyzer -m bert_dynamic -u 127.0.0.1:8001 -i grpc -b 4 --shape input_ids:37
    """
    with cli_errors({"num_cores": core_flag(num_cores, cores)}):
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        from ..serve import Endpoints, ServeConfig, serve

        fixed = {name: parse_cores(spec, "--model-cores")
                 for name, spec in _per_model(model_cores, "--model-cores", "NAME=LIST, e.g. bert=0-3").items()}
        formats = {name: fmt.upper() for name, fmt in
                   _per_model(input_format, "--input-format", "NAME=NCHW or NAME=NHWC, e.g. resnet=NCHW").items()}
        usable = usable_cores()
        count, flag = core_count(num_cores, cores, available=len(usable))
        if core_ids is not None and count is not None:
            raise typer.BadParameter(f"give --core-ids or {flag}, not both")
        pool = parse_cores(core_ids, "--core-ids") if core_ids else (usable[:count] if isinstance(count, int) else None)
        config = ServeConfig(
            host=host, http_port=http_port, grpc_port=grpc_port, backend=backend, cores=pool, split=split, model_cores=fixed,
            max_in_flight=max_in_flight, max_queue=max_queue,
            max_body_bytes=parse_size(max_body) if max_body else None, token=token, drain_s=drain,
            restart=restart, max_deaths=max_deaths, backoff_s=backoff, backoff_max_s=backoff_max,
            address=address, max_batch=max_batch, batch_delay=batch_delay, stage_batch=stage_batch,
            input_formats=formats,
            labels=_per_model(labels, "--labels", "NAME=FILE, e.g. resnet=labels.txt"),
        )

        def ready(ep: Endpoints) -> None:
            out.print(Text(f"corepipe serve: ready (pid {os.getpid()}): {', '.join(ep.models)}\n"
                           f"  HTTP  {ep.http_url}/v2  (KServe v2, /v1/models/NAME:predict, /metrics"
                           f"{'; OpenAI: ' + ep.http_url + '/v1' if ep.generates else ''})\n"
                           f"  gRPC  {ep.grpc_target}  (inference.GRPCInferenceService)"), soft_wrap=True)
            out.file.flush()

        serve(path, config, on_ready=ready)
        err.print("corepipe serve: stopped")
