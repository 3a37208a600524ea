"""How fast each engine runs a stage on this machine: a small on-disk cache of one-core times.

`engine="auto"` chooses, per stage, the engine that runs it faster on the machine at hand (on an
AVX2-only EPYC onnxruntime beats OpenVINO on ResNet-50; on a CPU with AVX-512 OpenVINO usually
wins). The compiler times each stage it checks on every engine with one thread; this module keeps
those times so that the next compile of the same stage on the same machine does not time it again.

The cache is one JSON file per *machine key*: the CPU's name and the instruction-set flags
corepipe sees (after ``COREPIPE_CPU_MASK``, `corepipe.engines.cpu`), the installed onnxruntime
and OpenVINO versions and the precision. Inside, each stage (named by the compiler: the source
model's hash, the node range and the input shapes) maps engine -> seconds. It lives under
``$XDG_CACHE_HOME/corepipe`` (default ``~/.cache/corepipe``), or ``$COREPIPE_CACHE_DIR``.

``COREPIPE_ENGINE_PROBE`` controls it: ``on`` (default; read and write), ``refresh`` (time
again and overwrite), ``off`` (neither time nor read: ``auto`` then prefers OpenVINO wherever it
runs a stage, as before the probe). A file that cannot be read or parsed is ignored with a
warning, timed again and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import CompileError
from .cpu import cpu_math

__all__ = ["PROBE_ENV", "PROBE_MODES", "CACHE_ENV", "SpeedCache", "cache_dir", "machine_key", "probe_mode"]

#: How the one-core engine probe behaves: ``on``, ``refresh`` or ``off`` (see the module).
PROBE_ENV = "COREPIPE_ENGINE_PROBE"
PROBE_MODES = ("on", "refresh", "off")
#: Where the cache lives, overriding ``$XDG_CACHE_HOME/corepipe``.
CACHE_ENV = "COREPIPE_CACHE_DIR"
_FORMAT = 1


def probe_mode() -> str:
    """``COREPIPE_ENGINE_PROBE``'s value (default ``on``).

    Raises:
        CompileError: a value other than `PROBE_MODES`, naming them.
    """
    mode = os.environ.get(PROBE_ENV, "on").strip().lower() or "on"
    if mode not in PROBE_MODES:
        raise CompileError(f"{PROBE_ENV}={mode!r}: expected one of {list(PROBE_MODES)} (or unset it)")
    return mode


def cache_dir() -> Path:
    """``$COREPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/corepipe``, else ``~/.cache/corepipe``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corepipe"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_key(precision: str) -> dict[str, str]:
    """What engine speeds depend on, besides the stage: the CPU (name and the flags corepipe sees,
    so ``COREPIPE_CPU_MASK`` gives another key), the engines' versions and the precision."""
    cpu = cpu_math()
    return {
        "cpu": cpu.name,
        "flags": " ".join(sorted(cpu.flags)),
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "precision": precision,
    }


class SpeedCache:
    """One machine key's cached stage times: `get`, `put`, then `save` (atomic; a no-op when
    nothing changed or the probe is off).

    >>> cache = SpeedCache.open("fp32")              # doctest: +SKIP
    >>> cache.get("sha:0-120:x(1, 3, 224, 224)")     # doctest: +SKIP
    {'onnxruntime': 0.041, 'openvino': 0.052}
    """

    def __init__(self, path: Path, key: Mapping[str, str], stages: dict[str, dict[str, float]],
                 mode: str) -> None:
        self.path = path
        self.key = dict(key)
        self.mode = mode
        self._stages = stages
        self._dirty = False

    @classmethod
    def open(cls, precision: str, directory: Path | None = None) -> SpeedCache:
        """The cache for this machine at ``precision``; empty when absent, unreadable (with a
        warning) or refreshed (``COREPIPE_ENGINE_PROBE=refresh``)."""
        key = machine_key(precision)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        path = (directory or cache_dir()) / "engine-speeds" / f"{digest}.json"
        mode = probe_mode()
        stages: dict[str, dict[str, float]] = {}
        if mode == "on" and path.exists():
            try:
                stages = _parse(json.loads(path.read_text()), key)
            except (OSError, ValueError) as exc:
                warnings.warn(f"corepipe: ignoring the engine-speed cache {path} ({exc}); the stages are "
                              "timed again and the file rewritten", RuntimeWarning, stacklevel=2)
                stages = {}
                if os.access(path.parent, os.W_OK):
                    cls(path, key, {}, mode)._force_save()
        return cls(path, key, stages, mode)

    @property
    def enabled(self) -> bool:
        """False with ``COREPIPE_ENGINE_PROBE=off``: nothing is timed, read or written."""
        return self.mode != "off"

    def get(self, stage: str) -> dict[str, float] | None:
        """Each engine's one-core seconds for ``stage``, or None when not cached."""
        found = self._stages.get(stage)
        return dict(found) if found else None

    def put(self, stage: str, seconds: Mapping[str, float]) -> None:
        if self.enabled and seconds:
            self._stages[stage] = {e: float(s) for e, s in seconds.items()}
            self._dirty = True

    def save(self) -> None:
        """Write the file if anything changed; a cache that cannot be written is skipped with a warning."""
        if self._dirty and self.enabled:
            self._force_save()

    def _force_save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": _FORMAT, "machine": self.key, "stages": self._stages},
                                      indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as exc:
            warnings.warn(f"corepipe: cannot write the engine-speed cache {self.path} ({exc}); "
                          f"set {CACHE_ENV} to a writable directory or {PROBE_ENV}=off", RuntimeWarning,
                          stacklevel=3)


def _parse(data: Any, key: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """The stages of a cache file, checked: its format, its machine key, seconds as positive numbers."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"not a format-{_FORMAT} engine-speed cache")
    if data.get("machine") != dict(key):
        raise ValueError("it was written for another machine key")
    stages = data.get("stages")
    if not isinstance(stages, dict):
        raise ValueError("'stages' is not an object")
    out: dict[str, dict[str, float]] = {}
    for name, times in stages.items():
        if not isinstance(times, dict) or not all(
                isinstance(e, str) and type(s) in (int, float) and s > 0 for e, s in times.items()):
            raise ValueError(f"stage {name!r} does not map engines to positive seconds")
        out[str(name)] = {e: float(s) for e, s in times.items()}
    return out
