"""corepipe: compile one ONNX model into a pipeline across many cores, and run it.

`compile` also takes a TensorFlow SavedModel directory or a ``torch.nn.Module`` (converted by the
front-ends in `corepipe.frontends`); ``import corepipe.tensorflow as tfn`` gives
tensorflow-neuron's ``tfn.saved_model.compile`` call.

    >>> import corepipe
    >>> cm = corepipe.compile("model.onnx", "model_compiled/", num_cores="auto")  # doctest: +SKIP
    >>> with corepipe.load("model_compiled/") as pipe:                           # doctest: +SKIP
    ...     outputs = pipe.run(feeds)
"""

from __future__ import annotations

from ._version import __version__
from .artifact import Deployment, Plan, StagePlan, Target, TensorSpec
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

__all__ = [
    "__version__",
    "compile",
    "load",
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
