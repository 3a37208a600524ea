"""``corepipe.compile(module, ...)``: export a ``torch.nn.Module`` from its example inputs, with
meaningful output names, for the compiler.

The exporter is torch's dynamo-based one (see :mod:`corepipe.frontends.torch`): it passes the
transparency tests (the compiled pipeline equals torch's own outputs) on plain modules and
transformers models, with fewer nodes than the TorchScript exporter and tied weights kept as one.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_model

from ..errors import CompileError
from .casts import float16_to_float32, has_float16, rename_uses, set_io_dtypes, value_names
from .torch import _INSTALL_HINT, _export, _forward_params, _import_torch

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["torch_dims", "export_module"]

log = logging.getLogger(__name__)

def _as_tensor(torch: Any, value: Any, float_dtype: Any) -> Any:
    """A numpy example as a tensor; float64 (numpy's default) becomes the module's float dtype."""
    if not isinstance(value, np.ndarray):
        return value
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    return tensor.to(float_dtype) if tensor.dtype == torch.float64 else tensor


def _module_inputs(
    torch: Any, module: Any, example_inputs: Any
) -> tuple[tuple[Any, ...], dict[str, Any], list[str], bool]:
    """(args, kwargs, names of the tensors in the exporter's order, whether those names are the
    user's dict keys for positional arguments: the graph's inputs must be renamed to them)."""
    if example_inputs is None:
        raise CompileError(
            f"compiling a torch module ({type(module).__name__}) needs example inputs to trace it "
            "with: example_inputs=(x,) or {'name': x}"
        )
    params = _forward_params(module)
    floats = [p.dtype for p in module.parameters() if p.dtype.is_floating_point]
    float_dtype = floats[0] if floats else torch.get_default_dtype()
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if isinstance(example_inputs, (np.ndarray, torch.Tensor)):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, Mapping):
        values = {str(k): _as_tensor(torch, v, float_dtype) for k, v in example_inputs.items()}
        if all(k in params for k in values):
            args: tuple[Any, ...] = ()
            kwargs = values
        else:  # the keys only name the graph's inputs: pass the values positionally
            args, kwargs = tuple(values.values()), {}
        names, rename = list(values), not kwargs
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(_as_tensor(torch, v, float_dtype) for v in example_inputs), {}
        names = [positional[i] if i < len(positional) else f"input_{i}" for i in range(len(args))]
        rename = False
    else:
        raise CompileError(
            f"example_inputs for a torch module must be a tensor, a tuple of them or a dict of "
            f"them, got {type(example_inputs).__name__}"
        )
    config = getattr(module, "config", None)
    if "use_cache" in params and "use_cache" not in kwargs and getattr(config, "use_cache", False):
        kwargs["use_cache"] = False  # a pipeline runs static shapes: no key/value cache outputs
    tensors = [*args, *(v for k, v in kwargs.items() if k != "use_cache")]
    return args, kwargs, [n for n, t in zip(names, tensors) if isinstance(t, torch.Tensor)], rename


def _flatten(torch: Any, out: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Name each tensor the module returns, in the order torch's exporter flattens them:
    dict and ModelOutput keys (``last_hidden_state``, ``logits``), ``output_i`` in tuples."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, Mapping):
        return [x for k, v in out.items() if v is not None for x in _flatten(torch, v, str(k))]
    if isinstance(out, (tuple, list)):
        return [
            x for i, v in enumerate(out) if v is not None
            for x in _flatten(torch, v, f"{prefix}_{i}" if prefix else f"output_{i}")
        ]
    return []


def _rename_outputs(model: onnx.ModelProto, names: Sequence[str]) -> str | None:
    """Rename the graph's outputs to ``names`` in place; the reason it cannot, or None."""
    old = [o.name for o in model.graph.output]
    if len(old) != len(names):
        return f"the exported graph has {len(old)} outputs {old}, not {len(names)}"
    if len(set(names)) != len(names) or len(set(old)) != len(old):
        return f"output names must be distinct: {list(names)} for {old}"
    others = value_names(model) - set(old)
    clash = [n for n in names if n in others]
    if clash:
        return f"names {clash} are already used inside the graph"
    for o, new in zip(model.graph.output, names):
        if o.name != new:
            rename_uses(model.graph, o.name, new, outputs_too=True)
            o.name = new
    return None


def export_module(
    module: torch.nn.Module,
    example_inputs: Any,
    path: str | pathlib.Path,
    *,
    output_names: Sequence[str] | None = None,
    opset: int = 17,
    dynamic_shapes: Any = None,
) -> dict[str, np.ndarray]:
    """Export ``module`` to ``path`` for ``corepipe.compile(module, ...)``; return its example feeds.

    The module runs once on the examples (eval mode, no grad; its training mode is restored
    after) so that its outputs can be named: the keys of a dict or a transformers
    ``ModelOutput`` (``last_hidden_state``, ``pooler_output``, ``logits``), ``output`` for a
    lone tensor, ``output_0, output_1, ...`` in a tuple; ``output_names`` overrides them.
    A transformers model whose config caches keys and values is exported with
    ``use_cache=False`` (a pipeline runs fixed shapes; cache outputs could not be fed back).
    A module that computes in float16 is run in float32 (see :mod:`corepipe.frontends.casts`)
    with float16 inputs and outputs.

    Args:
        module: the ``torch.nn.Module``.
        example_inputs: a tensor, a tuple of positional tensors, or a dict (keyword arguments
            when every key is a parameter of ``forward``, else positional, the keys naming the
            graph's inputs); numpy arrays are accepted for tensors, float64 ones (numpy's
            default) taken in the module's float dtype.
        path: the ``.onnx`` file to write.
        output_names: names for the graph's outputs, one per tensor the module returns.
        opset: the ONNX opset.
        dynamic_shapes: dims to keep free, as torch.export takes them (``{"input_ids": {1:
            Dim("sequence", max=128)}}``); the graph's ``dim_param`` names are the `Dim` names
            (`torch_dims` reads their ranges).

    Returns:
        graph input name -> numpy example, for the compiler.

    Raises:
        CompileError: no or malformed examples, wrong number of output names, or an export
            that torch.onnx cannot do (its reason is included).
    """
    torch = _import_torch()
    path = pathlib.Path(path)
    args, kwargs, names, rename = _module_inputs(torch, module, example_inputs)
    was_training = module.training
    module.eval()
    try:
        try:
            with torch.no_grad():
                flat = _flatten(torch, module(*args, **kwargs))
        except Exception as exc:
            raise CompileError(
                f"{type(module).__name__} fails on the example inputs ({type(exc).__name__}: {exc}); "
                "give example_inputs the module accepts"
            ) from exc
        if output_names is not None and len(output_names) != len(flat):
            raise CompileError(
                f"output_names has {len(output_names)} names {list(output_names)} but "
                f"{type(module).__name__} returns {len(flat)} tensors ({', '.join(n for n, _ in flat)})"
            )
        try:
            _export(module, args, kwargs, path, opset=opset, input_names=None,
                    output_names=None, dynamo=True, external_data=None, dynamic_shapes=dynamic_shapes)
        except ImportError as exc:
            raise CompileError(f"exporting a torch module needs onnxscript ({exc}): {_INSTALL_HINT}") from None
        except Exception as exc:
            root = exc.__cause__ or exc
            first = (str(root).strip().splitlines() or [""])[0]
            raise CompileError(
                f"torch.onnx.export (dynamo) cannot export {type(module).__name__}: "
                f"{type(root).__name__}: {first}"
            ) from exc
    finally:
        module.train(was_training)
    model = onnx.load(str(path), load_external_data=False)
    graph_inputs = [i.name for i in model.graph.input]
    if rename and len(graph_inputs) == len(names) and not set(names) & (value_names(model) - set(graph_inputs)):
        for vi, new in zip(model.graph.input, names):
            rename_uses(model.graph, vi.name, new, outputs_too=False)
            vi.name = new
    wanted = list(output_names) if output_names is not None else [n for n, _ in flat]
    why = _rename_outputs(model, wanted)
    if why and output_names is not None:
        raise CompileError(f"cannot name the outputs {wanted}: {why}")
    if why:
        log.info("keeping the exporter's output names: %s", why)
    if has_float16(model):
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        load_external_data_for_model(model, str(path.parent))
        out_types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        in_types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        float16_to_float32(model)
        set_io_dtypes(model, in_types, out_types)
        # Weights that were beside the graph are written there again, now in float32.
        onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data")
    else:  # the graph only: tensors stored externally keep pointing at the .data file
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return _feeds(model, args, kwargs, names, torch)


def _feeds(model: onnx.ModelProto, args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str],
           torch: Any) -> dict[str, np.ndarray]:
    """The examples keyed by the graph's input names: by name, else by position."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    by_name = dict(zip(names, tensors))
    graph_inputs = [i.name for i in model.graph.input]
    if all(n in by_name for n in graph_inputs):
        chosen = [by_name[n] for n in graph_inputs]
    elif len(graph_inputs) == len(tensors):
        chosen = tensors
    else:
        raise CompileError(
            f"cannot match the exported graph's inputs {graph_inputs} to the example inputs {names}"
        )
    return {n: t.detach().cpu().numpy() for n, t in zip(graph_inputs, chosen)}


def torch_dims(dynamic_shapes: Any) -> dict[str, tuple[int, int]]:
    """The ``{name: (min, max)}`` of the torch.export `Dim`s in ``dynamic_shapes`` (any nesting
    of dicts, lists and tuples, as torch.export takes it).

    Raises:
        CompileError: an entry that is not a `Dim`, or a `Dim` without a max (a pipeline sizes
            its buffers for the max), or one name with two ranges.
    """
    found: dict[str, tuple[int, int]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif value is not None:
            name, lo, hi = getattr(value, "__name__", None), getattr(value, "min", None), getattr(value, "max", None)
            if not isinstance(name, str) or not isinstance(lo, int):
                raise CompileError(f"dynamic_dims for a torch module are torch.export's dynamic_shapes: "
                                   f"{{input: {{axis: torch.export.Dim(name, min=, max=)}}}}; got {value!r}")
            if not isinstance(hi, int) or hi > 2**31:
                raise CompileError(f"Dim {name!r} has no max: give Dim({name!r}, max=N); the pipeline sizes "
                                   "its buffers for the largest shape")
            if name in found and found[name] != (max(1, lo), hi):
                raise CompileError(f"Dim {name!r} is given two ranges, {found[name]} and {(lo, hi)}")
            found[name] = (max(1, lo), hi)

    walk(dynamic_shapes)
    return found
