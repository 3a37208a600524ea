"""The TensorFlow front-end: one SavedModel signature to an ONNX graph with static shapes, through
tf2onnx, with the example feeds (Neuron's ``model_feed_dict``) mapped onto the signature's inputs.

tensorflow and tf2onnx are optional (``pip install 'corepipe[tensorflow]'``) and imported only
when a SavedModel is converted; :func:`is_saved_model` needs neither.

Feed names. A name matches a signature input when it equals, with or without a ``:0`` suffix,
the input's key, its placeholder's name, or ``serving_default_<key>`` (the graph's own name that
``saved_model_cli`` shows). Keras 3 names its inputs ``keras_tensor...``, not the ``input_1`` of
Keras 2, so a Neuron-era feed such as ``'input_1:0'`` that matches nothing is mapped by position
when both the signature and the feeds hold exactly one input; otherwise it is an error that lists
the signature's inputs. The compiled pipeline's inputs are named after the signature's keys.

Shapes and dtypes. A feed's shape must agree with every dim the signature fixes (``?`` dims are
free: usually the batch). An input without a feed gets batch ``batch_size`` where its first dim
is free and must have no other free dim. A floating-point feed narrower than the signature's
(a float16 example for a float32 model, as in Neuron's fp16 ResNet-50) is accepted: the compiled
pipeline takes that dtype and casts to the model's dtype in its first node. numpy's default
dtypes, float64 and int64, stand for the signature's float or integer dtype (the example is cast;
the pipeline takes the signature's dtype). Other dtype differences are errors.

float16. A model that computes in float16 has its graph made float32 (weights upcast exactly; see
:mod:`corepipe.frontends.casts`) and still answers in float16. The arithmetic is the compile's
precision: for a float16 model or float16 examples with none asked, fp16 where the CPU has fp16
math, else "auto" (`corepipe.compiler.front.sources.float16_precision`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import CompileError
from .casts import float16_to_float32, has_float16, rename_uses, set_io_dtypes

__all__ = ["INSTALL_HINT", "SignatureInput", "Conversion", "is_saved_model", "match_feeds", "convert_saved_model",
           "saved_model_dim"]

INSTALL_HINT = "pip install 'corepipe[tensorflow]'"
_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")  # TensorFlow's rule for op names
log = logging.getLogger(__name__)

#: A feed: an example array, or (from the command line) a shape whose dtype is the signature's.
Feed = Any


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding a TensorFlow SavedModel (``saved_model.pb``)."""
    p = Path(path)
    return p.is_dir() and ((p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file())


@dataclass(frozen=True)
class SignatureInput:
    """One input of a SavedModel signature: its key, placeholder name, dtype and shape
    (``None`` for a free dim; ``shape=None`` for an unknown rank)."""

    key: str
    tensor: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.key}: {self.dtype}[{dims}]"


@dataclass
class Conversion:
    """A converted signature: the ONNX model, its example feeds keyed by graph input name, the
    feed name -> input name mapping, and notes on casts made (for logs and the compile result)."""

    model: onnx.ModelProto
    examples: dict[str, np.ndarray]
    feed_names: dict[str, str]
    notes: list[str] = field(default_factory=list)
    #: "model" when the model computes in float16, "examples" when only examples are float16.
    float16: str | None = None


def _strip(name: str) -> str:
    return name.removesuffix(":0")


def match_feeds(
    inputs: Sequence[SignatureInput], feeds: Mapping[str, Feed], where: str
) -> dict[str, tuple[str, Feed]]:
    """Map each feed name onto a signature input (rules in the module docstring).

    Returns: signature key -> (the feed name given, the feed).
    Raises: CompileError naming the feed, the signature's inputs and the fix.
    """
    out: dict[str, tuple[str, Feed]] = {}
    listing = ", ".join(i.describe() for i in inputs)
    for name, value in feeds.items():
        want = _strip(str(name))
        hit = next(
            (i for i in inputs if want in (i.key, _strip(i.tensor), f"serving_default_{i.key}")), None
        )
        if hit is None and len(inputs) == 1 and len(feeds) == 1:
            hit = inputs[0]
            log.info("feed %r is not a name in %s; it feeds the only input %r", name, where, hit.key)
        if hit is None:
            raise CompileError(
                f"feed {name!r} is not an input of {where}: expected one of {{{listing}}} (a ':0' "
                "suffix is optional); name your feeds after these keys"
            )
        if hit.key in out:
            raise CompileError(
                f"feeds {out[hit.key][0]!r} and {name!r} both name input {hit.key!r} of {where}; give one"
            )
        out[hit.key] = (str(name), value)
    return out


