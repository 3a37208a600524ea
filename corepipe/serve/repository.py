"""The model repository: find the artifacts under PATH, name them, and start a pipeline for each.

PATH is one artifact (a directory with ``manifest.json``: one model, named after the directory),
or a repository: a directory whose subdirectories are artifacts, one model each, named after the
subdirectory. TF-Serving's and Triton's versioned layout works too: a model directory whose
subdirectories are numbered versions (``rn50_compiled/1/``, as ``corepipe.tensorflow`` writes)
is one model, named after that directory and served at its highest version; PATH may be such a
model directory, a version directory in it, or a repository of them. Each model gets its own
pipeline on its share of the cores (`split_cores`), with the deployment its plan records
(``Plan.deployment``: R replicas x T threads per stage, written by ``corepipe tune``) where it
has one; where its share of the cores cannot hold that, the most replicas (then threads) that
fit, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ..artifact.manifest import open_artifact
from ..artifact.plan import Plan, TensorSpec
from ..artifact.sizes import parse_duration
from ..errors import ArtifactError, CorepipeError
from ..runtime import load
from .batching import Batching, batching_of, triton_dims
from .classification import read_labels
from .config import ServeConfig, split_cores
from .model import ServedModel

__all__ = ["discover", "deployment_of", "load_models"]

log = logging.getLogger("corepipe.serve")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def discover(path: str | Path) -> dict[str, Path]:
    """Model name -> artifact directory for one artifact or a repository of them.

    Raises:
        ArtifactError: PATH is missing, or holds no artifact; a name is not URL-safe.
    """
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{str(root)!r} is not a directory: pass an artifact directory or a "
                            "repository directory of artifacts")
    found: dict[str, Path] = {}
    if (root / "manifest.json").exists():
        here = root.resolve()
        found = {here.parent.name if here.name.isdigit() else here.name: root}  # name/1: a version
    elif (latest := _latest_version(root)) is not None:
        found = {root.resolve().name: latest}
    else:
        for p in sorted(root.iterdir()):
            if p.is_dir() and (p / "manifest.json").exists():
                found[p.name] = p
            elif p.is_dir() and (latest := _latest_version(p)) is not None:
                found[p.name] = latest
    if not found:
        raise ArtifactError(
            f"{str(root)!r} holds no artifact: expected manifest.json in it (one model) or in its "
            "subdirectories (a repository, one model per subdirectory); write one with `corepipe compile`"
        )
    for name in found:
        if not _NAME.match(name):
            raise ArtifactError(f"model name {name!r} (a directory name) must be letters, digits, "
                                "'_', '.' or '-': rename the directory")
    return found


def _latest_version(model_dir: Path) -> Path | None:
    """The highest numbered version directory holding an artifact, in a versioned model directory."""
    versions = [p for p in model_dir.iterdir() if p.name.isdigit() and (p / "manifest.json").exists()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def deployment_of(root: Path) -> dict[str, Any]:
    """The plan's deployment as load() options (replicas, threads per stage), or {} when it
    records none."""
    return _options(open_artifact(root, verify_hashes=False).plan)


def _options(plan: Plan) -> dict[str, Any]:
    dep = plan.deployment
    if dep is None:
        return {}
    return {"replicas": dep.replicas, "threads_per_stage": dep.threads_per_stage}


def _fit(name: str, stages: int, wanted: dict[str, Any], cores: int) -> dict[str, Any]:
    """``wanted`` (replicas, threads per stage) cut down to what ``cores`` cores hold."""
    r, t = wanted.get("replicas", 1), wanted.get("threads_per_stage", 1)
    if r * stages * t <= cores or stages > cores:
        return dict(wanted)  # fits; or nothing does, and load() says so
    if stages * t <= cores:
        fitted = {"replicas": cores // (stages * t), "threads_per_stage": t}
    else:
        fitted = {"replicas": 1, "threads_per_stage": cores // stages}
    log.warning("model %s: its deployment (%d replicas x %d stages x %d threads) needs %d cores and has %d; "
                "serving %d replicas x %d threads", name, r, stages, t, r * stages * t, cores,
                fitted["replicas"], fitted["threads_per_stage"])
    return fitted


def _check_format(name: str, inputs: tuple[TensorSpec, ...], batching: Batching, fmt: str) -> None:
    """An image layout fits a model whose inputs have 3 dims past the batch dim (as Triton
    requires of FORMAT_NCHW/NHWC).

    Raises:
        CorepipeError: an input of another rank, saying what it reports.
    """
    for spec in inputs:
        dims = triton_dims(spec, batching)
        if len(dims) != 3:
            why = ("" if batching.max_batch_size else "; this model has no dynamic batch dim, so its dims include "
                   "the batch: compile it with a dynamic batch dim (--dynamic batch=1:N)")
            raise CorepipeError(f"--input-format {name}={fmt}: input {spec.name!r} has dims {dims} in the model "
                                f"config, and a format needs 3 (C,H,W or H,W,C past the batch dim){why}")


def load_models(path: str | Path, config: ServeConfig) -> list[ServedModel]:
    """Verify every artifact and start its pipeline.

    A model whose artifact fails verification stops the server (an error naming it). A model
    whose pipeline cannot start (a stage that does not load) is served as unavailable, with the
    reason, so the others still serve; with one model only, that is an error too.

    Raises:
        ArtifactError: an artifact is missing or fails verification.
        CorepipeError: the cores cannot be split as asked; the only model cannot start.
    """
    sources = discover(path)
    for flag, given in (("--model-cores", config.model_cores), ("--input-format", config.input_formats),
                        ("--labels", config.labels)):
        unknown = sorted(set(given) - set(sources))
        if unknown:
            raise CorepipeError(f"{flag} names models {unknown} that are not in {str(path)!r}: "
                                f"its models are {sorted(sources)}")
    labels = {name: read_labels(file) for name, file in config.labels.items()}
    artifacts = {name: open_artifact(root) for name, root in sources.items()}
    deployments = {name: _options(art.plan) for name, art in artifacts.items()}
    needs = {
        name: art.plan.num_cores * deployments[name].get("threads_per_stage", 1) * deployments[name].get("replicas", 1)
        for name, art in artifacts.items()
    }
    pool = sorted(config.cores or os.sched_getaffinity(0))
    cores = split_cores(needs, pool, config.split, config.model_cores)
    models: list[ServedModel] = []
    try:
        for name, art in artifacts.items():
            options: dict[str, Any] = {}
            if config.max_in_flight is not None:
                options["max_in_flight"] = config.max_in_flight
            if config.backend in ("local", "ray"):
                options.update(restart=config.restart, max_deaths=config.max_deaths,
                               death_window=config.death_window, backoff_s=config.backoff_s,
                               backoff_max_s=config.backoff_max_s)
                # local pins its workers to the model's share of cores; Ray places actors itself.
                options.update({"cores": cores[name]} if config.backend == "local" else {"address": config.address})
                if deployments[name]:
                    # A private Ray instance runs on this host's cores, as local does; a cluster's
                    # placement refuses up front what its nodes cannot hold.
                    fit = config.backend == "local" or config.address is None
                    options.update(_fit(name, art.plan.num_cores, deployments[name], len(cores[name]))
                                   if fit else deployments[name])
            batching = batching_of(art.plan, config.max_batch, parse_duration(config.batch_delay))
            if name in config.input_formats:
                _check_format(name, art.plan.inputs, batching, config.input_formats[name])
            if batching.merge:
                options.update(max_batch=batching.merge, batch_delay=config.batch_delay)
            elif config.max_batch is not None and batching.max_batch_size == 0:
                log.warning("model %s has no dynamic batch dim: --max-batch does not apply to it (a batch "
                            "along axis 0 runs as its items, streamed)", name)
            if config.stage_batch is not None and config.stage_batch > 1:
                if batching.max_batch_size and batching.rows and art.plan.decoder is None:
                    options["stage_batch"] = min(config.stage_batch, batching.rows)
                else:
                    log.warning("model %s has no dynamic batch dim (or is a decoder): --stage-batch does not "
                                "apply to it", name)
            log.info("model %s: %d stages on cores %s", name, art.plan.num_cores, cores[name])
            try:
                pipe = load(art.root, backend=config.backend, **options)
                error = None
            except ArtifactError:
                raise
            except CorepipeError as exc:
                if len(artifacts) == 1:
                    raise
                pipe, error = None, str(exc)
                log.error("model %s is unavailable: %s", name, exc)
            models.append(ServedModel(
                name, art.root, art.plan.inputs, art.plan.outputs, pipe, load_error=error,
                max_queue=config.max_queue, body_limit=config.max_body_bytes, cores=cores[name],
                deployment={k: options[k] for k in ("replicas", "threads_per_stage") if k in options},  # as applied
                batching=batching, input_format=config.input_formats.get(name), labels=labels.get(name),
                labels_file=Path(config.labels[name]).name if name in config.labels else "",
            ))
            version = sources[name].resolve().name
            if version.isdigit() and version != name:  # a versioned layout: report that version
                models[-1].version = version
    except BaseException:
        for m in models:
            m.close(timeout=0)
        raise
    return models

