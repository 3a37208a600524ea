"""The compiled artifact on disk: its format, and verifying it before anything loads it
(`corepipe.artifact.writer` writes it).

Layout (see design.md): ``manifest.json`` plus ``stage_NNN.onnx`` with its weights in
``stage_NNN.weights`` beside it. Loading trusts nothing: the manifest must parse and match its
schema, every path must be a plain file name inside the directory (no ``..``, no absolute path,
no symlink), every file must match its sha256, and each stage graph may refer to no external
data but its own weights file. Each worker then loads a private copy of its stage, hashed
while it is copied (`copy_stage`), so files swapped in the artifact after verification never
reach onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from .._version import __version__
from ..errors import ArtifactError
from .plan import Plan, StagePlan

__all__ = [
    "FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "EXTRA_FILES", "read_manifest", "Artifact",
    "open_artifact", "copy_stage", "manifest_version",
]

FORMAT = "corepipe-artifact"
#: Version 2 adds each stage's engine, precision and fallback; version 1 artifacts (every stage
#: on onnxruntime in fp32) still load. Version 3 adds dynamic dims (the plan's ``shapes``, each
#: tensor's ``min_shape`` and ``dims``, each stage's ``shape_mode``); it is written only for
#: plans that have them, so artifacts of static shapes stay version 2 (`manifest_version`).
#: Version 4 adds the plan's ``decoder`` (state pairs by stage), written only for decoders.
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 64 * 2**20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
_ARTIFACT_FILE = re.compile(r"^(stage_[0-9]{3,}\.(onnx|weights)|tune\.png|tune\.json|tokenizer\.json|tokenizer_config\.json)$")
#: Files beside the stages that an artifact may hold: `corepipe tune`'s picture and measurements.
EXTRA_FILES = ("tune.png", "tune.json")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_file(root: Path, name: Any, what: str) -> Path:
    """``root / name`` after checking that ``name`` is a plain file name of a regular file."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ArtifactError(
            f"{what} path {name!r} is not a plain file name inside the artifact directory "
            "(no '/', '..', absolute paths or hidden files are allowed)"
        )
    path = root / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"{what} {name!r} is missing from {str(root)!r}") from None
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"{what} {name!r} is a symlink; artifacts may not contain symlinks")
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{what} {name!r} is not a regular file")
    return path


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and schema-check ``manifest.json``; raise `ArtifactError` on any defect."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{str(root)!r} is not a directory: pass the directory `corepipe compile` wrote")
    path = _plain_file(root, MANIFEST, "manifest")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"manifest is {path.stat().st_size} bytes, over the {_MAX_MANIFEST_BYTES} limit")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ArtifactError(f"manifest.json is not valid JSON ({exc}); recompile the model") from None
    if not isinstance(data, dict):
        raise ArtifactError("manifest.json must hold a JSON object")
    if data.get("format") != FORMAT:
        raise ArtifactError(f"manifest format is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # True == 1, 1.0 == 1: refuse both
        raise ArtifactError(
            f"artifact format version {version!r} is not supported by corepipe {__version__} "
            f"(it reads versions {list(READABLE_VERSIONS)}); recompile the model with this corepipe"
        )
    return data


_V2_STAGE_KEYS = ("engine", "precision")


def manifest_version(plan: Plan) -> int:
    """The format version a manifest of ``plan`` is written in: 4 for a decoder, 3 with dynamic
    dims, else 2."""
    return 4 if plan.decoder is not None else 3 if plan.shapes is not None else 2


def _check_version_fields(data: dict[str, Any]) -> None:
    """Version 1 stages predate engines (onnxruntime, fp32); version 2 stages must name theirs;
    only version 3 may name dynamic dims."""
    if data["format_version"] < 3 and ("shapes" in data["plan"]
                                       or any("shape_mode" in st for st in data["plan"]["stages"])):
        raise ArtifactError(f"a version {data['format_version']} manifest cannot name dynamic dims; they came in version 3")
    if data["format_version"] < 4 and "decoder" in data["plan"]:
        raise ArtifactError(f"a version {data['format_version']} manifest cannot name a decoder; it came in version 4")
    stages = data["plan"]["stages"]
    for k, st in enumerate(stages):
        named = [key for key in (*_V2_STAGE_KEYS, "fallback") if key in st]
        if data["format_version"] == 1 and named:
            raise ArtifactError(f"a version 1 manifest cannot name {named} (stage {k}); it predates engines")
        missing = [key for key in _V2_STAGE_KEYS if key not in st]
        if data["format_version"] >= 2 and missing:
            raise ArtifactError(f"stage {k} of a version {data['format_version']} manifest lacks {missing}")


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its directory and plan. Build one with `open_artifact`."""

    root: Path
    plan: Plan
    source_sha256: str
    corepipe_version: str

    def copy_stage(self, index: int, dest: str | os.PathLike[str]) -> Path:
        """Verify stage ``index`` while copying it into the private directory ``dest``."""
        return copy_stage(self.root, self.plan.stages[index], Path(dest))



def open_artifact(root: str | os.PathLike[str], *, verify_hashes: bool = True) -> Artifact:
    """Read, schema-check and verify an artifact directory.

    Raises:
        ArtifactError: anything is missing, malformed, outside the directory, or tampered with.
    """
    root = Path(root)
    data = read_manifest(root)
    try:
        _check_version_fields(data)
        plan = Plan.from_dict(data["plan"])
        plan.validate()
    except ArtifactError:
        raise
    except Exception as exc:  # KeyError, TypeError, ValueError from malformed fields
        raise ArtifactError(
            f"manifest.json does not match the artifact schema: {type(exc).__name__}: {exc}"
        ) from None
    for st in plan.stages:
        _check_stage_files(root, st, plan, verify_hashes)
    return Artifact(
        root=root, plan=plan, source_sha256=str(data.get("source_sha256", "")),
        corepipe_version=str(data.get("corepipe_version", "")),
    )


def _check_stage_files(root: Path, st: StagePlan, plan: Plan, verify_hashes: bool) -> None:
    files = [(st.file, st.sha256, "stage file")]
    if st.weights_file is not None:
        files.append((st.weights_file, st.weights_sha256 or "", "weights file"))
    for name, digest, what in files:
        path = _plain_file(root, name, f"stage {st.index} {what}")
        if verify_hashes and _sha256_file(path) != digest:
            raise ArtifactError(
                f"stage {st.index} {what} {name!r} does not match its sha256 in the manifest: "
                "the artifact was modified or corrupted; recompile it"
            )
    # Check every stage's external-data references now, not when its session is made: a bad
    # last stage must fail the load before onnxruntime sees the first one.
    weights_len = 0
    if st.weights_file is not None:
        weights_len = _plain_file(root, st.weights_file, f"stage {st.index} weights file").stat().st_size
    model = _parse_stage(root, st)
    _external_refs(model, st, weights_len)
    _check_stage_io(model, st, plan)


def _check_stage_io(model: onnx.ModelProto, st: StagePlan, plan: Plan) -> None:
    """The stage graph reads and writes the tensors the manifest names for it, with the dtypes
    and static shapes its boundaries declare. The manifest is not hashed: edited to name other
    tensors, it would leave an input unbound (an engine then reads whatever the slot holds) or
    size a slot wrongly, and a wrong answer would come back without an error.
    """
    inits = {t.name for t in model.graph.initializer}
    sides = (("reads", [v for v in model.graph.input if v.name not in inits], st.inputs, st.index),
             ("writes", list(model.graph.output), st.outputs, st.index + 1))
    for verb, values, declared, boundary in sides:
        names = sorted(v.name for v in values)
        if names != sorted(declared):
            raise ArtifactError(
                f"stage {st.index}'s graph {verb} {names}, but the manifest says {sorted(declared)}: "
                "the manifest was modified; recompile the artifact")
        specs = {t.name: t for t in plan.boundaries[boundary]}
        for v in values:
            spec, tt = specs.get(v.name), v.type.tensor_type
            if spec is None or not tt.elem_type:
                continue
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            fixed = not spec.dynamic and tt.HasField("shape") and None not in dims
            if (dtype.kind != "O" and dtype.name != spec.dtype) or (fixed and tuple(dims) != tuple(spec.shape)):
                raise ArtifactError(
                    f"stage {st.index}'s graph {verb} {v.name!r} as {dtype.name}{dims}, but the manifest "
                    f"declares {spec.dtype}{list(spec.shape)}: the manifest was modified; recompile the artifact")


def _parse_stage(root: Path, st: StagePlan, raw: bytes | None = None) -> onnx.ModelProto:
    if raw is None:
        raw = _plain_file(root, st.file, f"stage {st.index} file").read_bytes()
    try:
        return onnx.load_model_from_string(raw)
    except Exception as exc:
        raise ArtifactError(f"stage {st.index} file {st.file!r} is not an ONNX model: {exc}") from None


def _external_refs(
    model: onnx.ModelProto, st: StagePlan, weights_len: int
) -> list[tuple[onnx.TensorProto, int, int]]:
    """(tensor, offset, length) of each external tensor; every one must lie in the stage's own
    weights file."""
    refs = []
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        if st.weights_file is None or info.get("location") != st.weights_file:
            raise ArtifactError(
                f"stage {st.index} tensor {tensor.name!r} points at external data "
                f"{info.get('location')!r}; only {st.weights_file!r} is allowed"
            )
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else weights_len - offset
        except ValueError:
            raise ArtifactError(f"stage {st.index} tensor {tensor.name!r} has a bad offset/length") from None
        if offset < 0 or length < 0 or offset + length > weights_len:
            raise ArtifactError(
                f"stage {st.index} tensor {tensor.name!r} reads bytes {offset}..{offset + length} "
                f"of a {weights_len}-byte weights file"
            )
        refs.append((tensor, offset, length))
    return refs


def copy_stage(root: Path, st: StagePlan, dest: Path) -> Path:
    """Verify one stage while copying it into ``dest`` (a private directory); return the copy's
    model path for onnxruntime to load.

    onnxruntime then reads (and memory-maps) only bytes we hashed on the way in: files in the
    artifact directory swapped after verification cannot reach it. Loading from a path, rather
    than from bytes with inlined weights, keeps a worker's resident memory near 1x its weights.
    """
    raw = _plain_file(root, st.file, f"stage {st.index} file").read_bytes()
    if hashlib.sha256(raw).hexdigest() != st.sha256:
        raise ArtifactError(f"stage {st.index} file {st.file!r} does not match its sha256")
    model = _parse_stage(root, st, raw)
    weights_len = 0
    if st.weights_file is not None:
        src = _plain_file(root, st.weights_file, f"stage {st.index} weights file")
        h = hashlib.sha256()
        fd = os.open(dest / st.weights_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 22), b""):
                h.update(chunk)
                fout.write(chunk)
                weights_len += len(chunk)
        if h.hexdigest() != st.weights_sha256:
            raise ArtifactError(f"stage {st.index} weights {st.weights_file!r} do not match their sha256")
    _external_refs(model, st, weights_len)
    out = dest / st.file
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return out


def _all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every tensor that may hold external data: the graph's, its subgraphs', and those in the
    model's functions (Constant nodes there carry tensors too)."""
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterable[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == onnx.AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        elif attr.type == onnx.AttributeProto.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
        elif attr.type == onnx.AttributeProto.GRAPH:
            yield from _graph_tensors(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield from _graph_tensors(g)
