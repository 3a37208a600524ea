"""``import corepipe.tensorflow as tfn``: tensorflow-neuron's SavedModel compile call, on corepipe.

The call Neuron's users write works as it is::

    import numpy as np
    import corepipe.tensorflow as tfn

    example_input = np.zeros([1, 224, 224, 3], dtype="float16")
    result = tfn.saved_model.compile("rn50_fp16", "rn50_fp16_compiled/1",
                                     model_feed_dict={"input_1:0": example_input},
                                     compiler_args=["--static-weights", "--num-neuroncores", "16"])
    assert result["OnNeuronRatio"] > 0.5            # what Neuron's scripts check
    with corepipe.load(result.path) as pipe:        # the artifact at "rn50_fp16_compiled/1"
        out = pipe.run({"keras_tensor": example_input})

The SavedModel's ``serving_default`` signature is converted by tf2onnx and compiled by
`corepipe.compile`; feed names map onto the signature as `corepipe.frontends.tensorflow` says
(``'input_1:0'`` feeds Keras 3's lone ``keras_tensor`` input). The pipeline's inputs are named
after the signature's keys (``result["inputs"]`` maps each feed name to its input). An fp16
example makes the pipeline take fp16 inputs and cast them to the model's dtype, and asks for
16-bit speed: unless ``precision=`` or Neuron's casting flags say otherwise, the model runs at
fp16 where the CPU has fp16 math, else at ``precision="auto"`` (bf16 where it has bf16, as this
machine's avx512_bf16 does; fp32 elsewhere). It answers in the dtype the SavedModel returns.
``result["notes"]`` says which casts and which precision were chosen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .compiler import CompiledModel
from .compiler import compile as _compile
from .compiler.driver import FRONT_END
from .compiler.front.flags import parse_compiler_args
from .errors import CompileError
from .frontends.tensorflow import convert_saved_model

__all__ = ["saved_model", "CompileResult"]

#: tensorflow-neuron options that steer how Neuron splits a graph between its compiler and
#: TensorFlow; corepipe runs the whole graph in its stages, so they have no meaning here.
_NEURON_ONLY = frozenset({
    "minimum_segment_size", "no_fuse_ops", "force_fuse_ops",
    "compiler_timeout", "compiler_recovery", "convert_constants_to_variables",
    "strip_default_attrs", "protected_op_names", "op_whitelist", "supported_op_types",
})


class CompileResult(dict[str, Any]):
    """tensorflow-neuron's return value, a dict with ``'OnNeuronRatio'``, plus corepipe's facts.

    Keys: ``OnNeuronRatio`` (the share of operations that run compiled: always 1.0, since
    corepipe places every node in a stage and raises `CompileError` when it cannot),
    ``success`` (True), ``path`` (the artifact directory, as given), ``num_cores`` (stages),
    ``inputs`` (feed name -> pipeline input name), ``notes`` (casts and precision, in words).
    Attributes: ``path`` (a `Path`), ``success``, ``compiled`` (the `CompiledModel`).
    """

    def __init__(self, compiled: CompiledModel, path: Path, inputs: dict[str, str], notes: list[str]) -> None:
        super().__init__(
            OnNeuronRatio=1.0, success=True, path=str(path), num_cores=compiled.num_cores,
            inputs=inputs, notes=list(notes),
        )
        self.compiled = compiled

    @property
    def path(self) -> Path:
        return Path(self["path"])

    @property
    def success(self) -> bool:
        return bool(self["success"])


def _compile_saved_model(
    model_dir: str | os.PathLike[str],
    new_model_dir: str | os.PathLike[str],
    *,
    batch_size: int = 1,
    model_shape_feed_dict: dict[str, Any] | None = None,
    model_feed_dict: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    signature_def_key: str | None = None,
    compiler_args: list[str] | None = None,
    dynamic_batch_size: bool | int = False,
    compiler_workdir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> CompileResult:
    """Compile the SavedModel at ``model_dir`` into a corepipe artifact at ``new_model_dir``.

    Args:
        model_dir: the SavedModel directory.
        new_model_dir: the artifact directory (``name/1``: the versioned layout serving tools
            read); parents are created, an existing artifact there is replaced.
        batch_size: the batch of inputs given neither example nor shape.
        model_shape_feed_dict: feed name -> shape list (the signature's dtype).
        model_feed_dict: feed name -> example array; fixes shapes and the inputs' dtypes.
        tags: MetaGraph tags (default: the SavedModel's only one).
        signature_def_key: the signature (default ``serving_default``).
        compiler_args: Neuron-style flags (``--static-weights``, ``--num-neuroncores N``, ...).
        dynamic_batch_size: tensorflow-neuron's flag: the pipeline takes any batch. ``True``
            keeps axis 0 of the signature's inputs free as corepipe's dynamic dim ``"batch"``,
            1..max(8, the example's batch); an int N sets that max. A larger batch runs in
            chunks (``pipe.run(feeds, split_batch=True)``; `serve` does it by itself), and
            ``corepipe.load(..., max_batch=N)`` merges waiting requests along it.
        compiler_workdir: tensorflow-neuron's scratch directory for the compile's intermediate
            files (created if missing): corepipe writes there ``converted.onnx`` (tf2onnx's
            graph of the SavedModel, what the stages are cut from) and ``compile.txt`` (the
            feeds, the stages with their node ranges, the notes). The artifact does not need it.
        **options: `corepipe.compile` options (``num_cores``, ``core_memory``, ``target``,
            ``balance``, ``engine``, ``precision``, ``export_path``, ``progress``...).

    Returns:
        A `CompileResult` (a dict: ``result["OnNeuronRatio"]``, ``result.path``).

    Raises:
        CompileError: an unknown compiler flag, a directory that is not a SavedModel, a missing
            signature, a feed name not in it, a wrong example shape or dtype, tensorflow or
            tf2onnx not installed (``pip install 'corepipe[tensorflow]'``), a tensorflow-neuron
            option corepipe has no use for, or any compile error.
    """
    neuron_only = sorted(_NEURON_ONLY & set(options))
    if neuron_only:
        raise CompileError(
            f"tensorflow-neuron options {neuron_only} choose which operations Neuron compiles and "
            "which TensorFlow runs; corepipe compiles every operation into its stages: drop them"
        )
    parse_compiler_args(compiler_args or ())  # an unknown flag fails before any conversion
    feeds: dict[str, Any] = {}
    for name, shape in (model_shape_feed_dict or {}).items():
        feeds[name] = tuple(int(d) for d in shape)
    for name, value in (model_feed_dict or {}).items():
        if name in feeds:
            raise CompileError(f"feed {name!r} is in both model_feed_dict and model_shape_feed_dict; give it once")
        feeds[name] = value
    dims = dict(options.pop("dynamic_dims", None) or {})
    if dynamic_batch_size:
        if isinstance(dynamic_batch_size, bool):
            rows = [int(v[0] if isinstance(v, tuple) else np.shape(v)[0]) for v in feeds.values() if np.ndim(v)]
            top = max([8, batch_size, *rows])
        else:
            top = int(dynamic_batch_size)
        dims.setdefault("batch", (1, top))
    conv = convert_saved_model(
        model_dir, feeds, signature=signature_def_key or "serving_default", tags=tags, batch_size=batch_size,
        dynamic=list(dims),
    )
    work = None if compiler_workdir is None else _workdir(compiler_workdir)
    if work is not None:
        _save(conv.model, work / "converted.onnx")
    compiled = _compile(conv, new_model_dir, compiler_args=compiler_args, dynamic_dims=dims or None, **options)
    notes = [n.removeprefix(FRONT_END) for n in compiled.plan.notes if n.startswith(FRONT_END)]
    result = CompileResult(compiled, Path(new_model_dir), conv.feed_names, notes)
    if work is not None:
        (work / "compile.txt").write_text(_summary(result))
    return result


def _workdir(path: str | os.PathLike[str]) -> Path:
    """``compiler_workdir``, created.

    Raises:
        CompileError: it cannot be made a directory.
    """
    work = Path(path)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompileError(f"compiler_workdir {str(path)!r} cannot be made a directory ({exc.strerror}); give a "
                           "writable directory for the compile's intermediate files, or leave it out") from None
    return work


def _save(model: onnx.ModelProto, path: Path) -> None:
    """``model`` at ``path``; its weights beside it when over protobuf's 2 GiB (on a copy: saving
    so rewrites the proto's tensors as references)."""
    if model.ByteSize() < 2**31 - 2**24:
        onnx.save_model(model, str(path))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, location=path.name + ".data")


def _summary(result: CompileResult) -> str:
    """``compile.txt``: what the compile made, in words."""
    plan = result.compiled.plan
    lines = [f"artifact: {result.path}", f"feeds: {result['inputs']}",
             f"inputs: {', '.join(t.describe() for t in plan.inputs)}",
             f"outputs: {', '.join(t.describe() for t in plan.outputs)}", f"stages: {plan.num_cores}"]
    lines += [f"  stage {i}: nodes {st.node_start}..{st.node_end - 1}" for i, st in enumerate(plan.stages)]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


class _SavedModel:
    """``tfn.saved_model``: the namespace tensorflow-neuron's users call ``compile`` on."""

    compile = staticmethod(_compile_saved_model)


saved_model = _SavedModel()