def _example(spec: SignatureInput, given: tuple[str, Feed] | None, batch_size: int) -> np.ndarray:
    """The example array for one input: the feed checked against the signature, or a default."""
    sig_dtype = np.dtype(spec.dtype)
    if given is None:
        shape = list(spec.shape or ())
        if spec.shape is None or any(d is None for d in shape[1:]):
            raise CompileError(
                f"signature input {spec.describe()} has free dims besides the batch: give its "
                "shape with an example (model_feed_dict, or --input NAME=SHAPE on the command line)"
            )
        return np.ones([batch_size if d is None else d for d in shape], sig_dtype)
    name, value = given
    if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
        arr = np.ones(value, sig_dtype)  # a shape alone: the signature's dtype
    else:
        arr = np.asarray(value)
    what = f"feed {name!r} (signature input {spec.key!r})"
    if spec.shape is not None:
        ok = arr.ndim == len(spec.shape) and all(
            d is None or d == a for d, a in zip(spec.shape, arr.shape)
        )
        if not ok:
            want = ", ".join("?" if d is None else str(d) for d in spec.shape)
            raise CompileError(
                f"{what}: expected shape [{want}], got {list(arr.shape)}; '?' dims are free, "
                "the others are fixed by the SavedModel"
            )
    if arr.dtype == sig_dtype:
        return arr
    if arr.dtype in (np.float64, np.int64) and arr.dtype.kind == sig_dtype.kind:
        # numpy's default dtypes (np.zeros(shape), np.ones(shape, int)) stand for the signature's
        if arr.dtype.kind == "i" and arr.size and not (
            np.iinfo(sig_dtype).min <= arr.min() and arr.max() <= np.iinfo(sig_dtype).max
        ):
            raise CompileError(f"{what}: values outside {sig_dtype}'s range; pass {sig_dtype} arrays")
        return arr.astype(sig_dtype)
    if arr.dtype.kind == "f" and sig_dtype.kind == "f":
        return arr  # e.g. float16 for a float32 model: the pipeline takes float16 and casts
    raise CompileError(
        f"{what}: expected dtype {sig_dtype}, got {arr.dtype}; pass {sig_dtype} arrays "
        "(a float16 example of a float32 input is accepted and cast)"
    )


