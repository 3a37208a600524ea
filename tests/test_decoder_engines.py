"""A decoder's stages run on the engine faster on a decode step, measured at compile time and said
in the plan (`corepipe.compiler.decoder.decodeengines`); an engine asked for is kept."""

from __future__ import annotations

import re

import pytest
from decoders import decoder_model_or_skip

import corepipe
from corepipe.engines import missing_engine


def test_auto_times_decode_steps_and_runs_each_stage_on_the_faster(tmp_path) -> None:
    if missing_engine("openvino") is not None:
        pytest.skip("needs openvino beside onnxruntime to choose between them")
    plan = corepipe.compile(decoder_model_or_skip("gpt2"), tmp_path / "art", num_cores=2, max_sequences=4,
                            max_length=64).plan
    said = {int(m.group(1)): m for n in plan.notes
            if (m := re.match(r"stage (\d+) decode step \(1 new token, past 62\) on one core: (.*): runs on (\w+)$", n))}
    assert sorted(said) == [0, 1], plan.notes
    for s, m in said.items():
        times: dict[str, list[float]] = {}
        for part in m.group(2).split("; "):
            engine, rest = part.split(" ", 1)
            times[engine] = [float(x) for x in re.findall(r"b=\d+ ([\d.]+) ms", rest)]
        assert set(times) == {"onnxruntime", "openvino"} and all(len(t) == 2 for t in times.values())
        chosen = m.group(3)
        other = next(e for e in times if e != chosen)
        # the choice (lowest time relative to the faster, summed over batch 1 and 4) is never
        # the slower engine at both batch sizes
        assert any(a <= b for a, b in zip(times[chosen], times[other])), m.group(0)
        assert plan.stages[s].engine == chosen


def test_an_engine_asked_for_is_kept_without_timing(tmp_path) -> None:
    if missing_engine("openvino") is not None:
        pytest.skip("needs openvino")
    plan = corepipe.compile(decoder_model_or_skip("gpt2"), tmp_path / "art", num_cores=2, engine="openvino",
                            max_sequences=4, max_length=64).plan
    assert [s.engine for s in plan.stages] == ["openvino", "openvino"]
    assert not [n for n in plan.notes if "decode step" in n]
