"""corepipe: compile one ONNX model into a pipeline across many cores, and run it.

`compile` also takes a TensorFlow SavedModel directory or a ``torch.nn.Module`` (converted by the
front-ends in `corepipe.frontends`); ``import corepipe.tensorflow as tfn`` gives
tensorflow-neuron's ``tfn.saved_model.compile`` call.

    >>> import corepipe
    >>> cm = corepipe.compile("model.onnx", "model_compiled/", num_cores="auto")  # doctest: +SKIP
    >>> with corepipe.load("model_compiled/") as pipe:                           # doctest: +SKIP
    ...     outputs = pipe.run(feeds)
    >>> corepipe.bench("model.onnx", num_cores=4).ratios                       # doctest: +SKIP
    >>> corepipe.tune("model.onnx", "model_tuned/", num_cores=4).chosen        # doctest: +SKIP

``corepipe.bench`` and ``corepipe.tune`` are the functions; their packages hold the types
(``from corepipe.bench import BenchResult``, ``from corepipe.tune import TuneResult``).
"""

from __future__ import annotations

from ._version import __version__
from .artifact import Deployment, Plan, StagePlan, Target, TensorSpec
from .bench import BenchResult, bench
from .compiler import CompiledModel, compile
from .errors import (
    ArtifactError,
    CompileError,
    CorepipeError,
    DeploymentError,
    DoesNotFitError,
    InputError,
    PipelineClosedError,
    StageError,
)
from .runtime import Pipeline, PipelineStats, load
from .tune import TuneResult, tune

__all__ = [
    "__version__",
    "compile",
    "load",
    "bench",
    "tune",
    "BenchResult",
    "TuneResult",
    "CompiledModel",
    "Pipeline",
    "PipelineStats",
    "Plan",
    "Deployment",
    "StagePlan",
    "TensorSpec",
    "Target",
    "CorepipeError",
    "CompileError",
    "DoesNotFitError",
    "ArtifactError",
    "InputError",
    "StageError",
    "PipelineClosedError",
    "DeploymentError",
]
