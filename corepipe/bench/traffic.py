"""What a measurement sends (`Traffic`), and the model it is sent to, as a file every peer can read.

`Traffic` is the one object the harness passes down to every setup it measures, so a new kind of
traffic (a mix of sequence lengths, batches) is one new field here, read where requests are made,
rather than one more argument threaded through every function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..artifact.dims import ShapeProfile
from ..artifact.plan import TensorSpec
from ..errors import CorepipeError

__all__ = ["Traffic", "example_feeds", "resolve_model", "ModelSource"]

#: What `corepipe.bench` and `corepipe.tune` measure: an .onnx path, ``"zoo:NAME"`` or a ModelProto.
ModelSource = str | os.PathLike[str] | onnx.ModelProto


@dataclass(frozen=True)
class Traffic:
    """The requests each measurement sends.

    Attributes:
        inputs: one request, ``name -> array`` (default: deterministic random inputs of the
            model's signature, from `example_feeds`; a built-in model's own example).
        requests: requests per measurement (a run of the K-sessions peer splits them across K).
        warmup: unmeasured requests before each measurement.
        seconds: where set, measurements stream for this long instead (at least ``requests``
            requests, sized from a short probe); `corepipe.tune` measures this way.
        profile: mixed traffic: each request's dims (lengths) drawn from this profile with
            ``seed`` (`corepipe.bench.lengths`); None: every request is ``inputs``.
        seed: the draw's seed (the same requests in every setup and every run).
        concurrency: a closed loop of this many clients (each sends its next request when
            its answer is back; dynamic batching merges what waits); None: as many in flight
            as each setup takes.
    """

    inputs: Mapping[str, np.ndarray] | None = None
    requests: int = 64
    warmup: int = 5
    seconds: float | None = None
    profile: ShapeProfile | None = None
    seed: int = 0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more, got {self.warmup}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")

    def draws(self, count: int | None = None) -> list[dict[str, int]]:
        """The dims of each request, drawn from ``profile`` with ``seed`` (empty without one)."""
        if self.profile is None:
            return []
        return self.profile.sample(count or self.requests, seed=self.seed)

    def feeds(self, specs: Sequence[TensorSpec], fallback: Mapping[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
        """The request to send: ``inputs``, else ``fallback`` (a built-in model's example), else
        `example_feeds` of ``specs``."""
        return dict(self.inputs or fallback or example_feeds(specs))


def example_feeds(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs matching ``specs``: normal floats, ints in [0, 100), random bools."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            out[spec.name] = rng.standard_normal(spec.shape).astype(dt)
        elif dt.kind in "iu":
            out[spec.name] = rng.integers(0, 100, size=spec.shape).astype(dt)
        elif dt.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=spec.shape).astype(bool)
        else:
            out[spec.name] = np.zeros(spec.shape, dtype=dt)
    return out


def resolve_model(model: ModelSource, workdir: Path) -> tuple[Path, dict[str, np.ndarray] | None]:
    """``(an .onnx file every peer process can read, the model's own example request or None)``.

    A built-in ``zoo:NAME`` and a ModelProto are saved under ``workdir`` (weights as external
    data); a path is used where it is.

    Raises:
        CorepipeError: a path that does not exist, or another kind of model.
    """
    if isinstance(model, onnx.ModelProto):
        path = workdir / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
        return path, None
    text = os.fspath(model)
    if text.startswith("zoo:"):
        from .. import zoo

        proto, feeds = zoo.get(text[4:])
        path = workdir / f"{text[4:]}.onnx"
        onnx.save_model(proto, str(path), save_as_external_data=True, location=path.name + ".data")
        return path, feeds
    path = Path(text)
    if not path.is_file():
        raise CorepipeError(
            f"model {text!r} is not an .onnx file" + ("" if path.exists() else " (it does not exist)")
            + ": benchmarking needs an .onnx file, a ModelProto or zoo:NAME (export other models first: "
            "corepipe.frontends)")
    return path, None
