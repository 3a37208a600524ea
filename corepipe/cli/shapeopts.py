"""The shape options of `corepipe compile` (dynamic dims, buckets, pad values, shape profile),
read into `corepipe.compile`'s keyword arguments, and what `inspect` says about a model's
symbolic dims and a plan's shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..artifact.dims import ShapeProfile, parse_bucket_option, parse_dim_option
from ..artifact.plan import Plan
from ..bench.lengths import parse_lengths
from ..errors import CorepipeError

__all__ = ["Dynamic", "Buckets", "PadValues", "Profile", "shape_kwargs", "shape_lines", "model_summary",
           "lengths_option"]

Dynamic = Annotated[list[str] | None, typer.Option(
    "--dynamic", metavar="DIM=MIN:MAX",
    help="Keep a symbolic dim (ONNX dim_param, listed by `corepipe inspect MODEL.onnx`) free within "
    "a range, e.g. sequence=1:128 (repeatable). Requests may then bring any size in range.",
    show_default=False)]
Buckets = Annotated[list[str] | None, typer.Option(
    "--buckets", metavar="DIM=S,S,...|none",
    help="With --dynamic: pad requests up to these sizes and run static graphs per bucket, e.g. "
    "sequence=16,32,64,128 (repeatable); none: every stage runs each shape natively. Default: "
    "measure both per stage and keep the faster (auto).", show_default=False)]
PadValues = Annotated[list[str] | None, typer.Option(
    "--pad-value", metavar="INPUT=VALUE",
    help="The value padding fills an input with (default 0), e.g. input_ids=0 (repeatable).",
    show_default=False)]
Profile = Annotated[str | None, typer.Option(
    "--shape-profile", metavar="DIM=LO:HI|DIM~MEDIAN:CAP|DIM=V,V,...",
    help="The shapes traffic brings, to balance the cut and choose buckets for: uniform LO..HI, "
    "log-normal with this median capped at CAP, or values seen (default: the example's).",
    show_default=False)]


def shape_kwargs(dynamic: list[str] | None, buckets: list[str] | None, pads: list[str] | None,
                 profile: str | None) -> dict[str, Any]:
    """`corepipe.compile`'s ``dynamic_dims``, ``buckets``, ``pad_values`` and ``shape_profile``.

    Raises:
        typer.BadParameter: an option that does not parse, naming it and the form it takes.
    """
    out: dict[str, Any] = {}
    try:
        if dynamic:
            out["dynamic_dims"] = dict(parse_dim_option(text) for text in dynamic)
        if buckets:
            if [b.strip().lower() for b in buckets] == ["none"]:
                out["buckets"] = None
            else:
                out["buckets"] = dict(parse_bucket_option(text) for text in buckets)
        if pads:
            out["pad_values"] = dict(_pad(text) for text in pads)
        if profile:
            out["shape_profile"] = ShapeProfile.parse(profile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return out


def _pad(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name or number != number:
        raise ValueError(f"cannot read --pad-value {text!r}: write INPUT=NUMBER, e.g. input_ids=0")
    return name, int(number) if number.is_integer() else number


def shape_lines(plan: Plan) -> list[str]:
    """What a plan over dynamic dims says about its shapes: ranges, buckets, each stage's mode
    and its costs at the bounds, and how the mode was chosen."""
    shapes = plan.shapes
    if shapes is None:
        return []
    dims = ", ".join(f"{name} {lo}..{hi}" for name, (lo, hi) in shapes.dims.items())
    lines = [f"dynamic dims: {dims}" + (f" (batch: {shapes.batch})" if shapes.batch else "")]
    if shapes.buckets:
        pads = f"; pad values {dict(shapes.pad_values)}" if shapes.pad_values else ""
        lines.append("buckets: " + "; ".join(f"{d} {list(s)}" for d, s in shapes.buckets.items()) + pads)
    for st in plan.stages:
        c = st.shape_costs or {}
        est = " / ".join(f"{c[k] * 1e3:.3g}" for k in ("min_s", "typical_s", "max_s") if k in c)
        text = f"  stage {st.index}: {st.shape_mode}" + (f"; est. {est} ms at min / typical / max" if est else "")
        if "dynamic_s" in c and "buckets_s" in c:
            text += f"; measured over the profile: dynamic {c['dynamic_s'] * 1e3:.3g} ms, buckets {c['buckets_s'] * 1e3:.3g} ms"
        lines.append(text)
    lines.extend(n for n in plan.notes if n.startswith("buckets"))
    return lines


def model_summary(path: Path) -> str:
    """An .onnx model's inputs and outputs, with its symbolic dims and where each appears.

    Raises:
        CompileError: the file is not an ONNX model.
    """
    import onnx

    from ..compiler.shaping.dynamic import describe_symbolic_dims
    from ..errors import CompileError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CompileError(f"{str(path)!r} is neither an artifact directory nor an ONNX model: {exc}") from None
    inits = {t.name for t in model.graph.initializer}

    def sig(values: Any) -> str:
        parts = []
        for vi in values:
            dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                    for d in vi.type.tensor_type.shape.dim]
            elem = onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
            parts.append(f"{vi.name} {elem}[{','.join(dims)}]")
        return ", ".join(parts)

    from ..compiler.decoder.statepairs import find_pairs

    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    batch = ids.type.tensor_type.shape.dim[0].dim_param if ids is not None and ids.type.tensor_type.shape.dim else None
    try:
        pairs = find_pairs(model, "auto", batch or None)
    except CompileError:
        pairs = []
    state = (f"\nstate pairs: {len(pairs)} ({pairs[0].past} -> {pairs[0].present}, ...): a decoder; `compile` keeps "
             "each pair in its stage (--state none: the client carries them)") if pairs else ""
    return (f"model {path}: {len(model.graph.node)} nodes, opset "
            f"{max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default='?')}\n"
            f"inputs {sig(i for i in model.graph.input if i.name not in inits)}\n"
            f"outputs {sig(model.graph.output)}\n"
            f"symbolic dims: {describe_symbolic_dims(model)}{state}")


def lengths_option(lengths: str | None) -> ShapeProfile | None:
    """``--lengths`` of `bench` and `tune` read into the traffic profile their library calls take
    (None when not given); a spec that does not parse is the flag's own error."""
    if lengths is None:
        return None
    try:
        return parse_lengths(lengths)
    except CorepipeError as exc:
        raise typer.BadParameter(f"--lengths: {exc}") from None
