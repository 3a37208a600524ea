"""What a decoder pipeline's hand-off rings hold: step messages, not model tensors.

Ring ``k`` (into stage ``k``; ring N back to the client) holds per slot the step header
(`header.WORDS` int64 words per sequence) and, for the B rows of the step, ``input_ids [B, n]``
into stage 0, the hidden state ``[B, n, ...]`` between stages, and ``tokens [B]`` out of the last.
A step is a batch of prefills of one length (B x n up to ``max_length`` tokens) or of decode steps (n = 1, B up to
``max_sequences``), so each tensor's slot is sized for ``max(max_length, max_sequences)`` rows.
"""

from __future__ import annotations

from ...artifact.plan import Plan, TensorSpec
from .header import TOKENS, WORDS

__all__ = ["HEADER", "ring_specs", "frame_specs", "hidden_names"]

#: The name of the header tensor in every ring slot.
HEADER = "step_header"


def hidden_names(plan: Plan, b: int) -> list[str]:
    """The tensors boundary ``b`` (0 < b < stages) carries for a step: the hidden state(s) stage
    ``b - 1`` writes and a later stage reads."""
    spec = plan.decoder
    assert spec is not None
    local = {p.present for p in spec.pairs} | {spec.logits}
    names = {t.name for t in plan.boundaries[b]}
    return [n for n in plan.stages[b - 1].outputs if n in names and n not in local]


def ring_specs(plan: Plan) -> list[tuple[TensorSpec, ...]]:
    """The tensors each ring's slot holds, sized for the largest step (one per boundary)."""
    spec = plan.decoder
    assert spec is not None
    rows = max(spec.max_length, spec.max_sequences)
    head = TensorSpec(HEADER, "int64", (spec.max_sequences, WORDS))
    out: list[tuple[TensorSpec, ...]] = [(head, TensorSpec(spec.input_ids, "int64", (rows,)))]
    for b in range(1, plan.num_cores):
        by_name = {t.name: t for t in plan.boundaries[b]}
        out.append((head, *(TensorSpec(n, by_name[n].dtype, (rows, *by_name[n].shape[2:]))
                            for n in hidden_names(plan, b))))
    out.append((head, TensorSpec(TOKENS, "int64", (spec.max_sequences,))))
    return out


def frame_specs(plan: Plan) -> list[tuple[TensorSpec, ...]]:
    """What each boundary's step message holds when it travels as a frame (the ``ray`` stream):
    the tensors of `ring_specs` at their true ranks (``input_ids [B, n]``, the hidden state
    ``[B, n, ...]``), any size within the largest step's bytes (a receiver allocates exactly
    what a frame announces, never more than that bound)."""
    spec = plan.decoder
    assert spec is not None
    b_max, n_max = spec.max_sequences, max(spec.max_length, spec.max_sequences)
    head = TensorSpec(HEADER, "int64", (b_max, WORDS), dynamic=True)
    out: list[tuple[TensorSpec, ...]] = [(head, TensorSpec(spec.input_ids, "int64", (b_max, n_max), dynamic=True))]
    for b in range(1, plan.num_cores):
        by_name = {t.name: t for t in plan.boundaries[b]}
        out.append((head, *(TensorSpec(n, by_name[n].dtype, (b_max, n_max, *by_name[n].shape[2:]), dynamic=True)
                            for n in hidden_names(plan, b))))
    out.append((head, TensorSpec(TOKENS, "int64", (b_max,), dynamic=True)))
    return out
