"""The PyTorch front-end: export an ``nn.Module`` to an ONNX file with static shapes.

torch is optional (``pip install 'corepipe[torch]'``) and imported lazily.
The exporter is torch's dynamo-based one (``torch.export`` + onnxscript): with torch 2.13 it
gives a static-shape graph of standard ops, fewer nodes than the legacy TorchScript exporter,
and keeps a tied weight as one initializer. Its opset-18 -> 17 down-conversion leaves opset-18
``Split(num_outputs=...)`` nodes behind; :func:`export_torch` rewrites them to opset-17 form.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import pathlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["export_torch"]

_INSTALL_HINT = "pip install 'corepipe[torch]'"
# Weights above this many bytes go to an external data file ("<name>.onnx.data") beside the model.
_EXTERNAL_DATA_BYTES = 1 << 30


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the PyTorch front-end needs torch and onnxscript: {_INSTALL_HINT}"
        ) from e
    return torch


# ------------------------------------------------------------------------------- export_torch
# Loggers that report expected, harmless events at WARNING level during every export (opset 18
# is used then converted to 17; torchvision ops are not registered).
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.onnx._internal.exporter._compat",
    "torch.onnx._internal.exporter._registration",
    "onnxscript",
    "onnxscript.version_converter",
)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's routine warnings (logs and Python warnings) for one export."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _split_to_opset17(model: onnx.ModelProto) -> int:
    """Rewrite opset-18 ``Split(num_outputs=n)`` nodes as opset-17 ``Split(x, split)``.

    The sizes come from the outputs' recorded shapes, else from the input's (opset-18
    semantics: ceil(d / n) per chunk, the last one smaller). Returns the number rewritten.
    """
    g = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    fixed = 0
    for node in g.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "num_outputs" not in attrs:
            continue
        n = attrs["num_outputs"].i
        axis = attrs["axis"].i if "axis" in attrs else 0
        sizes: list[int] | None = None
        outs = [shapes.get(o) for o in node.output]
        if all(s is not None and s[axis] > 0 for s in outs):
            sizes = [s[axis] for s in outs]  # type: ignore[index]
        elif node.input[0] in shapes and shapes[node.input[0]][axis] > 0:
            d = shapes[node.input[0]][axis]
            chunk = -(-d // n)
            sizes = [min(chunk, d - i * chunk) for i in range(n)]
        if sizes is None:
            raise RuntimeError(
                f"cannot rewrite Split node {node.name!r} to opset 17: the size of axis {axis} "
                "is unknown; export with opset=18 instead"
            )
        name, k = f"{node.name}_split_sizes", 0
        while name in taken:
            k += 1
            name = f"{node.name}_split_sizes_{k}"
        taken.add(name)
        g.initializer.append(numpy_helper.from_array(np.asarray(sizes, np.int64), name))
        del node.input[1:]
        node.input.append(name)
        keep = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(keep)
        fixed += 1
    return fixed


def export_torch(
    module: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor] | tuple[Any, ...],
    path: str | pathlib.Path,
    *,
    opset: int = 17,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamo: bool = True,
    external_data: bool | None = None,
) -> pathlib.Path:
    """Export ``module`` (eval mode, no grad) to an ONNX file with static shapes; return the path.

    Args:
        module: the torch module; it is put in eval mode.
        example_inputs: a tuple of positional arguments, or a dict whose keys name the graph
            inputs (unless ``input_names`` is given); the dict is passed as keyword arguments
            when its keys are all parameters of ``module.forward``, else positionally in order.
        path: the ``.onnx`` file to write; parent folders are created.
        opset: the ONNX opset (17 by default).
        input_names / output_names: names for the graph's inputs and outputs.
        dynamo: use torch's dynamo-based exporter (default) or, if False, the legacy
            TorchScript exporter (more Constant/Identity/Shape nodes, duplicated tied weights).
        external_data: write weights to ``<path>.data`` beside the file; None (default) does it
            only when the weights exceed 1 GiB. ``onnx.load(path)`` reads either form.

    Raises:
        ImportError: torch (or onnxscript for the dynamo exporter) is not installed.
    """
    if isinstance(example_inputs, dict):
        if input_names is None:
            input_names = list(example_inputs)
        if example_inputs and all(k in _forward_params(module) for k in example_inputs):
            args: tuple[Any, ...] = ()
            kwargs: dict[str, Any] = dict(example_inputs)
        else:  # keys are only names for the graph: pass the tensors positionally
            args, kwargs = tuple(example_inputs.values()), {}
    else:
        args, kwargs = tuple(example_inputs), {}
    return _export(module, args, kwargs, pathlib.Path(path), opset=opset, input_names=input_names,
                   output_names=output_names, dynamo=dynamo, external_data=external_data)


def _forward_params(module: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtin forward
        return {}


def _export(
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    path: pathlib.Path,
    *,
    opset: int,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamo: bool,
    external_data: bool | None,
    dynamic_shapes: Any = None,
) -> pathlib.Path:
    """Run torch.onnx.export (quietly, eval mode, no grad) and bring the file to ``opset``;
    ``dynamic_shapes`` (torch.export's form) keeps those dims free, named after their `Dim`s."""
    torch = _import_torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        n_bytes += sum(b.numel() * b.element_size() for b in module.buffers())
        external_data = n_bytes > _EXTERNAL_DATA_BYTES
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)  # the exporter appends to an existing .data file

    module.eval()
    options: dict[str, Any] = {}
    if dynamo:
        options.update(external_data=external_data, verbose=False)
        if dynamic_shapes is not None:
            options["dynamic_shapes"] = dynamic_shapes
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(
            module,
            args,
            str(path),
            kwargs=kwargs or None,
            input_names=list(input_names) if input_names is not None else None,
            output_names=list(output_names) if output_names is not None else None,
            opset_version=opset,
            dynamo=dynamo,
            **options,
        )

    if opset < 18:
        # Load the graph only; tensors stored externally keep pointing at the .data file.
        model = onnx.load(str(path), load_external_data=False)
        if _split_to_opset17(model):
            onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path
