"""Small ONNX graphs (built in code) on which naive pipeline partitioners break.

Each ``case_<name>()`` returns a :class:`GraphCase`: a model that passes
``onnx.checker.check_model(model, full_check=True)`` and runs in onnxruntime on ``feeds``
(opset 17, IR 8, deterministic values). Nodes are listed in topological order and chosen so
that cutting the list into 2, 3 or 4 contiguous stages puts the interesting tensors across
cuts.

Use::

    from graphcases import CASES, all_cases, GraphCase, broken_models, big_weight_model

(``tests/`` is on ``sys.path`` under pytest's default import mode; from the repo root
``tests.graphcases`` works as well.) ``run_reference(model, feeds)`` runs one onnxruntime
session and returns ``{output_name: array}``.
"""

from __future__ import annotations

from collections.abc import Callable

from ._base import GraphCase, run_reference
from .broken import big_weight_model, broken_models
from .control_flow import case_if_outer_scope, case_loop_outer_scope, case_scan_outer_scope
from .dataflow import (
    case_constant_nodes,
    case_diamond_branches,
    case_identity_chain_output_twice,
    case_index_from_request,
    case_initializer_is_output,
    case_input_is_output,
    case_multi_io,
    case_output_early,
    case_shape_arith_int64,
    case_shared_weight_far,
    case_skip_far,
    case_unnamed_nodes,
    case_unused_input,
)
from .tensors import (
    case_bool_and_int_tensors,
    case_dropout_optional_output,
    case_float16,
    case_optional_empty_inputs,
    case_scalar_and_empty,
    case_symbolic_dims,
)

__all__ = ["CASES", "GraphCase", "all_cases", "big_weight_model", "broken_models", "case_index_from_request",
           "run_reference"]

CASES: list[Callable[[], GraphCase]] = [
    case_skip_far,
    case_if_outer_scope,
    case_loop_outer_scope,
    case_scan_outer_scope,
    case_shared_weight_far,
    case_optional_empty_inputs,
    case_shape_arith_int64,
    case_constant_nodes,
    case_input_is_output,
    case_initializer_is_output,
    case_output_early,
    case_float16,
    case_symbolic_dims,
    case_multi_io,
    case_unused_input,
    case_diamond_branches,
    case_bool_and_int_tensors,
    case_scalar_and_empty,
    case_identity_chain_output_twice,
    case_dropout_optional_output,
    case_unnamed_nodes,
]


def all_cases() -> list[GraphCase]:
    """Build every case (fresh models each call)."""
    return [make() for make in CASES]
