"""The one small hierarchy of errors that corepipe raises to its users.

Every message says the rule that was broken, the values involved, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CorepipeError",
    "CompileError",
    "DoesNotFitError",
    "ArtifactError",
    "InputError",
    "StageError",
    "PipelineClosedError",
    "DeploymentError",
]


class CorepipeError(Exception):
    """Base class of every error corepipe raises on purpose."""


class CompileError(CorepipeError):
    """The model cannot be compiled as asked (invalid model, bad option, too many cores...)."""


class DoesNotFitError(CompileError):
    """Some stage's resident bytes exceed the core's memory.

    Attributes:
        min_cores: the smallest core count that fits, or ``None`` when no count fits because a
            single node alone holds more than one core's memory.
        capacity: the core memory in bytes.
        needed: the bytes of the offending stage or node.
    """

    def __init__(
        self, message: str, *, min_cores: int | None, capacity: int, needed: int
    ) -> None:
        super().__init__(message)
        self.min_cores = min_cores
        self.capacity = capacity
        self.needed = needed


class ArtifactError(CorepipeError):
    """A compiled artifact is missing, corrupt, tampered with, or of an unknown format."""


class InputError(CorepipeError, ValueError):
    """A request does not match the model's input signature (names, dtypes, shapes)."""


class StageError(CorepipeError):
    """A request failed inside one stage of the pipeline.

    Attributes:
        stage: index of the stage that failed.
        request_id: the pipeline's id of the failed request (``None`` when not tied to one).
        node: name of the ONNX node that raised, when onnxruntime reported it.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: int,
        request_id: int | None = None,
        node: str | None = None,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.request_id = request_id
        self.node = node


class PipelineClosedError(CorepipeError, RuntimeError):
    """The pipeline was closed (or broke for good) and takes no more requests."""


class DeploymentError(CorepipeError, ValueError):
    """A deployment the cores cannot hold: R replicas x S stages x T threads over the cores given,
    a latency budget that no measured plan meets, or a request rate that no core count holds.

    Attributes:
        possible: what would work instead, in words (also at the end of the message).
    """

    def __init__(self, message: str, *, possible: str = "") -> None:
        super().__init__(message)
        self.possible = possible
