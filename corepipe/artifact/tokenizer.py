"""The tokenizer a decoder artifact carries: ``tokenizer.json`` (and ``tokenizer_config.json``)
copied from beside the model at compile time, hashed in the manifest (``"files"``), verified
before use, and read with the ``tokenizers`` library (`corepipe generate --prompt`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from .manifest import MANIFEST, _plain_file, _sha256_file

__all__ = ["TOKENIZER_FILES", "add_tokenizer", "tokenizer_path", "open_tokenizer"]

#: What an artifact may carry of a model's tokenizer (the first is what `open_tokenizer` reads).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def add_tokenizer(artifact_dir: str | os.PathLike[str], source_dir: str | os.PathLike[str]) -> list[str]:
    """Copy the tokenizer files found in ``source_dir`` into the artifact, their hashes into its
    manifest (rewritten atomically). Returns the names copied (none: nothing changes)."""
    root, src = Path(artifact_dir), Path(source_dir)
    found = [n for n in TOKENIZER_FILES if (src / n).is_file() and not (src / n).is_symlink()]
    if not found:
        return []
    manifest = root / MANIFEST
    data = json.loads(manifest.read_bytes())
    files = dict(data.get("files") or {})
    for name in found:
        shutil.copyfile(src / name, root / name)
        files[name] = _sha256_file(root / name)
    data["files"] = files
    tmp = root / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, manifest)
    return found


def tokenizer_path(artifact_dir: str | os.PathLike[str]) -> Path | None:
    """The artifact's verified ``tokenizer.json``, or None when it carries none.

    Raises:
        ArtifactError: the file is not the one the manifest hashed (or not a plain file).
    """
    root = Path(artifact_dir)
    data = json.loads(_plain_file(root, MANIFEST, "manifest").read_bytes())
    files = data.get("files") or {}
    name = TOKENIZER_FILES[0]
    if not isinstance(files, dict) or name not in files:
        return None
    path = _plain_file(root, name, "tokenizer")
    if _sha256_file(path) != files[name]:
        raise ArtifactError(f"{name} in {str(root)!r} does not match the hash in its manifest: it was modified; "
                            "recompile the artifact")
    return path


def open_tokenizer(path: str | os.PathLike[str]) -> Any:
    """A ``tokenizers.Tokenizer`` from an artifact directory (its verified tokenizer), a model
    directory holding ``tokenizer.json``, or a ``tokenizer.json`` file.

    Raises:
        ArtifactError: no tokenizer there, a tampered one, or ``tokenizers`` not installed.
    """
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        found = tokenizer_path(p)
    elif p.is_dir():
        found = p / TOKENIZER_FILES[0] if (p / TOKENIZER_FILES[0]).is_file() else None
    else:
        found = p if p.is_file() else None
    if found is None:
        raise ArtifactError(f"no tokenizer.json in {str(p)!r}: compile from a model directory that holds one "
                            "(it is copied into the artifact), or pass --tokenizer PATH")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ArtifactError("reading a tokenizer needs the tokenizers package: pip install tokenizers") from None
    return Tokenizer.from_file(str(found))
