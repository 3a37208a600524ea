"""Decoders as data: the state pairs of a decoder plan and where each one lives.

A decoder (GPT-2, Llama...) exported with past runs one step per call: it reads the key/value
cache of the earlier tokens (``past_key_values.0.key``) and writes it back grown by the new
tokens (``present.0.key``). Such an input/output couple is a `StatePair`. In a decoder plan each
pair is stage-local: the stage that holds the layer keeps its KV store, the pair never crosses a
boundary and never reaches the client. `DecoderSpec` is what `Plan.decoder` records: the step
inputs, the pairs by stage, and the bounds the KV stores are sized for.

Stage graphs of a decoder plan read, besides their boundary tensors, the step inputs
(``attention_mask``, ``position_ids``: the runtime builds them per stage) and the ``past`` of
their pairs, and write the ``present`` of their pairs; those names appear in `StagePlan.inputs`
and ``outputs`` but in no boundary (`DecoderSpec.local_inputs`, `local_outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["StatePair", "DecoderSpec"]

#: Bounds on what a manifest may ask for (a tampered one must not size a huge store).
_MAX_SEQUENCES = 2**20
_MAX_LENGTH = 2**24


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a tensor name (a non-empty string), got {value!r}")
    return value


def _count(value: Any, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{what} must be an int in {lo}..{hi}, got {value!r}")
    return value


@dataclass(frozen=True)
class StatePair:
    """A graph input and output that carry one layer's KV from one step to the next.

    Attributes:
        past: the graph input (``"past_key_values.0.key"``, ``"past.0"``).
        present: the graph output (``"present.0.key"``, ``"present.0"``).
        stage: the one stage that reads ``past`` and writes ``present``.
        batch_axis: the axis sequences stack along (0 for optimum's ``[b, h, L, d]``, 1 for the
            legacy ``[2, b, h, L, d]``).
        length_axis: the axis tokens grow along (2 for optimum, 3 for legacy).
        dtype: numpy dtype name.
        token_shape: the shape with the batch and length axes removed (``[h, d]``, ``[2, h, d]``).
    """

    past: str
    present: str
    stage: int
    batch_axis: int
    length_axis: int
    dtype: str
    token_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _name(self.past, "a state pair's past")
        _name(self.present, f"state pair {self.past!r}: its present")
        if self.past == self.present:
            raise ValueError(f"state pair {self.past!r}: past and present must be different tensors")
        _count(self.stage, f"state pair {self.past!r}: stage", 0, 2**16)
        rank = len(self.token_shape) + 2
        for what, axis in (("batch_axis", self.batch_axis), ("length_axis", self.length_axis)):
            _count(axis, f"state pair {self.past!r}: {what} (rank {rank})", 0, rank - 1)
        if self.batch_axis == self.length_axis:
            raise ValueError(f"state pair {self.past!r}: batch_axis and length_axis are both {self.batch_axis}")
        if any(type(d) is not int or not 1 <= d <= 2**20 for d in self.token_shape):
            raise ValueError(f"state pair {self.past!r}: token_shape {list(self.token_shape)!r} must be positive ints")
        try:
            np.dtype(self.dtype)
        except TypeError:
            raise ValueError(f"state pair {self.past!r}: dtype {self.dtype!r} is not a numpy dtype") from None

    @property
    def token_bytes(self) -> int:
        """Bytes one token of one sequence adds to this pair's store."""
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.token_shape, dtype=np.int64)))

    def shape(self, batch: int, length: int) -> tuple[int, ...]:
        """The tensor's shape for ``batch`` sequences of ``length`` tokens."""
        out = list(self.token_shape)
        for axis, size in sorted(((self.batch_axis, batch), (self.length_axis, length))):
            out.insert(axis, size)
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"past": self.past, "present": self.present, "stage": self.stage, "batch_axis": self.batch_axis,
                "length_axis": self.length_axis, "dtype": self.dtype, "token_shape": list(self.token_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatePair:
        if not isinstance(data, dict):
            raise ValueError(f"a state pair is an object, got {data!r}")
        missing = [k for k in ("past", "present", "stage", "batch_axis", "length_axis", "dtype", "token_shape")
                   if k not in data]
        if missing:
            raise ValueError(f"state pair {data.get('past')!r} lacks {missing}")
        shape = data["token_shape"]
        if not isinstance(shape, list):
            raise ValueError(f"state pair {data['past']!r}: token_shape must be a list, got {shape!r}")
        return cls(past=data["past"], present=data["present"], stage=data["stage"],
                   batch_axis=data["batch_axis"], length_axis=data["length_axis"],
                   dtype=str(data["dtype"]), token_shape=tuple(shape))


@dataclass(frozen=True)
class DecoderSpec:
    """What a decoder plan records: its step tensors, state pairs and KV bounds.

    Attributes:
        input_ids: the token ids input (``"input_ids"``).
        logits: the output the next token is sampled from (``"logits"``).
        attention_mask, position_ids: the step inputs the runtime builds for each stage, or None
            where the model has none.
        pairs: every state pair, with the stage that holds it.
        max_sequences: rows of each stage's KV store (sequences in flight at once).
        max_length: tokens per sequence, past and new (prompt + generated).
    """

    input_ids: str
    logits: str
    attention_mask: str | None
    position_ids: str | None
    pairs: tuple[StatePair, ...]
    max_sequences: int
    max_length: int

    def __post_init__(self) -> None:
        _name(self.input_ids, "decoder input_ids")
        _name(self.logits, "decoder logits")
        for what, value in (("attention_mask", self.attention_mask), ("position_ids", self.position_ids)):
            if value is not None:
                _name(value, f"decoder {what}")
        _count(self.max_sequences, "decoder max_sequences", 1, _MAX_SEQUENCES)
        _count(self.max_length, "decoder max_length", 1, _MAX_LENGTH)
        if not self.pairs:
            raise ValueError("a decoder plan needs at least one state pair")
        names = [p.past for p in self.pairs] + [p.present for p in self.pairs] + list(self.step_inputs)
        names.append(self.logits)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"decoder names {twice} more than once (pasts, presents and step tensors are distinct)")

    @property
    def step_inputs(self) -> tuple[str, ...]:
        """The inputs a step brings: token ids, then mask and positions where the model has them."""
        return tuple(n for n in (self.input_ids, self.attention_mask, self.position_ids) if n is not None)

    def pairs_of(self, stage: int) -> tuple[StatePair, ...]:
        """The pairs stage ``stage`` holds, in plan order."""
        return tuple(p for p in self.pairs if p.stage == stage)

    def token_bytes(self, stage: int) -> int:
        """Bytes one token of one sequence adds to stage ``stage``'s KV store."""
        return sum(p.token_bytes for p in self.pairs_of(stage))

    def kv_bytes(self, stage: int) -> int:
        """Bytes of stage ``stage``'s KV store: ``max_sequences x max_length`` tokens."""
        return self.max_sequences * self.max_length * self.token_bytes(stage)

    def local_inputs(self, stage: int) -> set[str]:
        """Names stage ``stage``'s graph may read that no boundary holds: the mask and positions
        (built by the runtime) and its pairs' pasts."""
        return {n for n in (self.attention_mask, self.position_ids) if n is not None} | {
            p.past for p in self.pairs_of(stage)}

    def local_outputs(self, stage: int) -> set[str]:
        """Names stage ``stage``'s graph writes that no boundary holds: its pairs' presents."""
        return {p.present for p in self.pairs_of(stage)}

    def check_stages(self, inputs: Sequence[Sequence[str]], outputs: Sequence[Sequence[str]],
                     boundaries: Sequence[Sequence[str]]) -> None:
        """Check the pairs against the stages' graph ``inputs``/``outputs`` and the boundary
        names: each pair's stage exists, reads its past and writes its present; no other stage
        does, and no boundary holds a past or a present. ``ValueError`` names the broken pair."""
        n = len(inputs)
        state = {p.past for p in self.pairs} | {p.present for p in self.pairs}
        for pair in self.pairs:
            if pair.stage >= n:
                raise ValueError(f"state pair {pair.past!r} lives in stage {pair.stage}, but the plan has {n} stages")
            if pair.past not in inputs[pair.stage] or pair.present not in outputs[pair.stage]:
                raise ValueError(f"state pair {pair.past!r} -> {pair.present!r}: stage {pair.stage} must read the "
                                 f"past and write the present (it reads {list(inputs[pair.stage])}, writes "
                                 f"{list(outputs[pair.stage])})")
        for k in range(n):
            mine = {p.past for p in self.pairs_of(k)} | self.local_outputs(k)
            stray = sorted((set(inputs[k]) | set(outputs[k])) & state - mine)
            if stray:
                raise ValueError(f"stage {k} reads or writes {stray}, state of another stage: a pair stays in its stage")
        for k, names in enumerate(boundaries):
            crossing = sorted(set(names) & state)
            if crossing:
                raise ValueError(f"boundary {k} holds {crossing}: a state pair never crosses a boundary")

    def check_plan(self, plan: Plan) -> None:
        """`check_stages` on ``plan``'s stages; the step tensors are model inputs and outputs
        (no past or present is); each stage's resident bytes hold its KV store."""
        self.check_stages([st.inputs for st in plan.stages], [st.outputs for st in plan.stages],
                          [[t.name for t in b] for b in plan.boundaries])
        ins, outs = {t.name for t in plan.inputs}, {t.name for t in plan.outputs}
        if self.input_ids not in ins or self.logits not in outs:
            raise ValueError(f"decoder input_ids {self.input_ids!r} and logits {self.logits!r} must be a model "
                             f"input and output (inputs {sorted(ins)}, outputs {sorted(outs)})")
        state = sorted(({p.past for p in self.pairs} | {p.present for p in self.pairs}) & (ins | outs))
        if state:
            raise ValueError(f"model inputs/outputs name {state}: a decoder plan's state never reaches the client")
        for st in plan.stages:
            if st.resident_bytes < self.kv_bytes(st.index):
                raise ValueError(f"stage {st.index} holds {st.resident_bytes} bytes, less than its KV store "
                                 f"({self.kv_bytes(st.index)} bytes)")

    def to_dict(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "logits": self.logits, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "pairs": [p.to_dict() for p in self.pairs],
                "max_sequences": self.max_sequences, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderSpec:
        if not isinstance(data, dict):
            raise ValueError(f"a plan's decoder is an object, got {type(data).__name__}")
        missing = [k for k in ("input_ids", "logits", "pairs", "max_sequences", "max_length") if k not in data]
        if missing:
            raise ValueError(f"the plan's decoder lacks {missing}")
        if not isinstance(data["pairs"], list):
            raise ValueError(f"the decoder's pairs are a list, got {data['pairs']!r}")
        return cls(input_ids=data["input_ids"], logits=data["logits"], attention_mask=data.get("attention_mask"),
                   position_ids=data.get("position_ids"), pairs=tuple(StatePair.from_dict(p) for p in data["pairs"]),
                   max_sequences=data["max_sequences"], max_length=data["max_length"])
