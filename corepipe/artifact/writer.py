"""Writing artifacts: a compiled plan's stages and manifest, or an artifact republished with a new
plan (`corepipe tune` adds its deployment, picture and figures), always atomically.

Each write builds the whole directory beside the target (``.NAME.tmp-PID``) and then moves it in
one step; an existing artifact is replaced file by file with the manifest last, so a reader
sees the old artifact or the new one and hashes catch any mix. A directory that holds anything
but a corepipe artifact is never overwritten. Reading and verification live in
`corepipe.artifact.manifest`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import onnx

from .._version import __version__
from ..errors import ArtifactError
from .manifest import (
    _ARTIFACT_FILE,
    EXTRA_FILES,
    FORMAT,
    MANIFEST,
    Artifact,
    _sha256_file,
    copy_stage,
    manifest_version,
)
from .plan import Plan

__all__ = ["write_artifact", "republish_artifact", "save_stage_model", "check_output_dir"]


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
        "format_version": manifest_version(plan),
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
            save_stage_model(model, tmp, file, weights)
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
def save_stage_model(model: onnx.ModelProto, directory: Path, file: str, weights: str) -> Path:
    """Write one stage graph as artifacts hold it: tensors over 1 KiB in ``weights`` beside it.

    The compiler writes the stages it tries on an engine the same way, so the engine reads
    them exactly as a worker will (OpenVINO reads a file and the same bytes in memory
    differently).
    """
    onnx.save_model(
        model, str(directory / file), save_as_external_data=True,
        all_tensors_to_one_file=True, location=weights, size_threshold=1024,
        convert_attribute=False,
    )
    return directory / file


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
