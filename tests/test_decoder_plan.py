"""The decoder record of a plan (`corepipe.artifact.decoder`): JSON round-trip, validation of each
field, and the plan-level checks (each pair read and written by its stage, never in a boundary,
KV inside resident bytes). Plain data: no model is compiled here."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from corepipe.artifact import Plan, StagePlan, TensorSpec, resolve_target
from corepipe.artifact.decoder import DecoderSpec, StatePair


def _pair(i: int, stage: int, kind: str = "key") -> StatePair:
    return StatePair(past=f"past_key_values.{i}.{kind}", present=f"present.{i}.{kind}", stage=stage,
                     batch_axis=0, length_axis=2, dtype="float32", token_shape=(4, 16))


def _spec(stages: tuple[int, ...] = (0, 1), **kw: Any) -> DecoderSpec:
    pairs = tuple(p for i, s in enumerate(stages) for p in (_pair(i, s), _pair(i, s, "value")))
    args: dict[str, Any] = dict(input_ids="input_ids", logits="logits", attention_mask="attention_mask",
                                position_ids="position_ids", pairs=pairs, max_sequences=4, max_length=32)
    args.update(kw)
    return DecoderSpec(**args)


def _stage(k: int, inputs: list[str], outputs: list[str], resident: int) -> StagePlan:
    return StagePlan(index=k, node_start=k, node_end=k + 1, first_node="a", last_node="b", first_op="Add",
                     last_op="Add", inputs=tuple(inputs), outputs=tuple(outputs), carried=(), weights=0,
                     resident_bytes=resident, estimated_s=0.0, device=0, core=k)


def _plan(dec: DecoderSpec | None = None) -> Plan:
    dec = dec or _spec()
    t = TensorSpec
    hidden = t("hidden", "float32", (1, 1, 64))
    ids, logits = t("input_ids", "int64", (1, 1)), t("logits", "float32", (1, 1, 1000))
    kv = [dec.kv_bytes(0), dec.kv_bytes(1)]
    s0 = _stage(0, ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value"],
                ["hidden", "present.0.key", "present.0.value"], kv[0] + 1000)
    s1 = _stage(1, ["hidden", "attention_mask", "past_key_values.1.key", "past_key_values.1.value"],
                ["logits", "present.1.key", "present.1.value"], kv[1] + 1000)
    return Plan(target=resolve_target("cpu"), inputs=(ids, t("attention_mask", "int64", (1, 1))), outputs=(logits,),
                boundaries=((ids,), (hidden,), (logits,)), stages=(s0, s1), num_nodes=2, decoder=dec)


def test_round_trip_and_sizes() -> None:
    plan = _plan()
    plan.validate()
    back = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.decoder is not None
    dec = back.decoder
    assert [p.past for p in dec.pairs_of(1)] == ["past_key_values.1.key", "past_key_values.1.value"]
    assert dec.token_bytes(0) == 2 * 4 * 16 * 4
    assert dec.kv_bytes(0) == 4 * 32 * dec.token_bytes(0)
    assert dec.pairs[0].shape(3, 7) == (3, 4, 7, 16)
    legacy = StatePair("past.0", "present.0", 0, 1, 3, "float32", (2, 4, 16))
    assert legacy.shape(3, 7) == (2, 3, 4, 7, 16) and legacy.token_bytes == 2 * 4 * 16 * 4


def test_other_plans_have_no_decoder_key() -> None:
    plan = replace(_plan(), decoder=None)
    assert "decoder" not in plan.to_dict()
    assert Plan.from_dict(plan.to_dict()).decoder is None


@pytest.mark.parametrize("change, message", [
    (dict(past=""), "tensor name"),
    (dict(present="past_key_values.0.key"), "different tensors"),
    (dict(batch_axis=4), "batch_axis"),
    (dict(length_axis=0), "both 0"),
    (dict(token_shape=(0, 16)), "positive ints"),
    (dict(dtype="floaty"), "not a numpy dtype"),
    (dict(stage=-1), "stage"),
])
def test_bad_pair(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(_pair(0, 0), **change)


@pytest.mark.parametrize("change, message", [
    (dict(max_sequences=0), "max_sequences"),
    (dict(max_length=True), "max_length"),
    (dict(pairs=()), "at least one state pair"),
    (dict(attention_mask="past_key_values.0.key"), "more than once"),
    (dict(logits=None), "logits"),
])
def test_bad_spec(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**change)


def test_from_dict_names_what_is_missing() -> None:
    data = _spec().to_dict()
    del data["max_length"]
    with pytest.raises(ValueError, match=r"lacks.*max_length"):
        DecoderSpec.from_dict(data)
    data = _spec().to_dict()
    data["pairs"][0]["token_shape"] = "4,16"
    with pytest.raises(ValueError, match="token_shape must be a list"):
        DecoderSpec.from_dict(data)


def test_plan_checks_each_pair_in_its_stage() -> None:
    with pytest.raises(ValueError, match="stage 0 must read the past"):
        _plan(_spec(stages=(0, 0))).validate()
    with pytest.raises(ValueError, match="2 stages"):
        _plan(_spec(stages=(0, 2))).validate()
    plan = _plan()
    s1 = replace(plan.stages[1], inputs=plan.stages[1].inputs + ("past_key_values.0.key",))
    with pytest.raises(ValueError, match="state of another stage"):
        replace(plan, stages=(plan.stages[0], s1)).validate()


def test_plan_refuses_state_in_a_boundary_or_at_the_client() -> None:
    plan = _plan()
    present = TensorSpec("present.0.key", "float32", (1, 4, 1, 16))
    s0 = replace(plan.stages[0], carried=())
    bounds = (plan.boundaries[0], (*plan.boundaries[1], present), plan.boundaries[2])
    s1 = replace(plan.stages[1], carried=("present.0.key",))
    with pytest.raises(ValueError, match="never crosses a boundary"):
        replace(plan, stages=(s0, s1), boundaries=bounds).validate()
    outs = (*plan.outputs, present)
    with pytest.raises(ValueError, match=r"never reaches the client|last boundary"):
        replace(plan, outputs=outs).validate()


def test_plan_resident_bytes_hold_the_kv_store() -> None:
    plan = _plan()
    small = replace(plan.stages[0], resident_bytes=10)
    with pytest.raises(ValueError, match="less than its KV store"):
        replace(plan, stages=(small, plan.stages[1])).validate()


def test_step_inputs_are_model_inputs() -> None:
    with pytest.raises(ValueError, match="must be a model input and output"):
        _plan(_spec(input_ids="tokens")).validate()