def _import() -> tuple[Any, Any]:
    """tensorflow and tf2onnx, or a CompileError saying how to install them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise CompileError(
            f"compiling a TensorFlow SavedModel needs tensorflow and tf2onnx ({exc}): {INSTALL_HINT}"
        ) from None
    return tf, tf2onnx


@contextlib.contextmanager
def _catch_errors(value: str) -> Iterator[None]:
    """Set tf2onnx's TF2ONNX_CATCH_ERRORS for one conversion (see :func:`_convert`)."""
    old = os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ["TF2ONNX_CATCH_ERRORS"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TF2ONNX_CATCH_ERRORS", None)
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = old


def _convert(tf2onnx: Any, fn: Any, specs: list[Any], opset: int) -> onnx.ModelProto:
    """tf2onnx on ``fn`` traced at ``specs``.

    tf2onnx's graph optimizers deep-copy the whole graph (weights included) before each pass so
    that a failing pass can be skipped: a third of a ResNet-50 conversion. Convert without the
    copies first; only if that fails, convert again with them.
    """
    quiet = logging.getLogger("tf2onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        try:
            with _catch_errors("FALSE"):
                model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
        except Exception as exc:
            log.info("fast tf2onnx conversion failed (%s); converting with per-pass recovery", exc)
            with _catch_errors("TRUE"):
                model, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset)
    finally:
        quiet.setLevel(level)
    return model


def _release_memory() -> None:
    """Hand the heap that freezing and converting freed back to the OS. glibc keeps it otherwise:
    after a ResNet-50 (98 MiB of weights) the process stays at 4.3 GiB instead of 0.9 GiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _signature(tf: Any, path: Path, signature: str, tags: Sequence[str] | None) -> tuple[Any, list[SignatureInput]]:
    try:
        loaded = tf.saved_model.load(str(path), tags=list(tags) if tags else None)
    except Exception as exc:
        raise CompileError(f"TensorFlow cannot load the SavedModel at {str(path)!r}: {exc}") from None
    sigs = dict(getattr(loaded, "signatures", {}) or {})
    if signature not in sigs:
        have = ", ".join(repr(k) for k in sigs) or "none"
        raise CompileError(
            f"SavedModel {str(path)!r} has no signature {signature!r} (its signatures: {have}); "
            "export one with keras_model.export(dir) or tf.saved_model.save(obj, dir, signatures=...), "
            "or pick another with signature_def_key"
        )
    fn = sigs[signature]
    args, kwargs = fn.structured_input_signature
    if args:  # signatures take keyword arguments only; guard against odd hand-made ones
        raise CompileError(f"signature {signature!r} of {str(path)!r} takes positional inputs; corepipe needs named ones")
    inputs = []
    for key, spec in sorted(kwargs.items()):  # a SignatureDef's inputs are a map: no order of their own
        shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
        inputs.append(SignatureInput(key, spec.name or key, np.dtype(spec.dtype.as_numpy_dtype).name, shape))
    return (loaded, fn), inputs


def saved_model_dim(key: str, axis: int) -> str:
    """The name a SavedModel's free dim takes: ``"batch"`` for axis 0, else ``"<key>:<axis>"``."""
    return "batch" if axis == 0 else f"{key}:{axis}"


def _free_dims(inputs: Sequence[SignatureInput], dynamic: Sequence[str], where: str) -> dict[tuple[str, int], str]:
    """(input key, axis) -> name of each free dim named in ``dynamic``; CompileError for a name
    that is no free dim of the signature (listing those it has)."""
    have = {(i.key, a): saved_model_dim(i.key, a) for i in inputs if i.shape is not None
            for a, d in enumerate(i.shape) if d is None}
    unknown = sorted(set(dynamic) - set(have.values()))
    if unknown:
        names = sorted(set(have.values()))
        raise CompileError(f"dynamic dims {unknown} are not free dims of {where}; its free (None) dims are "
                           f"{names or 'none'} (axis 0 is 'batch', others '<input>:<axis>')")
    return {k: v for k, v in have.items() if v in set(dynamic)}


def convert_saved_model(
    path: str | os.PathLike[str],
    feeds: Mapping[str, Feed] | None = None,
    *,
    signature: str = "serving_default",
    tags: Sequence[str] | None = None,
    batch_size: int = 1,
    opset: int = 17,
    dynamic: Sequence[str] = (),
) -> Conversion:
    """Convert one signature of the SavedModel at ``path`` to ONNX with static shapes (but for
    the free dims named in ``dynamic``).

    Args:
        path: the SavedModel directory.
        feeds: feed name -> example array (or a shape tuple: the signature's dtype); names as in
            the module docstring. Inputs without a feed get batch ``batch_size``.
        signature: the signature key (``serving_default``, what Keras' ``export`` writes).
        tags: the MetaGraph tags (default: the SavedModel's only MetaGraph).
        batch_size: the batch of inputs without a feed.
        opset: the ONNX opset tf2onnx writes.
        dynamic: free (None) dims of the signature to keep free, by name: ``"batch"`` is axis 0
            of every input whose axis 0 is free, ``"<key>:<axis>"`` any other free dim; the
            graph's inputs carry these names (`saved_model_dim`) for ``compile``'s
            ``dynamic_dims``.

    Returns:
        A `Conversion`: graph inputs named after the signature's keys, static shapes, float16
        computation moved to float32, inputs in the feeds' dtypes, outputs in the model's.

    Raises:
        CompileError: not a SavedModel, tensorflow/tf2onnx missing, no such signature, a feed
            that names no input, a wrong shape or dtype, or a conversion tf2onnx cannot do.
    """
    path = Path(path)
    if not is_saved_model(path):
        found = "no such directory" if not path.exists() else (
            "a file" if not path.is_dir() else f"a directory without saved_model.pb (holds: "
            f"{', '.join(sorted(p.name for p in path.iterdir())[:6]) or 'nothing'})"
        )
        raise CompileError(
            f"{str(path)!r} is not a TensorFlow SavedModel: expected a directory with saved_model.pb "
            f"(written by keras_model.export or tf.saved_model.save), found {found}"
        )
    if batch_size < 1:
        raise CompileError(f"batch_size must be a positive int, got {batch_size!r}")
    tf, tf2onnx = _import()
    (keep_alive, fn), inputs = _signature(tf, path, signature, tags)
    where = f"signature {signature!r} of {str(path)!r}"
    given = match_feeds(inputs, feeds or {}, where)
    examples = {i.key: _example(i, given.get(i.key), batch_size) for i in inputs}

    keys = [i.key for i in inputs]
    # Named after the keys, tf2onnx names the graph's inputs so; a key TF cannot use as an op
    # name is left unnamed and the input renamed by position below.
    free = _free_dims(inputs, dynamic, where)
    specs = [
        tf.TensorSpec([None if (i.key, a) in free else d for a, d in enumerate(examples[i.key].shape)],
                      tf.as_dtype(np.dtype(i.dtype)), name=i.key if _OP_NAME.fullmatch(i.key) else None)
        for i in inputs
    ]

    @tf.function(autograph=False)
    def call(*tensors: Any) -> Any:
        return fn(**dict(zip(keys, tensors)))

    log.info("converting %s with tf2onnx (opset %d)", where, opset)
    try:
        model = _convert(tf2onnx, call, specs, opset)
    except Exception as exc:
        raise CompileError(f"tf2onnx cannot convert {where}: {type(exc).__name__}: {exc}") from exc
    finally:
        del keep_alive, call
        _release_memory()
    # tf2onnx leaves an op it cannot convert in the graph as it is (continue_on_error): name them.
    unknown = [f"{n.op_type} ({n.name})" for n in model.graph.node
               if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:
        raise CompileError(
            f"tf2onnx cannot convert {len(unknown)} TensorFlow ops of {where} to ONNX: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}; corepipe runs standard "
            "ONNX ops only, so the model needs those parts rewritten with supported TensorFlow ops"
        )
    graph_inputs = [i.name for i in model.graph.input]
    if graph_inputs != keys:  # tf2onnx names them after the TensorSpecs; rename by position if not
        if len(graph_inputs) != len(keys):
            raise CompileError(f"tf2onnx gave inputs {graph_inputs} for signature inputs {keys} of {where}")
        for old, new in zip(graph_inputs, keys):
            rename_uses(model.graph, old, new, outputs_too=False)
            model.graph.input[keys.index(new)].name = new

    for vi in model.graph.input:  # name the free dims as `compile`'s dynamic_dims does
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if (vi.name, axis) in free:
                d.dim_param = free[(vi.name, axis)]
    conv = Conversion(model, examples, {name: key for key, (name, _) in given.items()})
    fixed = [i.key for i in inputs if i.key not in given and i.shape and i.shape[0] is None and (i.key, 0) not in free]
    if fixed:  # say so: a batch fixed without being asked takes that batch only
        conv.notes.append(
            f"signature input{'s' if len(fixed) > 1 else ''} {', '.join(map(repr, fixed))}: no example given, so the "
            f"free batch dim (axis 0) is fixed at {batch_size}; keep it free with dynamic_dims={{'batch': (1, 8)}} "
            "(up to 8 rows; any max), or give an example of the batch you serve")
    out_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    if has_float16(model):
        float16_to_float32(model)
        conv.float16 = "model"
        conv.notes.append("the model computes in float16: its graph is made float32 (weights upcast exactly); "
                          "the compile precision sets the arithmetic")
    want_in = {k: helper.np_dtype_to_tensor_dtype(a.dtype) for k, a in examples.items()}
    conv.notes += set_io_dtypes(model, want_in, out_types)
    if conv.float16 is None and any(a.dtype == np.float16 for a in examples.values()):
        conv.float16 = "examples"
    for note in conv.notes:
        log.info("%s: %s", where, note)
    return conv
