"""The OpenVINO engine: the fastest CPU engine, and the one that runs bf16 (avx512_bf16, AMX).

OpenVINO's ONNX front-end reads corepipe's stage files, external weights and all. Each stage
is compiled for one stream of ``threads`` inference threads (``NUM_STREAMS=1``,
``INFERENCE_NUM_THREADS``) with OpenVINO's own CPU pinning off, so the worker's affinity decides
where it runs. Precision goes through ``INFERENCE_PRECISION_HINT`` (f32 / bf16 / f16); fp32 also
asks for ``EXECUTION_MODE_HINT=ACCURACY``, since on a bf16-capable CPU OpenVINO would otherwise
default to bf16. In-place runs bind `ov.Tensor` views of the hand-off slots
(``shared_memory=True``) to one infer request per slot.

What OpenVINO 2026.4 does differently from onnxruntime, recorded here so nobody rediscovers it:
- it does not check data at run time (a Gather index out of range reads 0, a Reshape to the
  wrong element count returns an empty tensor): there is no error to report;
- it crashes the whole process (SIGSEGV) compiling a graph with float16 or bfloat16 tensors at
  f32 precision, so such graphs are refused before compiling;
- its snippets (generated fused kernels) miscompile some bf16 graphs: a BERT stage that starts
  mid-encoder comes out 50 % wrong. ``snippets=False`` (the default, and what artifacts compiled
  before the per-stage choice ran) compiles with ``SNIPPETS_MODE=DISABLE``; the compiler turns
  them on for each stage its check against onnxruntime finds right with them
  (`corepipe.compiler.cut.measure`), and records the choice in the plan (`StagePlan.snippets`);
- some valid graphs it computes wrongly anyway (an If reading an outer tensor that is also a
  stage output, read from a file): the compiler checks every OpenVINO stage against
  onnxruntime on the example inputs and keeps onnxruntime where they differ.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Engine, LoadFailure, Ranges

__all__ = ["OpenVinoEngine", "dynamic_outputs", "ov_node_from_message", "tidy"]

_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_RUNTIME_NODE_RE = re.compile(r"(\w+) node with name '([^']*)'")  # [CPU] <Type> node with name '<name>'
_FRONTEND_NODE_RE = re.compile(r"<Node\((\w+)\): ([^>]*)>")  # While validating ONNX node '<Node(Op): name>'
_UNSUPPORTED_RE = re.compile(r"(?:Conversion is failed for|No conversion rule found for operations): ([^\n]+)")
_NOISE_RE = re.compile(r"Exception from \S+:\d+:\s*|Check '[^']*' failed at \S+:\d+:\s*|FrontEnd API failed with \w+:\s*")
_core: Any = None
_core_lock = threading.Lock()


def _ov_core() -> Any:
    """One `openvino.Core` per process (it owns the plugin and its thread pools)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def ov_node_from_message(message: str) -> tuple[str | None, str | None]:
    """(node, op) that an OpenVINO error message blames, from its front-end or CPU plugin text."""
    found = _FRONTEND_NODE_RE.findall(message)
    if found:
        op, node = found[-1]  # the outermost node: nested bodies fail first, their parent last
        return node.strip() or None, op
    m = _RUNTIME_NODE_RE.search(message)
    if m:
        return m.group(2) or None, m.group(1)
    m = _UNSUPPORTED_RE.search(message)
    if m:  # "Det-17, Scan-17": op type and opset
        ops = [o.strip().rsplit("-", 1)[0] for o in m.group(1).split(",") if o.strip()]
        return None, (ops[-1] if ops else None)
    return None, None


def tidy(message: str) -> str:
    """An OpenVINO message on one line, without the source locations of its internal checks."""
    text = _NOISE_RE.sub("", " ".join(line.strip() for line in message.splitlines() if line.strip()))
    return text[:600]


