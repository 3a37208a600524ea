"""The compiled artifact on disk: write it, and verify it before anything loads it.

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
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from .._version import __version__
from ..errors import ArtifactError
from .plan import Plan, StagePlan

__all__ = [
    "FORMAT", "FORMAT_VERSION", "EXTRA_FILES", "write_artifact", "republish_artifact", "check_output_dir",
    "read_manifest", "Artifact", "open_artifact", "copy_stage",
]

FORMAT = "corepipe-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 64 * 2**20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$")
_ARTIFACT_FILE = re.compile(r"^(stage_[0-9]{3,}\.(onnx|weights)|tune\.png|tune\.json)$")
#: Files beside the stages that an artifact may hold: `corepipe tune`'s picture and measurements.
EXTRA_FILES = ("tune.png", "tune.json")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _staging(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(final directory, fresh temporary sibling to build it in); refuses a foreign directory."""
    out = Path(out_dir).resolve()  # "." or "out/.." have no name to build a sibling from
    check_output_dir(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return out, tmp


def check_output_dir(out_dir: str | os.PathLike[str]) -> None:
    """Raise `ArtifactError` unless ``out_dir`` is new, empty, or holds a corepipe artifact (the
    only directories writing an artifact may replace). Cheap: commands call it before long work."""
    out = Path(out_dir).resolve()
    if out.exists() and not _replaceable(out):
        raise ArtifactError(
            f"{str(out)!r} exists and is not a corepipe artifact: choose an empty or new directory"
        )


def _manifest_text(plan: Plan, source_sha256: str) -> str:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "corepipe_version": __version__,
        "source_sha256": source_sha256,
        "plan": plan.to_dict(),
    }
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        _swap_in(tmp, out)
    else:
        os.replace(tmp, out)


def write_artifact(
    out_dir: str | os.PathLike[str],
    plan: Plan,
    stage_models: Iterable[onnx.ModelProto],
    *,
    source_sha256: str,
    on_stage: Callable[[int], None] | None = None,
) -> Plan:
    """Write the artifact atomically and return the plan with file names and hashes filled in.

    Stage models are consumed one at a time, so only one stage's weights are copied in memory
    at once. An existing artifact at ``out_dir`` is replaced; any other non-empty directory is
    refused rather than overwritten.
    """
    out, tmp = _staging(out_dir)
    try:
        stages = []
        for k, (st, model) in enumerate(zip(plan.stages, stage_models, strict=True)):
            file = f"stage_{k:03d}.onnx"
            weights = f"stage_{k:03d}.weights"
            onnx.save_model(
                model, str(tmp / file), save_as_external_data=True,
                all_tensors_to_one_file=True, location=weights, size_threshold=1024,
                convert_attribute=False,
            )
            has_weights = (tmp / weights).is_file()
            stages.append(replace(
                st, file=file, sha256=_sha256_file(tmp / file),
                weights_file=weights if has_weights else None,
                weights_sha256=_sha256_file(tmp / weights) if has_weights else None,
            ))
            if on_stage is not None:
                on_stage(k)
        final = replace(plan, stages=tuple(stages))
        final.validate()
        (tmp / MANIFEST).write_text(_manifest_text(final, source_sha256))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def republish_artifact(
    src: Artifact,
    out_dir: str | os.PathLike[str],
    plan: Plan,
    *,
    extras: Mapping[str, bytes] | None = None,
) -> Plan:
    """Write ``src``'s stages to ``out_dir`` under a new ``plan`` (same stages and files, e.g. a
    deployment added), with ``extras`` (``tune.png``, ``tune.json``) beside them; atomically:
    the directory shows the old artifact or the whole new one, never a mix.

    Every stage file is verified against its hash while it is copied.

    Raises:
        ArtifactError: a stage file fails its hash, the plan's stages differ from ``src``'s, an
            extra file name is not one of `EXTRA_FILES`, or ``out_dir`` holds foreign files.
    """
    if [st.to_dict() for st in plan.stages] != [st.to_dict() for st in src.plan.stages]:
        raise ArtifactError("republishing keeps the stages as they are; compile again to change them")
    bad = sorted(set(extras or {}) - set(EXTRA_FILES))
    if bad:
        raise ArtifactError(f"files {bad} may not go into an artifact; allowed beside the stages: {list(EXTRA_FILES)}")
    plan.validate()
    out, tmp = _staging(out_dir)
    try:
        for st in src.plan.stages:
            copy_stage(src.root, st, tmp)
            for name in (st.file, st.weights_file):
                if name is not None:
                    os.chmod(tmp / name, 0o644)
        (tmp / MANIFEST).write_text(_manifest_text(plan, src.source_sha256))
        for name, data in (extras or {}).items():
            (tmp / name).write_bytes(data)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace the artifact files in ``out`` with those in ``tmp``, keeping the directory itself
    (it may be the working directory). The manifest moves last and stale stage files go after
    it, so a reader sees the old artifact or the new one, and hashes catch any mix."""
    fresh = sorted(p.name for p in tmp.iterdir())
    for name in fresh:
        if name != MANIFEST:
            os.replace(tmp / name, out / name)
    os.replace(tmp / MANIFEST, out / MANIFEST)
    for old in out.iterdir():
        if old.name not in fresh and _ARTIFACT_FILE.match(old.name):
            old.unlink()
    tmp.rmdir()


def _replaceable(out: Path) -> bool:
    """Whether ``out`` is an empty directory or one holding only a corepipe artifact.

    Replacing deletes the directory, so a stray user file, or a ``manifest.json`` that some
    other tool wrote, makes it not ours to delete.
    """
    if out.is_symlink() or not out.is_dir():
        return False
    names = [p.name for p in out.iterdir()]
    if not names:
        return True
    if MANIFEST not in names or not all(n == MANIFEST or _ARTIFACT_FILE.match(n) for n in names):
        return False
    try:
        data = json.loads((out / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


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
    if type(version) is not int or version != FORMAT_VERSION:  # True == 1 and 1.0 == 1: refuse both
        raise ArtifactError(
            f"artifact format version {version!r} is not supported by corepipe {__version__} "
            f"(it reads version {FORMAT_VERSION}); recompile the model with this corepipe"
        )
    return data


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
        plan = Plan.from_dict(data["plan"])
        plan.validate()
    except ArtifactError:
        raise
    except Exception as exc:  # KeyError, TypeError, ValueError from malformed fields
        raise ArtifactError(
            f"manifest.json does not match the artifact schema: {type(exc).__name__}: {exc}"
        ) from None
    for st in plan.stages:
        _check_stage_files(root, st, verify_hashes)
    return Artifact(
        root=root, plan=plan, source_sha256=str(data.get("source_sha256", "")),
        corepipe_version=str(data.get("corepipe_version", "")),
    )


def _check_stage_files(root: Path, st: StagePlan, verify_hashes: bool) -> None:
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
    _external_refs(_parse_stage(root, st), st, weights_len)


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
