"""What corepipe reads of the CPU, and ``COREPIPE_CPU_MASK``, which hides features from it so that a
machine with bf16 tests what a machine without it does (.ci/run runs the engine, CLI and bench tests
once more with ``COREPIPE_CPU_MASK=bf16,fp16,amx``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from corepipe.engines.cpu import MASK_ENV, CpuMath, mask_flags, precision_problem


def test_mask_words_name_the_flags_they_hide() -> None:
    assert mask_flags("") == frozenset()
    assert mask_flags("bf16") == {"avx512_bf16", "amx_bf16"}
    assert mask_flags(" fp16 , AMX") == {"avx512_fp16", "amx_fp16", "amx_tile", "amx_int8", "amx_bf16",
                                          "amx_complex"}
    assert mask_flags("avx512_vnni") == {"avx512_vnni"}
    with pytest.raises(ValueError, match=r"COREPIPE_CPU_MASK='bf61': unknown feature 'bf61'.*'bf16'"):
        mask_flags("bf61")


def _cpu_in_a_process(mask: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != MASK_ENV}
    if mask is not None:
        env[MASK_ENV] = mask
    code = ("import json; from corepipe.engines import cpu_math, precision_problem; c = cpu_math(); "
            "print(json.dumps({'bf16': c.bf16, 'fp16': c.fp16, 'flags': sorted(c.flags), "
            "'masked': sorted(c.masked), 'describe': c.describe(), 'bf16_problem': precision_problem('bf16')}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_mask_hides_features_from_a_fresh_process() -> None:
    real = _cpu_in_a_process(None)
    masked = _cpu_in_a_process("bf16,fp16,amx")
    assert masked["bf16"] is False and masked["fp16"] is False
    assert not any(f.startswith("amx") or f.endswith(("_bf16", "_fp16")) for f in masked["flags"])
    assert set(masked["flags"]) | set(masked["masked"]) == set(real["flags"])
    # An error never blames the CPU for what the mask hid: it says the mask hides it.
    assert masked["bf16_problem"] is not None and "bf16 needs native bf16 math" in masked["bf16_problem"]
    if masked["masked"]:
        assert f"{MASK_ENV} hides" in masked["describe"]
    assert "COREPIPE_CPU_MASK" not in real["describe"]


def test_a_bad_mask_is_an_error_not_ignored() -> None:
    env = {**os.environ, MASK_ENV: "bf16,avx9000"}
    done = subprocess.run([sys.executable, "-c", "from corepipe.engines import cpu_math; cpu_math()"],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "unknown feature 'avx9000'" in done.stderr


def test_precision_problems_name_what_the_cpu_has() -> None:
    masked = CpuMath("Xeon", frozenset({"avx2", "avx512f"}), frozenset({"avx512_bf16"}))
    text = precision_problem("bf16", masked) or ""
    assert "Xeon (avx2, avx512f; COREPIPE_CPU_MASK hides avx512_bf16)" in text and "has none" in text
    assert precision_problem("fp32", masked) is None
    assert "use precision='fp32'" in (precision_problem("fp16", masked) or "")