def _onnx_names(source: str | bytes) -> tuple[dict[str, str], dict[str, str]]:
    """(output tensor -> node name, node name -> op) of a stage graph, read without weights."""
    import onnx

    try:
        if isinstance(source, bytes):
            model = onnx.load_model_from_string(source)
        else:
            model = onnx.load(source, load_external_data=False)
    except Exception:
        return {}, {}
    by_output = {out: node.name for node in model.graph.node for out in node.output if out}
    return by_output, {node.name: node.op_type for node in model.graph.node}


def dynamic_outputs(model: str, limit: int = 3, shapes: Mapping[str, Sequence[int]] | None = None) -> list[str]:
    """What OpenVINO's own reader leaves not fully static in the stage graph at ``model`` (a
    path): up to ``limit`` lines ``"node 'name' (Op): f32[1,?,64]"``, the first in graph order
    first; ``[]`` when every op's every output has a static shape. A stage graph whose inputs
    are static can still read as dynamic here (a shape computed from a tensor's values), and
    OpenVINO's transformations then fail on it or run slower than on static shapes. ``shapes``:
    input name -> shape to read it at (a stage over dynamic dims, checked at their bounds).

    Raises:
        LoadFailure: OpenVINO cannot read the graph.
    """
    try:
        graph = _ov_core().read_model(model)
        if shapes:
            import openvino as ov

            graph.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
    except Exception as exc:
        raise LoadFailure("openvino", tidy(str(exc))) from None
    found = []
    for op in graph.get_ordered_ops():
        for out in op.outputs():
            shape = out.get_partial_shape()
            if shape.is_dynamic:
                found.append(f"node {op.get_friendly_name()!r} ({op.get_type_name()}): "
                             f"{out.get_element_type().to_string()}{shape}")
                break
        if len(found) >= limit:
            break
    return found


def _canonical(arr: np.ndarray) -> np.ndarray:
    """``arr`` viewed with numpy's canonical dtype for its kind and size: onnxruntime returns
    some int64 arrays as ``longlong`` (another numpy type of the same bytes), which OpenVINO's
    Python binding refuses ("Unsupported data type: int64")."""
    canonical = np.dtype(arr.dtype.str)
    return arr if arr.dtype.num == canonical.num else arr.view(canonical)


