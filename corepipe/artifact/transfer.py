"""One stage of an artifact on its own: open it where the directory is shared, or ship its bytes to a
machine that cannot see the directory and verify every hash on arrival.

A pipeline spread over several machines loads each stage where it runs. A machine that sees the
artifact directory (a shared file system) opens only its own stage there (`open_stage`); one that
does not receives the manifest and its stage's two files as bytes (`stage_payload` on the sending
side) and trusts none of them until `receive_stage` has checked the manifest's sha256 against the
one the sender verified, the manifest's schema, and each file's sha256 against the manifest. The
engine then loads a private copy of the stage as usual (`Artifact.copy_stage` hashes it again).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ArtifactError
from .manifest import (
    _SAFE_NAME,
    MANIFEST,
    Artifact,
    _external_refs,
    _parse_stage,
    _plain_file,
    read_manifest,
)
from .plan import Plan

__all__ = ["manifest_sha256", "open_stage", "stage_payload", "receive_stage"]

#: A shipped stage may not declare more than this many bytes in all (a bound on a tampered payload).
_MAX_PAYLOAD = 2**40


def manifest_sha256(root: str | os.PathLike[str]) -> str:
    """sha256 of the artifact's ``manifest.json``: names one compiled artifact exactly.

    Raises:
        ArtifactError: the manifest is missing, a symlink or not a regular file.
    """
    return hashlib.sha256(_plain_file(Path(root), MANIFEST, "manifest").read_bytes()).hexdigest()


def _plan_of(root: Path) -> tuple[Plan, dict[str, object]]:
    data = read_manifest(root)
    try:
        plan = Plan.from_dict(data["plan"])  # type: ignore[arg-type]
        plan.validate()
    except Exception as exc:  # KeyError, TypeError, ValueError from malformed fields
        raise ArtifactError(
            f"manifest.json does not match the artifact schema: {type(exc).__name__}: {exc}"
        ) from None
    return plan, data


def _artifact(root: Path, plan: Plan, data: Mapping[str, object]) -> Artifact:
    return Artifact(
        root=root, plan=plan, source_sha256=str(data.get("source_sha256", "")),
        corepipe_version=str(data.get("corepipe_version", "")),
    )


def open_stage(root: str | os.PathLike[str], index: int, expect_manifest: str) -> Artifact:
    """Open the artifact at ``root`` for stage ``index`` alone: the manifest must be the very one
    the caller verified (``expect_manifest``, its sha256) and the stage's files must be plain
    files inside the directory. Hashes of the stage files are checked when the engine copies them.

    Raises:
        ArtifactError: another or a modified manifest, a missing or unsafe file, a bad index.
    """
    path = Path(root)
    if manifest_sha256(path) != expect_manifest:
        raise ArtifactError(
            f"the artifact at {str(path)!r} is not the one the pipeline verified (manifest "
            "sha256 differs): it was recompiled or modified meanwhile"
        )
    plan, data = _plan_of(path)
    if not 0 <= index < plan.num_cores:
        raise ArtifactError(f"stage {index} does not exist: the artifact has {plan.num_cores} stages")
    st = plan.stages[index]
    _plain_file(path, st.file, f"stage {index} file")
    if st.weights_file is not None:
        _plain_file(path, st.weights_file, f"stage {index} weights file")
    return _artifact(path, plan, data)


def stage_payload(artifact: Artifact, index: int) -> dict[str, bytes]:
    """The bytes another machine needs to run stage ``index``: the manifest and the stage's files,
    by name. Each file is checked against the manifest as it is read, so a file changed since the
    artifact was verified is never shipped.

    Raises:
        ArtifactError: a file no longer matches its sha256.
    """
    st = artifact.plan.stages[index]
    out = {MANIFEST: _plain_file(artifact.root, MANIFEST, "manifest").read_bytes()}
    files = [(st.file, st.sha256)]
    if st.weights_file is not None:
        files.append((st.weights_file, st.weights_sha256 or ""))
    for name, digest in files:
        raw = _plain_file(artifact.root, name, f"stage {index} file").read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ArtifactError(
                f"stage {index} file {name!r} no longer matches its sha256: the artifact was "
                "modified after it was verified; recompile it"
            )
        out[name] = raw
    return out


def receive_stage(
    payload: Mapping[str, bytes], index: int, dest: str | os.PathLike[str], expect_manifest: str
) -> Artifact:
    """Verify a shipped stage and write it into ``dest`` (an empty private directory); return an
    `Artifact` rooted there from which the engine can load stage ``index``.

    Checks, before anything is written but the manifest: the payload holds bytes under plain
    names only; the manifest's sha256 is ``expect_manifest``; the manifest parses and passes the
    schema; the stage's file and weights match their sha256 in it; the stage graph refers to no
    external data but its own weights file.

    Raises:
        ArtifactError: any check fails (the message names the file).
    """
    out = Path(dest)
    if not isinstance(payload, Mapping) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in payload.items()
    ):
        raise ArtifactError("a shipped stage must map file names to bytes")
    if sum(len(v) for v in payload.values()) > _MAX_PAYLOAD:
        raise ArtifactError("a shipped stage is larger than 1 TiB; refusing it")
    manifest = payload.get(MANIFEST)
    if manifest is None or hashlib.sha256(manifest).hexdigest() != expect_manifest:
        raise ArtifactError(
            "the shipped manifest does not match the sha256 of the artifact the driver verified; "
            "it was corrupted or replaced on the way"
        )
    _write_private(out / MANIFEST, manifest)
    plan, data = _plan_of(out)
    if not 0 <= index < plan.num_cores:
        raise ArtifactError(f"stage {index} does not exist: the artifact has {plan.num_cores} stages")
    st = plan.stages[index]
    for name in (st.file, st.weights_file):
        if name is not None:
            _plain_path(out, name)
    wanted = {st.file: st.sha256}
    if st.weights_file is not None:
        wanted[st.weights_file] = st.weights_sha256 or ""
    extra = sorted(set(payload) - set(wanted) - {MANIFEST})
    if extra:
        raise ArtifactError(f"the shipped stage {index} holds files it does not need: {extra}")
    for name, digest in wanted.items():
        raw = payload.get(name)
        if raw is None:
            raise ArtifactError(f"the shipped stage {index} lacks its file {name!r}")
        if hashlib.sha256(raw).hexdigest() != digest:
            raise ArtifactError(
                f"the shipped stage {index} file {name!r} does not match its sha256 in the manifest"
            )
    _external_refs(_parse_stage(out, st, payload[st.file]), st, len(payload.get(st.weights_file or "", b"")))
    for name in wanted:
        _write_private(_plain_path(out, name), payload[name])
    return _artifact(out, plan, data)


def _plain_path(root: Path, name: str) -> Path:
    """``root / name`` after checking that ``name`` is a plain file name (no separators, no dots)."""
    if not _SAFE_NAME.match(name) or name in (".", ".."):
        raise ArtifactError(
            f"file name {name!r} is not a plain file name inside the artifact directory"
        )
    return root / name


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