class OpenVinoEngine(Engine):
    """A stage compiled by OpenVINO for the CPU, one stream, ``threads`` threads.

    Over dynamic dims, each of ``variants`` is compiled from one read of the graph: a bounded
    dynamic variant (OpenVINO's ``Dimension(min, max)``) or static ones, one per bucket. Each
    compiled variant holds its own repacked copy of the weights: OpenVINO 2026.4 shares them
    within a compiled model, not across (benchmarks/RESULTS.md, "Variable shapes").
    """

    name = "openvino"

    def __init__(self, model: str | bytes, *, inputs: Sequence[str], outputs: Sequence[str],
                 threads: int = 1, precision: str = "fp32", spin: bool = True,
                 variants: Sequence[Ranges] | None = None, snippets: bool = False) -> None:
        """See `Engine`; ``snippets``: compile with OpenVINO's snippets on (only where checked
        against onnxruntime: they miscompile some bf16 graphs)."""
        super().__init__(model, inputs=inputs, outputs=outputs, threads=threads, precision=precision, spin=spin,
                         variants=variants)
        self.snippets = bool(snippets)
        if precision not in _HINT:
            raise LoadFailure(self.name, f"unknown precision {precision!r}")
        import openvino as ov

        core = _ov_core()
        try:
            if isinstance(model, bytes):
                graph = core.read_model(model, ov.Tensor(np.empty(0, np.uint8)))
            else:
                graph = core.read_model(model)
        except Exception as exc:  # an op the front-end cannot convert
            raise self._load_failure(str(exc), model) from None
        if precision == "fp32":
            names = {"f16": "float16", "bf16": "bfloat16"}
            odd = sorted({names[t] for t in {p.get_element_type().to_string() for op in graph.get_ops()
                                             for p in op.outputs()} if t in names})
            if odd:
                raise LoadFailure(self.name, (
                    f"the graph holds {'/'.join(odd)} tensors, and OpenVINO crashes (SIGSEGV) compiling "
                    "those at f32 precision; onnxruntime runs them"))
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,  # the worker pins itself; OpenVINO must not fight it
            "INFERENCE_PRECISION_HINT": _HINT[precision],
            "EXECUTION_MODE_HINT": "ACCURACY" if precision == "fp32" else "PERFORMANCE",
            **({} if self.snippets else {"SNIPPETS_MODE": "DISABLE"}),
        }
        try:
            self._variants = [core.compile_model(g, "CPU", config) for g in self._reshaped(graph)]
        except LoadFailure:
            raise
        except Exception as exc:
            raise self._load_failure(str(exc), model) from None
        del graph  # the compiled models keep what they need
        self.compiled = self._variants[0]
        self._in_ports = [self._port(self.compiled.inputs, name, "input") for name in self.inputs]
        self._out_ports = [self._port(self.compiled.outputs, name, "output") for name in self.outputs]
        # Two outputs on one port (OpenVINO merged an Identity): a slot cannot bind both.
        self._bindable = len(set(self._out_ports)) == len(self._out_ports)
        self._requests = [c.create_infer_request() for c in self._variants]
        self._request = self._requests[0]
        self._static = [all(lo == hi for ranges in v for lo, hi in ranges) for v in self.variants] or [True]
        # Runtime errors name OpenVINO's nodes, which are named after their output tensors.
        self._node_of, self._ops = _onnx_names(model) if isinstance(model, str) else ({}, {})

    # -- dynamic dims ------------------------------------------------------------------------
    def _reshaped(self, graph: Any) -> list[Any]:
        """The graph once per variant, its inputs reshaped to the variant's ranges (the graph
        itself when there are no variants). Clones share the weights' memory."""
        if not self.variants:
            return [graph]
        import openvino as ov

        out = []
        for i, ranges in enumerate(self.variants):
            g = graph if i == len(self.variants) - 1 else graph.clone()
            try:
                g.reshape({name: ov.PartialShape([ov.Dimension(lo, hi) for lo, hi in axes])
                           for name, axes in zip(self.inputs, ranges)})
            except Exception as exc:
                raise LoadFailure(self.name, f"cannot reshape the graph's inputs to {ranges}: {tidy(str(exc))}") from None
            out.append(g)
        return out

    def _variant(self, shapes: Sequence[tuple[int, ...]]) -> int:
        """The compiled variant that takes inputs of these shapes (the first that fits)."""
        if len(self._variants) == 1:
            return 0
        for v, ranges in enumerate(self.variants):
            if all(len(shape) == len(axes) and all(lo <= d <= hi for d, (lo, hi) in zip(shape, axes))
                   for shape, axes in zip(shapes, ranges)):
                return v
        raise ValueError(f"no compiled shape of this stage takes inputs of shapes {list(shapes)}")

    def _port(self, ports: Sequence[Any], name: str, kind: str) -> int:
        for i, port in enumerate(ports):
            if port.get_any_name() == name:
                return i
        for i, port in enumerate(ports):
            if name in port.get_names():
                return i
        raise LoadFailure(self.name, f"the compiled graph has no {kind} named {name!r}")

    def _load_failure(self, message: str, model: str | bytes) -> LoadFailure:
        node, op = ov_node_from_message(message)
        by_output, ops = _onnx_names(model)
        if node is not None and node not in ops:
            node = by_output.get(node, node)  # OpenVINO names a node after its output tensor
        if node is None and op is not None:  # only the op was named: the first node of that op
            node = next((name for name, kind in ops.items() if kind == op), None)
        op = ops.get(node or "", op)
        return LoadFailure(self.name, tidy(message), node=node, op=op)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._infer(feeds, shared=False)

    def run_shared(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._infer(feeds, shared=True)

    def _infer(self, feeds: Mapping[str, np.ndarray], shared: bool) -> list[np.ndarray]:
        if not self.outputs:
            return []
        # OpenVINO shares only writeable memory: a read-only input (Ray's object store hands
        # those out) is copied, a writeable one read in place.
        data = {port: _canonical(np.require(feeds[name], requirements=["C", "W"]))
                for port, name in zip(self._in_ports, self.inputs)}
        request = self._request if len(self._requests) == 1 else self._requests[self._variant([a.shape for a in data.values()])]
        result = request.infer(data, share_inputs=True, share_outputs=shared)  # not shared: fresh copies
        values = result.to_tuple()
        return [values[port] for port in self._out_ports]

    def bind(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Any:
        import openvino as ov

        if not self._bindable or any(a.size == 0 or not a.flags.c_contiguous for a in (*inputs, *outputs)):
            return None  # the caller runs and copies instead
        v = self._variant([a.shape for a in inputs])
        if self._static[v] and not self._fixed_outputs(v, [a.shape for a in outputs]):
            return None  # the caller runs, checks and copies instead
        tensors = ([ov.Tensor(_canonical(a), shared_memory=True) for a in inputs],
                   [ov.Tensor(_canonical(a), shared_memory=True) for a in outputs])
        if not self._static[v]:
            # A bounded dynamic variant: one request, its tensors set before each run (a request
            # per shape and slot would hold memory for every shape ever seen). Its output shapes
            # follow the inputs', so `run_bound` checks each one after the run.
            return (self._requests[v], list(inputs), list(outputs), tensors)
        request = self._variants[v].create_infer_request()  # one per slot: its tensors stay set
        self._set(request, tensors)
        return (request, list(inputs), list(outputs))

    def _set(self, request: Any, tensors: tuple[list[Any], list[Any]]) -> None:
        for port, t in zip(self._in_ports, tensors[0]):
            request.set_input_tensor(port, t)
        for port, t in zip(self._out_ports, tensors[1]):
            request.set_output_tensor(port, t)

    def _fixed_outputs(self, variant: int, shapes: Sequence[tuple[int, ...]]) -> bool:
        """Whether OpenVINO compiled every output port of ``variant`` to exactly ``shapes``. A
        port whose shape depends on the data would reshape a bound tensor in place to whatever it
        computes (an impossible Reshape gives (0, 0)), while the slot still says the compiled
        shape."""
        compiled = self._variants[variant]
        for port, shape in zip(self._out_ports, shapes):
            ps = compiled.outputs[port].get_partial_shape()
            if not ps.is_static or tuple(int(d) for d in ps.to_shape()) != tuple(shape):
                return False
        return True

    def run_bound(self, binding: Any) -> None:
        if not self.outputs:
            return
        request = binding[0]
        if len(binding) == 4:  # a dynamic variant's shared request
            self._set(request, binding[3])
        if self.threads == 1:
            # One thread: run on the calling thread (its core), with no hand-over to OpenVINO's
            # stream thread and back. share_outputs: the results are views of the bound tensors,
            # never copies (benchmarks/RESULTS.md, "OpenVINO settings against the THROUGHPUT peer").
            request.infer(share_outputs=True)
        else:  # several threads: the stream's own threads (its arena) run it
            request.start_async()
            request.wait()
        if len(binding) == 4:  # OpenVINO reshapes a dynamic port's tensor to what it computed
            for name, port, arr in zip(self.outputs, self._out_ports, binding[2]):
                got = tuple(request.get_output_tensor(port).shape)
                if got != arr.shape:
                    raise RuntimeError(f"output {name!r} came out {list(got)}, where the request's "
                                       f"shapes give {list(arr.shape)}")

    def addresses(self, binding: Any) -> tuple[list[int], list[int]]:
        request = binding[0]
        return ([int(request.get_input_tensor(p).data.ctypes.data) for p in self._in_ports],
                [int(request.get_output_tensor(p).data.ctypes.data) for p in self._out_ports])

    def describe(self, exc: BaseException) -> str:
        return tidy(str(exc))

    def failing_node(self, message: str) -> str | None:
        node, _ = ov_node_from_message(message)
        if node is None or node in self._ops:
            return node
        return self._node_of.get(node, node)
